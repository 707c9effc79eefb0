"""QIDO-RS at /dicomweb, on the embedded store and on Orthanc alike."""

from __future__ import annotations

from pathlib import Path

import pytest
from dicomweb_client.api import DICOMwebClient

from fixtures.generate import BENCH_PATIENT_ID
from gateway.dicomweb import dicomjson as dj
from tests.conftest import Gateway
from tests.support.catalog import StudyFacts, read_catalog

DICOM_JSON = "application/dicom+json"


@pytest.fixture(scope="module")
def catalog(fixture_files: list[Path]) -> dict[str, StudyFacts]:
    return read_catalog(fixture_files)


def qido(gateway: Gateway, path: str, status: int = 200) -> list[dict]:
    response = gateway.get(f"/dicomweb{path}", headers={"Accept": DICOM_JSON})
    assert response.status_code == status, (path, response.status_code, response.text)
    if status == 204:
        assert response.content == b""
        return []
    if status != 200:
        assert response.headers["warning"].startswith("299 ")
        return []
    assert response.headers["content-type"].startswith(DICOM_JSON)
    return response.json()


def uids(results: list[dict], keyword: str) -> set[str]:
    return {dj.text(r, keyword) or "" for r in results}


def test_all_levels(gateway: Gateway, catalog) -> None:
    assert uids(qido(gateway, "/studies"), "StudyInstanceUID") == set(catalog)
    facts = next(f for f in catalog.values() if len(f.series) > 1)
    series = qido(gateway, f"/studies/{facts.uid}/series")
    assert uids(series, "SeriesInstanceUID") == facts.series
    one = sorted(facts.series)[0]
    instances = qido(gateway, f"/studies/{facts.uid}/series/{one}/instances")
    assert instances and uids(instances, "SeriesInstanceUID") == {one}
    assert len(qido(gateway, f"/studies/{facts.uid}/instances")) == facts.instances
    assert len(qido(gateway, f"/series?StudyInstanceUID={facts.uid}")) == len(facts.series)
    assert len(qido(gateway, f"/instances?StudyInstanceUID={facts.uid}")) == facts.instances


def test_matching_includefield_limit_offset(gateway: Gateway, catalog) -> None:
    bench = {f.uid for f in catalog.values() if str(f.first.PatientID) == BENCH_PATIENT_ID}
    found = qido(gateway, f"/studies?PatientID={BENCH_PATIENT_ID}&IssuerOfPatientID=HOSP-A")
    assert uids(found, "StudyInstanceUID") == bench
    by_tag = qido(gateway, f"/studies?00100020={BENCH_PATIENT_ID}&includefield=00081030")
    assert uids(by_tag, "StudyInstanceUID") == bench
    assert all(dj.text(r, "StudyDescription") for r in by_tag)
    first = qido(gateway, f"/studies?PatientID={BENCH_PATIENT_ID}&limit=4")
    rest = qido(gateway, f"/studies?PatientID={BENCH_PATIENT_ID}&limit=100&offset=4")
    assert len(first) == 4 and len(rest) == len(bench) - 4
    assert uids(first, "StudyInstanceUID").isdisjoint(uids(rest, "StudyInstanceUID"))
    ranged = qido(gateway, "/studies?StudyDate=20150101-20201231")
    assert uids(ranged, "StudyInstanceUID") == {
        f.uid for f in catalog.values() if "20150101" <= str(f.first.StudyDate) <= "20201231"
    }


def test_no_match_is_204(gateway: Gateway) -> None:
    qido(gateway, "/studies?PatientID=NOBODY", status=204)
    qido(gateway, "/studies/1.2.3.4.5.6.7.8.9/series", status=204)


@pytest.mark.parametrize(
    "path",
    [
        "/studies/1.2.abc/series",
        "/studies/" + "1." * 40 + "1/series",
        "/studies?StudyDate=notadate",
        "/studies?StudyInstanceUID=1.2.x",
        "/studies?NotAnAttribute=1",
        "/studies?00091001=1",
        "/studies?limit=-1",
        "/studies?offset=many",
        "/studies?fuzzymatching=maybe",
        "/studies?includefield=Bogus",
        "/studies?ReferencedStudySequence.StudyInstanceUID=1.2",
    ],
)
def test_bad_queries_are_400(gateway: Gateway, path: str) -> None:
    qido(gateway, path, status=400)


def test_path_traversal_matches_no_resource(gateway: Gateway) -> None:
    response = gateway.get("/dicomweb/studies/1.2.3/series/..%2F..%2Fetc/instances")
    assert response.status_code == 404


def test_xml_is_406(gateway: Gateway) -> None:
    response = gateway.get("/dicomweb/studies", headers={"Accept": "application/dicom+xml"})
    assert response.status_code == 406


@pytest.mark.slow
def test_dicomweb_client_searches_through_the_gateway(served: str, catalog) -> None:
    client = DICOMwebClient(url=f"{served}/dicomweb")
    studies = client.search_for_studies(search_filters={"PatientID": BENCH_PATIENT_ID})
    assert len(studies) == 10
    uid = dj.text(studies[0], "StudyInstanceUID")
    assert uid is not None
    series = client.search_for_series(study_instance_uid=uid)
    assert uids(series, "SeriesInstanceUID") == catalog[uid].series
    assert client.search_for_studies(search_filters={"PatientID": "NOBODY"}) == []
