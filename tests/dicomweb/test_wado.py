"""WADO-RS through the gateway with dicomweb-client, a real client, over real HTTP."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from dicomweb_client.api import DICOMwebClient
from pydicom import dcmread

from tests.support.catalog import StudyFacts, read_catalog

pytestmark = pytest.mark.slow


@pytest.fixture(params=["embedded", pytest.param("orthanc", marks=pytest.mark.orthanc)])
def base_url(request: pytest.FixtureRequest) -> str:
    return str(
        request.getfixturevalue("served" if request.param == "embedded" else "served_orthanc")
    )


@pytest.fixture(scope="module")
def catalog(fixture_files: list[Path]) -> dict[str, StudyFacts]:
    return read_catalog(fixture_files)


@pytest.fixture(scope="module")
def originals(fixture_files: list[Path]) -> dict[str, Path]:
    return {str(dcmread(p, stop_before_pixels=True).SOPInstanceUID): p for p in fixture_files}


def test_retrieve_study_series_instance_and_metadata(base_url: str, catalog, originals) -> None:
    client = DICOMwebClient(url=f"{base_url}/dicomweb")
    facts = next(f for f in catalog.values() if len(f.series) > 1)
    study = client.retrieve_study(facts.uid)
    assert len(study) == facts.instances
    for dataset in study:
        original = dcmread(originals[str(dataset.SOPInstanceUID)])
        assert dataset.get("PixelData") == original.get("PixelData")
        assert dataset.PatientID == original.PatientID
    series_uid = sorted(facts.series)[0]
    series = client.retrieve_series(facts.uid, series_uid)
    assert {str(d.SeriesInstanceUID) for d in series} == {series_uid}
    one = series[0]
    instance = client.retrieve_instance(facts.uid, series_uid, str(one.SOPInstanceUID))
    assert instance.SOPInstanceUID == one.SOPInstanceUID
    metadata = client.retrieve_study_metadata(facts.uid)
    assert len(metadata) == facts.instances
    assert all("7FE00010" not in m or "InlineBinary" not in m["7FE00010"] for m in metadata)
    series_metadata = client.retrieve_series_metadata(facts.uid, series_uid)
    assert {m["0020000E"]["Value"][0] for m in series_metadata} == {series_uid}


def test_retrieval_errors(base_url: str, catalog) -> None:
    uid = next(iter(catalog))
    dicom = {"Accept": 'multipart/related; type="application/dicom"'}
    assert httpx.get(f"{base_url}/dicomweb/studies/1.2.3.4.5.6.7", headers=dicom).status_code == 404
    assert httpx.get(f"{base_url}/dicomweb/studies/1.2.x", headers=dicom).status_code == 400
    jpeg_baseline = "1.2.840.10008.1.2.4.50"
    jpeg = {
        "Accept": f'multipart/related; type="application/dicom"; transfer-syntax={jpeg_baseline}'
    }
    response = httpx.get(f"{base_url}/dicomweb/studies/{uid}", headers=jpeg)
    assert response.status_code == 406
    assert "Traceback" not in response.text
    assert (
        httpx.get(
            f"{base_url}/dicomweb/studies/{uid}", headers={"Accept": "application/zip"}
        ).status_code
        == 406
    )


def _instance_with_pixels(catalog, originals):
    """A single-frame native instance from the fixtures, with its original file."""
    for facts in catalog.values():
        for series_uid in sorted(facts.series):
            for path in originals.values():
                dataset = dcmread(path)
                if str(dataset.SeriesInstanceUID) == series_uid and "PixelData" in dataset:
                    return dataset
    raise AssertionError("no fixture instance with pixel data")


def test_frames_through_dicomweb_client(base_url: str, catalog, originals) -> None:
    original = _instance_with_pixels(catalog, originals)
    client = DICOMwebClient(url=f"{base_url}/dicomweb")
    uids = (
        str(original.StudyInstanceUID),
        str(original.SeriesInstanceUID),
        str(original.SOPInstanceUID),
    )
    frames = client.retrieve_instance_frames(*uids, frame_numbers=[1])
    assert frames == [original.PixelData]
    url = f"{base_url}/dicomweb/studies/{uids[0]}/series/{uids[1]}/instances/{uids[2]}"
    # A frame past the end: the embedded store says 404, Orthanc 400; never a 500.
    assert httpx.get(f"{url}/frames/2").status_code in (400, 404)
    assert httpx.get(f"{url}/frames/0").status_code == 400
    assert httpx.get(f"{url}/frames/1,x").status_code == 400
    refused = httpx.get(f"{url}/frames/1", headers={"Accept": "application/dicom+json"})
    assert refused.status_code == 406


def test_metadata_bulk_data_uris_lead_back_through_the_gateway(
    base_url: str, catalog, originals
) -> None:
    original = _instance_with_pixels(catalog, originals)
    client = DICOMwebClient(url=f"{base_url}/dicomweb")
    uids = (
        str(original.StudyInstanceUID),
        str(original.SeriesInstanceUID),
        str(original.SOPInstanceUID),
    )
    metadata = client.retrieve_instance_metadata(*uids)
    uri = metadata["7FE00010"]["BulkDataURI"]
    assert uri.startswith(f"{base_url}/dicomweb/studies/{uids[0]}/series/")
    assert "/bulk/" in uri
    (pixels,) = client.retrieve_bulkdata(uri)
    assert pixels == original.PixelData
    # A well-formed path to a tag the instance lacks, and a malformed tag path.
    missing = uri.rsplit("/", 1)[0] + "/00091001"
    assert httpx.get(missing).status_code == 404
    assert httpx.get(uri.rsplit("/", 1)[0] + "/../../x").status_code in (400, 404)
    assert httpx.get(uri.rsplit("/", 1)[0] + "/7FE0001Z").status_code == 400


def test_rendered_through_dicomweb_client(base_url: str, originals) -> None:
    """Images as PNG, structured reports as text, PDF reports as the PDF."""
    client = DICOMwebClient(url=f"{base_url}/dicomweb")
    wanted = {
        "1.2.840.10008.5.1.4.1.1.2": ("image/png",),
        "1.2.840.10008.5.1.4.1.1.88.33": ("text/plain",),
        "1.2.840.10008.5.1.4.1.1.104.1": ("application/pdf",),
    }
    checked = set()
    for path in originals.values():
        header = dcmread(path, stop_before_pixels=True)
        media_types = wanted.get(str(header.SOPClassUID))
        if media_types is None or media_types in checked:
            continue
        uids = (header.StudyInstanceUID, header.SeriesInstanceUID, header.SOPInstanceUID)
        body = client.retrieve_instance_rendered(*uids, media_types=media_types)
        if media_types == ("image/png",):
            assert body.startswith(b"\x89PNG")
        elif media_types == ("text/plain",):
            text = body.decode() if isinstance(body, bytes) else body
            assert str(header.ContentSequence[0].TextValue) in text
        else:
            assert body.startswith(b"%PDF")
        checked.add(media_types)
    assert len(checked) == 3
