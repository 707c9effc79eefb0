"""A document inside a DICOM instance never runs on the gateway's origin (issue 10, item 2).

An Encapsulated Document's MIMETypeOfEncapsulatedDocument is whatever its
producer wrote. Only PDF is served as what it is; HTML, SVG or anything else
goes out as ``application/octet-stream`` with ``Content-Disposition:
attachment`` and ``Content-Security-Policy: sandbox``, or not at all (406),
whatever the client accepts, on ``/dicomweb``, ``/portal/dicomweb`` and
``/share/dicomweb``; on the embedded store and on a private Orthanc.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydicom import Dataset, dcmread
from pydicom.uid import generate_uid

from fixtures.generate import BENCH_PATIENT_ID
from tests.auth.test_oauth_api import Harness, bearer
from tests.portal.support import create_share, enroll, enter_pin, portal_sign_in
from tests.support.stores import BACKENDS, private_store

SCRIPT = b"<html><body><script>document.title='pwned'</script></body></html>"
SVG = b'<svg xmlns="http://www.w3.org/2000/svg"><script>alert(1)</script></svg>'
ACCEPTS = ("*/*", "text/*", "image/*", "text/html", "image/svg+xml", "application/*", "")
ACTIVE = ("text/html", "image/svg+xml", "text/xml", "application/xhtml+xml")


def _document(source: Dataset, mime: str, content: bytes) -> Dataset:
    ds = copy.deepcopy(source)
    ds.SeriesInstanceUID = generate_uid()
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.MIMETypeOfEncapsulatedDocument = mime
    ds.EncapsulatedDocument = content + (b"\0" if len(content) % 2 else b"")
    ds.EncapsulatedDocumentLength = len(content)
    return ds


@pytest.fixture(scope="module", params=BACKENDS)
def world(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    fixture_files: list[Path],
) -> Iterator[tuple[Harness, dict[str, Dataset]]]:
    """A gateway over a store of its own: the patient's studies, plus documents of every
    type added to one of them."""
    workdir = tmp_path_factory.mktemp("documents")
    mine = [d for d in (dcmread(p) for p in fixture_files) if d.PatientID == BENCH_PATIENT_ID]
    pdf = next(d for d in mine if d.Modality == "DOC")
    added = {
        "html": _document(pdf, "text/html", SCRIPT),
        "svg": _document(pdf, "image/svg+xml", SVG),
        "xhtml": _document(pdf, "application/xhtml+xml; charset=utf-8", SCRIPT),
        "pdf": pdf,
    }
    datasets = [*mine, *(added[k] for k in ("html", "svg", "xhtml"))]
    with private_store(request.param, workdir, datasets) as harness:
        yield harness, added


def _path(ds: Dataset) -> str:
    return (
        f"studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
        f"/instances/{ds.SOPInstanceUID}/rendered"
    )


def _check_inert(response: Any, where: str) -> None:
    media = response.headers.get("content-type", "").split(";")[0].strip().lower()
    assert media not in ACTIVE, where
    assert response.status_code in (200, 406), (where, response.status_code)
    if response.status_code == 200:
        assert media == "application/octet-stream", where
        assert response.headers["content-disposition"].startswith("attachment"), where
        assert "sandbox" in response.headers["content-security-policy"], where
        assert response.headers["x-content-type-options"] == "nosniff", where


def _ways_in(harness: Harness, added: dict[str, Dataset]) -> dict[str, dict[str, str]]:
    """The image routes of a backend token, of a signed-in patient, of a share's recipient."""
    client = harness.client
    patient = enroll(harness)
    assert portal_sign_in(client, patient.code) == 303
    study = str(added["pdf"].StudyInstanceUID)
    status, _, link, pin = create_share(client, [study])
    assert status == 201 and link and pin
    assert enter_pin(client, link.removeprefix(harness.settings.public_url), pin).status_code == 303
    return {
        "/dicomweb": bearer(harness.backend_token("system/*.rs")),
        "/portal/dicomweb": {},
        "/share/dicomweb": {},
    }


def test_active_documents_go_out_as_inert_attachments(world) -> None:  # type: ignore[no-untyped-def]
    harness, added = world
    for base, headers in _ways_in(harness, added).items():
        for kind in ("html", "svg", "xhtml"):
            path = f"{base}/{_path(added[kind])}"
            for accept in ACCEPTS:
                by_header = harness.client.get(path, headers={**headers, "Accept": accept})
                _check_inert(by_header, f"{path} Accept: {accept}")
                by_query = harness.client.get(f"{path}?accept={accept}", headers=headers)
                _check_inert(by_query, f"{path}?accept={accept}")
            body = harness.client.get(path, headers={**headers, "Accept": "*/*"}).content
            assert b"<script>" in body  # the document itself, to download: never run here


def test_a_pdf_is_served_as_a_pdf(world) -> None:  # type: ignore[no-untyped-def]
    harness, added = world
    system = bearer(harness.backend_token("system/*.rs"))
    path = f"/dicomweb/{_path(added['pdf'])}"
    for accept in ("*/*", "application/pdf", ""):
        answer = harness.client.get(path, headers={**system, "Accept": accept})
        assert answer.status_code == 200, answer.text
        assert answer.headers["content-type"] == "application/pdf"
        assert answer.content.startswith(b"%PDF")
