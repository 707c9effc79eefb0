"""STOW forwards a request's instances in groups, with the next group read and checked
while up to two are on their way to the archive; the answer keeps the order sent."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator, Sequence
from io import BytesIO
from pathlib import Path

import pytest
from pydicom import Dataset
from pydicom.dataset import FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid
from starlette.testclient import TestClient

from gateway.app import create_app
from gateway.dicomweb import stow
from gateway.dicomweb.file_store import FileStoreUpstream
from gateway.dicomweb.upstream import StoreResult
from gateway.errors import UpstreamUnavailable
from gateway.services import Services
from tests.auth.test_oauth_api import Harness, bearer
from tests.conftest import make_settings, migrate


class Recording(FileStoreUpstream):
    """The real embedded store; records each upload and how many ran at once."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.uploads: list[int] = []
        self.running = self.most_running = 0
        self.fail_on: int | None = None

    async def store_encoded(self, parts: Sequence[bytes]) -> StoreResult:
        self.running += 1
        self.most_running = max(self.most_running, self.running)
        try:
            self.uploads.append(len(parts))
            await asyncio.sleep(0.05)  # an archive takes a while: the next group is read
            if self.fail_on == len(self.uploads):
                raise UpstreamUnavailable("The image archive is unavailable.")
            return await super().store_encoded(parts)
        finally:
            self.running -= 1


@pytest.fixture
def harness(tmp_path: Path) -> Iterator[tuple[Harness, Recording]]:
    settings = make_settings(
        tmp_path, database_url=f"sqlite+aiosqlite:///{tmp_path / 'g.db'}", auth_required=True
    )
    migrate(settings)
    upstream = Recording(tmp_path / "store")
    services = Services.build(settings, upstream)
    with TestClient(create_app(settings, services=services)) as client:
        yield Harness(client, services), upstream


def instance(study: str, number: int) -> tuple[str, bytes]:
    ds = Dataset()
    ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study, generate_uid()
    ds.PatientID, ds.PatientName, ds.Modality = "GROUPS-1", "Groups^Test", "CT"
    ds.InstanceNumber = number
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    out = BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return str(ds.SOPInstanceUID), out.getvalue()


def upload(harness: Harness, parts: list[bytes]) -> tuple[int, dict]:  # type: ignore[type-arg]
    boundary = "groups-boundary"
    body = (
        b"".join(
            f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + part + b"\r\n"
            for part in parts
        )
        + f"--{boundary}--\r\n".encode()
    )
    token = harness.backend_token("system/ImagingStudy.c")
    answer = harness.client.post(
        "/dicomweb/studies",
        content=body,
        headers={
            **bearer(token),
            "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}',
            "Accept": "application/dicom+json",
        },
    )
    is_json = answer.headers.get("content-type", "").startswith("application/dicom+json")
    return answer.status_code, answer.json() if is_json else {}


def referenced(answer: dict) -> list[str]:  # type: ignore[type-arg]
    return [i["00081155"]["Value"][0] for i in answer.get("00081199", {}).get("Value", [])]


def test_groups_go_two_at_a_time_and_the_answer_keeps_the_order(harness) -> None:  # type: ignore[no-untyped-def]
    client, upstream = harness
    study = generate_uid()
    made = [instance(study, n) for n in range(1, 4 * stow.GROUP_PARTS + 3)]
    status, answer = upload(client, [raw for _, raw in made])
    assert status == 200
    assert referenced(answer) == [uid for uid, _ in made]
    assert upstream.uploads == [stow.GROUP_PARTS] * 4 + [2]
    assert upstream.most_running == 2  # one read and checked while two are stored
    assert stow.UPLOADS_IN_FLIGHT == 2


def test_a_failed_upload_fails_the_request_and_leaves_none_running(harness) -> None:  # type: ignore[no-untyped-def]
    client, upstream = harness
    upstream.fail_on = 2
    made = [instance(generate_uid(), n) for n in range(1, 4 * stow.GROUP_PARTS + 1)]
    status, _ = upload(client, [raw for _, raw in made])
    assert status == 503
    assert upstream.running == 0
    assert len(upstream.uploads) <= 3  # the one that failed, the one beside it, maybe one more


def test_an_answer_with_failures_carries_a_warning(harness) -> None:  # type: ignore[no-untyped-def]
    client, _ = harness
    token = bearer(client.backend_token("system/ImagingStudy.c"))
    good = instance(generate_uid(), 1)[1]
    for parts, status in (([b"not dicom", b"nor this"], 409), ([good, b"not dicom"], 202)):
        boundary = "warn-boundary"
        body = (
            b"".join(
                f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + p + b"\r\n"
                for p in parts
            )
            + f"--{boundary}--\r\n".encode()
        )
        kind = f'multipart/related; type="application/dicom"; boundary={boundary}'
        answer = client.client.post(
            "/dicomweb/studies", content=body, headers={**token, "Content-Type": kind}
        )
        assert answer.status_code == status
        assert answer.headers["warning"].startswith("299 ")
        assert answer.json()["00081198"]["Value"]
