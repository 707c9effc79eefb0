"""The patient sees every access to their data, and the whole trail pages (issue 10, item 9).

An access with a physician's ``user/`` token or a backend's ``system/`` token
names no patient in its token; the audit record still names the patient whose
data the answer held, so the portal's Activity shows it. AuditEvent search
pages with a total and ``next`` links, like every other search.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from fhir.resources.R4B.auditevent import AuditEvent

from fixtures.generate import BENCH_PATIENT_ID
from gateway.audit import ACT_REASON
from tests.auth.test_oauth_api import Harness, bearer
from tests.portal.support import DATABASES, Clock, enroll, portal_harness, portal_sign_in


@pytest.fixture(params=DATABASES)
def portal(
    request: pytest.FixtureRequest, tmp_path: Path, embedded_data_dir: Path
) -> Iterator[Harness]:
    with portal_harness(tmp_path, embedded_data_dir, Clock(), request.param) as harness:
        yield harness


def _patient(harness: Harness, system: dict[str, str]) -> str:
    found = harness.client.get(f"/fhir/Patient?identifier={BENCH_PATIENT_ID}", headers=system)
    return str(found.json()["entry"][0]["resource"]["id"])


def _events(harness: Harness, headers: dict[str, str], query: str) -> dict[str, Any]:
    answer = harness.client.get(f"/fhir/AuditEvent?{query}", headers=headers)
    assert answer.status_code == 200, answer.text
    return dict(answer.json())


def test_provider_and_backend_accesses_name_the_patient(portal: Harness) -> None:
    harness = portal
    system = bearer(harness.backend_token("system/*.rs"))
    patient = _patient(harness, system)
    doctor = bearer(harness.practitioner_token())
    study = harness.client.get(
        f"/fhir/ImagingStudy?patient={patient}&_count=1", headers=doctor
    ).json()["entry"][0]["resource"]["id"]
    assert harness.client.get(f"/fhir/ImagingStudy/{study}", headers=doctor).status_code == 200
    qido = harness.client.get(
        f"/dicomweb/studies?PatientID={BENCH_PATIENT_ID}&IssuerOfPatientID=HOSP-A", headers=system
    )
    assert qido.status_code == 200
    trail = _events(harness, system, f"patient={patient}&_count=100")
    for entry in trail["entry"]:
        AuditEvent.model_validate(entry["resource"])
    agents = [str(e["resource"]["agent"]) for e in trail["entry"]]
    assert any("/Practitioner/" in a for a in agents)  # the physician's read and search
    # Why each accessed: a provider's treatment, a backend system's operations.
    purposes = {
        e["resource"]["purposeOfEvent"][0]["coding"][0]["code"]
        for e in trail["entry"]
        if "purposeOfEvent" in e["resource"]
    }
    assert {"TREAT", "HOPERAT"} <= purposes
    details = [str(e["resource"].get("entity", "")) for e in trail["entry"]]
    assert any("/dicomweb/studies?PatientID" in d for d in details)  # the backend's QIDO
    # The patient sees both on the portal's Activity page.
    account = enroll(harness)
    assert portal_sign_in(harness.client, account.code) == 303
    activity = harness.client.get("/portal/activity").text
    assert "A physician" in activity and "Hospital system" in activity


def test_the_trail_pages_with_a_total(portal: Harness) -> None:
    harness = portal
    system = bearer(harness.backend_token("system/*.rs"))
    patient = _patient(harness, system)
    mine = bearer(
        harness.patient_token(
            patient, "launch/patient patient/ImagingStudy.rs patient/AuditEvent.rs"
        )
    )
    for _ in range(5):
        assert harness.client.get("/fhir/ImagingStudy?_count=1", headers=mine).status_code == 200
    # Reading the trail is an access too: look at what was recorded before it.
    time.sleep(0.01)
    before = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    time.sleep(0.01)
    first = _events(harness, mine, f"_count=2&date=lt{before}")
    total = first["total"]
    assert total >= 5 and len(first["entry"]) == 2
    own_request = {"coding": [{"system": ACT_REASON, "code": "PATRQT"}]}
    assert all(e["resource"]["purposeOfEvent"] == [own_request] for e in first["entry"])
    seen = [e["resource"]["id"] for e in first["entry"]]
    page = first
    while next_link := next((k["url"] for k in page["link"] if k["relation"] == "next"), None):
        page = _events(harness, mine, next_link.split("?", 1)[1])
        assert page["total"] == total
        seen += [e["resource"]["id"] for e in page["entry"]]
    assert len(seen) == len(set(seen)) == total
    counted = _events(harness, mine, f"_summary=count&date=lt{before}")
    assert counted["total"] == total and "entry" not in counted
