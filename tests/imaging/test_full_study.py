"""Full-study WADO-RS as SMART Imaging Access requires it, on the embedded store and a
real Orthanc: ``transfer-syntax=*`` answered with each part's transfer syntax named,
images first by Series Number and the report last, and a study only partly visible to
the caller refused whole (never answered with part of it)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from io import BytesIO
from typing import Any

import pytest
from pydicom import dcmread

from tests.auth.test_oauth_api import Harness
from tests.imaging.support import (
    CT_STUDY,
    PATIENT_SCOPES,
    SHARED,
    A,
    datasets,
    uid,
)
from tests.support.stores import BACKENDS, private_store

AS_STORED = "multipart/related; type=application/dicom; transfer-syntax=*"


@pytest.fixture(scope="module", params=BACKENDS)
def store(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Harness, bool]]:
    shared = request.param[0] == "orthanc"  # only an archive can hold SHARED (support.py)
    with private_store(
        request.param, tmp_path_factory.mktemp("full"), datasets(shared=shared)
    ) as harness:
        yield harness, shared


def parts(response: Any) -> list[tuple[str, Any]]:
    """(Content-Type, dataset) of each part of a multipart answer."""
    boundary = re.search(r"boundary=\"?([^\";]+)", response.headers["content-type"]).group(1)
    body = response.content
    assert body.rstrip().endswith(f"--{boundary}--".encode())
    found = []
    for chunk in body.split(f"--{boundary}".encode())[1:-1]:
        head, _, data = chunk.partition(b"\r\n\r\n")
        kind = re.search(rb"Content-Type:\s*([^\r\n]+)", head, re.I).group(1).decode()
        found.append(
            (kind, dcmread(BytesIO(data[: -2 if data.endswith(b"\r\n") else None]), force=True))
        )
    return found


def bearer(token: dict[str, Any]) -> dict[str, str]:
    return {"Authorization": f"Bearer {token['access_token']}"}


def test_full_study_in_order_with_transfer_syntaxes(store: tuple[Harness, bool]) -> None:
    harness, _ = store
    patient = harness.call(harness.services.records.patients.identify, *A)
    for headers in (
        bearer(harness.patient_token(patient, PATIENT_SCOPES)),
        bearer(harness.backend_token("system/*.rs")),
    ):
        response = harness.client.get(
            f"/dicomweb/studies/{CT_STUDY}", headers={**headers, "Accept": AS_STORED}
        )
        assert response.status_code == 200, response.text
        found = parts(response)
        # Images first by Series Number (2 before 3), the report (series 1) last.
        assert [(int(d.SeriesNumber), d.Modality) for _, d in found] == [
            (2, "CT"),
            (2, "CT"),
            (2, "CT"),
            (3, "CT"),
            (3, "CT"),
            (1, "SR"),
        ]
        for kind, dataset in found:
            syntax = dataset.file_meta.TransferSyntaxUID
            assert kind == f"application/dicom; transfer-syntax={syntax}", kind
        # As stored: series 3 was stored Implicit VR Little Endian, the others Explicit.
        assert {str(d.file_meta.TransferSyntaxUID) for _, d in found if d.SeriesNumber == 3} == {
            "1.2.840.10008.1.2"
        }


def test_a_caller_without_reports_is_refused_the_whole_study(store: tuple[Harness, bool]) -> None:
    harness, _ = store
    patient = harness.call(harness.services.records.patients.identify, *A)
    images_only = bearer(harness.patient_token(patient, "launch/patient patient/ImagingStudy.rs"))
    response = harness.client.get(
        f"/dicomweb/studies/{CT_STUDY}", headers={**images_only, "Accept": AS_STORED}
    )
    assert response.status_code == 403 and response.headers["warning"].startswith("299 ")
    assert b"DICM" not in response.content
    series = uid(CT_STUDY, A, 2)
    one_series = harness.client.get(
        f"/dicomweb/studies/{CT_STUDY}/series/{series}",
        headers={**images_only, "Accept": AS_STORED},
    )
    assert one_series.status_code == 200


def test_a_partly_visible_study_is_refused_whole(store: tuple[Harness, bool]) -> None:
    """SHARED is held for A and for C under one Study Instance UID: A's token may see the
    study, but its full retrieval would carry C's instance, so it is refused."""
    harness, shared = store
    if not shared:
        pytest.skip("the embedded store keeps one patient per Study Instance UID")
    patient = harness.call(harness.services.records.patients.identify, *A)
    headers = bearer(harness.patient_token(patient, PATIENT_SCOPES))
    listed = harness.client.get(f"/fhir/ImagingStudy?patient={patient}", headers=headers).json()
    assert SHARED in {e["resource"]["id"] for e in listed["entry"]}
    response = harness.client.get(
        f"/dicomweb/studies/{SHARED}", headers={**headers, "Accept": AS_STORED}
    )
    assert response.status_code == 403, response.text
    assert response.headers["warning"].startswith("299 ")
    assert b"DICM" not in response.content and "Cole" not in response.text
    # A's own series of it is still A's to retrieve; a backend sees both patients.
    own = harness.client.get(
        f"/dicomweb/studies/{SHARED}/series/{uid(SHARED, A, 1)}",
        headers={**headers, "Accept": AS_STORED},
    )
    assert own.status_code == 200 and len(parts(own)) == 1
    system = bearer(harness.backend_token("system/*.rs"))
    whole = harness.client.get(
        f"/dicomweb/studies/{SHARED}", headers={**system, "Accept": AS_STORED}
    )
    assert whole.status_code == 200
    assert sorted(str(d.PatientName) for _, d in parts(whole)) == ["Able^Alice", "Cole^Cy"]
