"""STOW-RS through the gateway: real client, both backends, and every bad upload."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import pytest
from dicomweb_client.api import DICOMwebClient
from pydicom import dcmread
from pydicom.uid import generate_uid
from starlette.testclient import TestClient

from gateway.app import create_app
from gateway.dicomweb import dicomjson as dj
from tests.conftest import make_settings, migrate, serve_gateway

BOUNDARY = "stow-test-boundary"
CONTENT_TYPE = f'multipart/related; type="application/dicom"; boundary={BOUNDARY}'


def renamed(path: Path, study: str) -> bytes:
    """A fixture instance moved to a new study, as bytes (new UIDs: no clash with others)."""
    ds = dcmread(path)
    ds.StudyInstanceUID = study
    ds.SeriesInstanceUID = generate_uid()
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def multipart(*parts: tuple[str, bytes], close: bool = True) -> bytes:
    body = b"".join(
        f"--{BOUNDARY}\r\nContent-Type: {kind}\r\n\r\n".encode() + data + b"\r\n"
        for kind, data in parts
    )
    return body + (f"--{BOUNDARY}--\r\n".encode() if close else b"")


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    settings = make_settings(tmp_path, stow_max_bytes=200_000)
    migrate(settings)
    with TestClient(create_app(settings)) as test_client:
        yield test_client


def post(client: TestClient, body: bytes, path: str = "/dicomweb/studies", **headers: str):  # type: ignore[no-untyped-def]
    return client.post(path, content=body, headers={"Content-Type": CONTENT_TYPE, **headers})


def test_all_stored_is_200_with_references(client: TestClient, fixture_files: list[Path]) -> None:
    study = generate_uid()
    response = post(
        client, multipart(*(("application/dicom", renamed(p, study)) for p in fixture_files[:3]))
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert dj.text(body, "RetrieveURL").endswith(f"/dicomweb/studies/{study}")
    assert len(dj.items(body, "ReferencedSOPSequence")) == 3
    assert "00081198" not in body
    found = client.get(f"/dicomweb/studies?StudyInstanceUID={study}")
    assert found.status_code == 200 and len(found.json()) == 1


def test_mixed_is_202_and_none_is_409(client: TestClient, fixture_files: list[Path]) -> None:
    study = generate_uid()
    good = ("application/dicom", renamed(fixture_files[0], study))
    junk = ("application/dicom", b"this is not DICOM at all")
    text = ("text/plain", b"hello")
    mixed = post(client, multipart(good, junk, text))
    assert mixed.status_code == 202, mixed.text
    failed = dj.items(mixed.json(), "FailedSOPSequence")
    assert [dj.first(item, "FailureReason") for item in failed] == [0xC000, 0xC000]
    none = post(client, multipart(junk))
    assert none.status_code == 409


def test_study_level_store_refuses_other_studies(
    client: TestClient, fixture_files: list[Path]
) -> None:
    target, other = generate_uid(), generate_uid()
    body = multipart(
        ("application/dicom", renamed(fixture_files[0], target)),
        ("application/dicom", renamed(fixture_files[1], other)),
    )
    response = post(client, body, f"/dicomweb/studies/{target}")
    assert response.status_code == 202
    failed = dj.items(response.json(), "FailedSOPSequence")
    assert [dj.first(item, "FailureReason") for item in failed] == [0xA900]


@pytest.mark.parametrize(
    ("body", "content_type", "status"),
    [
        (multipart(("application/dicom", b"x"), close=False), CONTENT_TYPE, 400),
        (b"no multipart here", CONTENT_TYPE, 400),
        (multipart(("application/dicom", b"x")), "application/dicom", 415),
        (
            multipart(("application/dicom", b"x")),
            'multipart/related; type="application/dicom+json"; boundary=x',
            415,
        ),
        (
            multipart(("application/dicom", b"x")),
            'multipart/related; type="application/dicom"',
            400,
        ),
        (multipart(("application/dicom", b"x" * 300_000)), CONTENT_TYPE, 413),
    ],
)
def test_bad_uploads(client: TestClient, body: bytes, content_type: str, status: int) -> None:
    response = client.post(
        "/dicomweb/studies", content=body, headers={"Content-Type": content_type}
    )
    assert response.status_code == status, response.text
    assert "Traceback" not in response.text


def test_oversize_without_content_length_is_still_413(client: TestClient) -> None:
    def chunks() -> Iterator[bytes]:
        yield f"--{BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n".encode()
        for _ in range(30):
            yield b"y" * 10_000

    response = client.post(
        "/dicomweb/studies", content=chunks(), headers={"Content-Type": CONTENT_TYPE}
    )
    assert response.status_code == 413


@pytest.fixture(params=["embedded", pytest.param("orthanc", marks=pytest.mark.orthanc)])
def fresh_gateway(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "embedded":
        with serve_gateway(tmp_path / "gw") as url:
            yield url
        return
    from tests.support.orthanc import run_orthanc

    with (
        run_orthanc(tmp_path / "orthanc") as orthanc,
        serve_gateway(tmp_path / "gw", dicomweb_url=orthanc.dicomweb_url) as url,
    ):
        yield url


@pytest.mark.slow
def test_dicomweb_client_stores_through_the_gateway(
    fresh_gateway: str, fixture_files: list[Path]
) -> None:
    client = DICOMwebClient(url=f"{fresh_gateway}/dicomweb")
    study = generate_uid()
    datasets = [dcmread(io.BytesIO(renamed(p, study))) for p in fixture_files[:4]]
    result = client.store_instances(datasets)
    assert len(result.ReferencedSOPSequence) == 4
    assert len(client.search_for_instances(study_instance_uid=study)) == 4
    back = client.retrieve_study(study)
    assert sorted(d.SOPInstanceUID for d in back) == sorted(d.SOPInstanceUID for d in datasets)
