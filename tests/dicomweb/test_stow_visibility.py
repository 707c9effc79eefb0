"""STOW-RS by a patient's token stores only that patient's instances (issue 10, item 4).

Any app may ask a patient for ``patient/ImagingStudy.c``. Such a token may add
images to the patient's own records; an instance for another patient (another
PatientID, or the same one at another issuer), or one that would join another
patient's study, fails with PS3.4's "not authorized" (0x0124), and nothing of
it is stored. On the embedded store and on a private Orthanc of its own.
"""

from __future__ import annotations

import copy
import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydicom import Dataset, dcmread
from pydicom.uid import generate_uid

from fixtures.generate import BENCH_PATIENT_ID
from tests.auth.test_oauth_api import Harness, bearer
from tests.dicomweb.test_stow import CONTENT_TYPE, multipart
from tests.support.stores import BACKENDS, private_store

NOT_AUTHORIZED = 0x0124
FAILURE_REASON = "00081197"
FAILED_SOPS = "00081198"
REFERENCED_SOPS = "00081199"


@pytest.fixture(scope="module", params=BACKENDS)
def stores(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    fixture_files: list[Path],
) -> Iterator[tuple[Harness, dict[str, Dataset]]]:
    """A gateway over a store of its own, holding two patients' studies."""
    workdir = tmp_path_factory.mktemp("stow-access")
    datasets = [dcmread(p) for p in fixture_files]
    mine = [d for d in datasets if d.PatientID == BENCH_PATIENT_ID]
    theirs = [d for d in datasets if d.PatientID == "IS-1002"]
    samples = {"mine": mine[0], "theirs": theirs[0]}
    with private_store(request.param, workdir, [*mine, *theirs]) as harness:
        yield harness, samples


def _copy(source: Dataset, **changes: str) -> tuple[Dataset, bytes]:
    """A new instance made from ``source``: new UIDs unless given, other changes applied."""
    ds = copy.deepcopy(source)
    ds.StudyInstanceUID = changes.pop("StudyInstanceUID", generate_uid())
    ds.SeriesInstanceUID = generate_uid()
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    for keyword, value in changes.items():
        setattr(ds, keyword, value)
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return ds, buffer.getvalue()


def _patient_token(harness: Harness) -> dict[str, str]:
    system = bearer(harness.backend_token("system/*.rs"))
    patient = harness.client.get(
        f"/fhir/Patient?identifier={BENCH_PATIENT_ID}", headers=system
    ).json()["entry"][0]["resource"]["id"]
    token = harness.patient_token(patient, "launch/patient patient/ImagingStudy.crs")
    return bearer(token)


def _store(harness: Harness, headers: dict[str, str], *parts: bytes) -> Any:
    return harness.client.post(
        "/dicomweb/studies",
        content=multipart(*(("application/dicom", part) for part in parts)),
        headers={"Content-Type": CONTENT_TYPE, **headers},
    )


def _reasons(answer: Any) -> dict[str, int]:
    failed = answer.json().get(FAILED_SOPS, {}).get("Value", [])
    return {f["00081155"]["Value"][0]: f[FAILURE_REASON]["Value"][0] for f in failed}


def _stored(harness: Harness, sop_uid: str) -> bool:
    system = bearer(harness.backend_token("system/*.rs"))
    found = harness.client.get(f"/dicomweb/instances?SOPInstanceUID={sop_uid}", headers=system)
    return found.status_code == 200


def test_a_patient_token_stores_for_its_patient(stores) -> None:  # type: ignore[no-untyped-def]
    harness, samples = stores
    ds, raw = _copy(samples["mine"])
    answer = _store(harness, _patient_token(harness), raw)
    assert answer.status_code == 200, answer.text
    assert _stored(harness, str(ds.SOPInstanceUID))


@pytest.mark.parametrize(
    "change",
    [
        {"PatientID": "IS-1002", "IssuerOfPatientID": "HOSP-A"},  # another patient
        {"IssuerOfPatientID": "HOSP-B"},  # the same MRN at another issuer: someone else
        {"PatientID": ""},  # nobody named
    ],
)
def test_an_instance_for_another_patient_is_refused(stores, change: dict[str, str]) -> None:  # type: ignore[no-untyped-def]
    harness, samples = stores
    ds, raw = _copy(samples["mine"], **change)
    answer = _store(harness, _patient_token(harness), raw)
    assert answer.status_code == 409, answer.text
    assert _reasons(answer) == {str(ds.SOPInstanceUID): NOT_AUTHORIZED}
    assert not _stored(harness, str(ds.SOPInstanceUID))


def test_no_instance_joins_another_patients_study(stores) -> None:  # type: ignore[no-untyped-def]
    harness, samples = stores
    theirs = str(samples["theirs"].StudyInstanceUID)
    ds, raw = _copy(samples["mine"], StudyInstanceUID=theirs)
    answer = _store(harness, _patient_token(harness), raw)
    assert answer.status_code == 409, answer.text
    assert _reasons(answer) == {str(ds.SOPInstanceUID): NOT_AUTHORIZED}
    assert not _stored(harness, str(ds.SOPInstanceUID))


def test_in_a_mixed_upload_only_the_patients_own_is_stored(stores) -> None:  # type: ignore[no-untyped-def]
    harness, samples = stores
    own, own_raw = _copy(samples["mine"])
    other, other_raw = _copy(samples["theirs"])
    answer = _store(harness, _patient_token(harness), own_raw, other_raw)
    assert answer.status_code == 202, answer.text
    assert _reasons(answer) == {str(other.SOPInstanceUID): NOT_AUTHORIZED}
    referenced = answer.json()[REFERENCED_SOPS]["Value"]
    assert [r["00081155"]["Value"][0] for r in referenced] == [str(own.SOPInstanceUID)]
    assert _stored(harness, str(own.SOPInstanceUID))
    assert not _stored(harness, str(other.SOPInstanceUID))
