"""SMART Imaging Access 0.1 "Finding studies": the search combinations the guide requires,
``_include=ImagingStudy:endpoint``, ``_lastUpdated`` with FHIR prefixes against the
``meta.lastUpdated`` each study reports, and 403 for a patient token naming another
patient (where reads of a single study keep answering 404)."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any
from urllib.parse import quote

import pytest
from fhir.resources.R4B.operationoutcome import OperationOutcome

from tests.imaging.conftest import Imaging
from tests.imaging.support import B_STUDY, CT_STUDY, MR_STUDY, PATIENT_SCOPES


def ids(bundle: dict[str, Any]) -> set[str]:
    return {e["resource"]["id"] for e in bundle.get("entry", []) if e["search"]["mode"] == "match"}


def get(imaging: Imaging, path: str, headers: dict[str, str], status: int = 200) -> Any:
    response = imaging.harness.client.get(path, headers=headers)
    assert response.status_code == status, (path, response.text)
    return response.json()


@pytest.fixture(scope="module")
def patient_a(imaging: Imaging) -> dict[str, str]:
    return imaging.patient_headers(imaging.a, PATIENT_SCOPES)


def test_patient_alone_and_with_identifier(imaging: Imaging, patient_a: dict[str, str]) -> None:
    a = imaging.a
    assert ids(get(imaging, f"/fhir/ImagingStudy?patient={a}", patient_a)) == {CT_STUDY, MR_STUDY}
    for identifier in (
        f"urn:oid:{CT_STUDY}",
        f"urn:dicom:uid|urn:oid:{CT_STUDY}",
        "ACC-CT",  # the accession number
    ):
        found = get(
            imaging, f"/fhir/ImagingStudy?patient={a}&identifier={quote(identifier)}", patient_a
        )
        assert ids(found) == {CT_STUDY}, identifier
    # Another patient's study UID finds nothing for the patient (no 403: the patient named
    # is the token's own).
    none = get(imaging, f"/fhir/ImagingStudy?patient={a}&identifier=urn:oid:{B_STUDY}", patient_a)
    assert ids(none) == set()


def test_include_endpoint(imaging: Imaging, patient_a: dict[str, str]) -> None:
    found = get(
        imaging, f"/fhir/ImagingStudy?patient={imaging.a}&_include=ImagingStudy:endpoint", patient_a
    )
    included = [e for e in found["entry"] if e["search"]["mode"] == "include"]
    assert [e["resource"]["resourceType"] for e in included] == ["Endpoint"]
    assert included[0]["fullUrl"].endswith("/Endpoint/dicomweb")
    bad = get(
        imaging, "/fhir/ImagingStudy?_include=ImagingStudy:basedon", patient_a, status=400
    )  # unsupported parameters keep their answer
    OperationOutcome.model_validate(bad)


def test_another_patient_is_403_not_an_empty_bundle(
    imaging: Imaging, patient_a: dict[str, str]
) -> None:
    a, b = imaging.a, imaging.b
    for path in (
        f"/fhir/ImagingStudy?patient={b}",
        f"/fhir/ImagingStudy?patient=Patient/{b}&_lastUpdated=gt2020-01-01",
        f"/fhir/ImagingStudy?subject=Patient/{b}",
        f"/fhir/ImagingStudy?patient={a},{b}",
        f"/fhir/ImagingStudy?patient={b}&identifier=urn:oid:{B_STUDY}",
        "/fhir/ImagingStudy?patient=not-a-patient-at-all",
        f"/fhir/DocumentReference?patient={b}",
    ):
        outcome = get(imaging, path, patient_a, status=403)
        OperationOutcome.model_validate(outcome)
        assert outcome["issue"][0]["code"] == "forbidden"
        assert B_STUDY not in str(outcome)
    # Reads of one study keep the established rule: 404, as for a study that does not exist.
    get(imaging, f"/fhir/ImagingStudy/{B_STUDY}", patient_a, status=404)
    # A provider may name any patient.
    doctor = imaging.harness.practitioner_token()
    headers = {"Authorization": f"Bearer {doctor['access_token']}"}
    assert ids(get(imaging, f"/fhir/ImagingStudy?patient={b}", headers)) == {B_STUDY}


def _instant(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def _z(moment: datetime) -> str:
    return quote(moment.isoformat(timespec="milliseconds").replace("+00:00", "Z"))


def test_last_updated_prefixes_follow_meta_last_updated(
    imaging: Imaging, patient_a: dict[str, str]
) -> None:
    a = imaging.a
    found = get(imaging, f"/fhir/ImagingStudy?patient={a}", patient_a)
    stamps = {e["resource"]["id"]: e["resource"]["meta"]["lastUpdated"] for e in found["entry"]}
    assert set(stamps) == {CT_STUDY, MR_STUDY}
    # Each study's reported time is what the search compares, prefix by prefix.
    for uid, stamp in stamps.items():
        at = _instant(stamp)
        second = timedelta(seconds=1)
        expected = {
            f"eq{_z(at)}": {u for u, s in stamps.items() if s == stamp},
            f"ge{_z(at)}": {u for u, s in stamps.items() if _instant(s) >= at},
            f"le{_z(at)}": {u for u, s in stamps.items() if _instant(s) <= at},
            f"gt{_z(at - second)}": {u for u, s in stamps.items() if _instant(s) >= at - second},
            f"lt{_z(at + second)}": {u for u, s in stamps.items() if _instant(s) < at + second},
            f"gt{_z(at + second)}": {u for u, s in stamps.items() if _instant(s) > at + second},
        }
        assert uid in expected[f"eq{_z(at)}"]
        for value, wanted in expected.items():
            path = f"/fhir/ImagingStudy?patient={a}&_lastUpdated={value}"
            assert ids(get(imaging, path, patient_a)) == wanted, value
    # A date without a zone is a UTC date; a far future one finds nothing.
    assert ids(get(imaging, f"/fhir/ImagingStudy?patient={a}&_lastUpdated=gt2020-01-01", patient_a))
    assert not ids(
        get(imaging, f"/fhir/ImagingStudy?patient={a}&_lastUpdated=gt2999-01-01", patient_a)
    )
    get(imaging, f"/fhir/ImagingStudy?patient={a}&_lastUpdated=gtyesterday", patient_a, 400)


def test_a_changed_study_moves_its_last_updated(imaging: Imaging) -> None:
    """Incremental sync: after the MR study changes (a series stored), only it is newer
    than the last check, whichever way it is searched (a patient token, a provider)."""
    from tests.imaging.support import MR, Series, study
    from tests.imaging.support import A as PATIENT

    harness, a = imaging.harness, imaging.a
    patient = imaging.patient_headers(a, PATIENT_SCOPES)
    before = get(imaging, f"/fhir/ImagingStudy?patient={a}", patient)
    checked = max(_instant(e["resource"]["meta"]["lastUpdated"]) for e in before["entry"])
    imaging.clock.advance(minutes=5)
    added = [d for d in study(PATIENT, MR_STUDY, "ACC-MR", Series(7, "MR", MR, 1))]
    system = harness.backend_token("system/ImagingStudy.c system/*.rs")
    from tests.dicomweb.test_stow import BOUNDARY, multipart

    body = multipart(*[("application/dicom", _part10(d)) for d in added])
    stored = harness.client.post(
        "/dicomweb/studies",
        content=body,
        headers={
            "Authorization": f"Bearer {system['access_token']}",
            "Content-Type": 'multipart/related; type="application/dicom"; boundary=' + BOUNDARY,
        },
    )
    assert stored.status_code == 200, stored.text
    newer = f"/fhir/ImagingStudy?patient={a}&_lastUpdated=gt{_z(checked)}"
    assert ids(get(imaging, newer, patient)) == {MR_STUDY}
    doctor = harness.practitioner_token()
    doctor_headers = {"Authorization": f"Bearer {doctor['access_token']}"}
    assert ids(get(imaging, newer, doctor_headers)) == {MR_STUDY}
    # Without naming the patient the provider's search asks the PACS, and still agrees.
    across = get(imaging, f"/fhir/ImagingStudy?_lastUpdated=gt{_z(checked)}", doctor_headers)
    assert ids(across) == {MR_STUDY}
    mr = get(imaging, f"/fhir/ImagingStudy/{MR_STUDY}", doctor_headers)
    assert _instant(mr["meta"]["lastUpdated"]) > checked


def _part10(dataset: Any) -> bytes:
    from io import BytesIO

    out = BytesIO()
    dataset.save_as(out, enforce_file_format=True)
    return out.getvalue()
