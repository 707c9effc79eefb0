"""The release delay on FHIR and DICOMweb, driven by an injected clock."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient

from fixtures.generate import BENCH_PATIENT_ID
from gateway.app import create_app
from gateway.records.release import parse_overrides
from gateway.services import Services
from gateway.settings import ConfigError, load_settings
from tests.auth.test_oauth_api import Harness, bearer
from tests.conftest import make_settings, migrate
from tests.portal.test_portal import hidden, sign_in


class Clock:
    def __init__(self) -> None:
        self.now = datetime.fromisoformat("2030-01-01T00:00:00+00:00")

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture(scope="module")
def clocked(
    tmp_path_factory: pytest.TempPathFactory, embedded_data_dir: Path
) -> Iterator[tuple[Harness, Clock]]:
    settings = make_settings(
        embedded_data_dir,
        database_url=f"sqlite+aiosqlite:///{tmp_path_factory.mktemp('release') / 'g.db'}",
        auth_required=True,
        public_url="https://gateway.example",
    )
    migrate(settings)
    clock = Clock()
    services = Services.build(settings, clock=clock)
    app = create_app(settings, services=services)
    with TestClient(app, base_url="https://gateway.example") as client:
        yield Harness(client, services), clock


def newest(harness: Harness, token: dict[str, Any], patient: str) -> dict[str, Any]:
    bundle = harness.client.get(
        f"/fhir/ImagingStudy?patient={patient}&_sort=-started&_count=1", headers=bearer(token)
    ).json()
    return bundle["entry"][0]["resource"]


def test_a_new_study_waits_for_the_patient_but_not_for_providers(
    clocked: tuple[Harness, Clock],
) -> None:
    harness, clock = clocked
    system = harness.backend_token("system/*.rs")
    patient = harness.client.get(
        f"/fhir/Patient?identifier={BENCH_PATIENT_ID}", headers=bearer(system)
    ).json()["entry"][0]["resource"]["id"]
    study = newest(harness, system, patient)
    started = datetime.fromisoformat(study["started"]) if "T" in study["started"] else None
    assert started is not None
    # One hour after the newest study: it (and its report) is within the 72 hours.
    clock.now = started + timedelta(hours=1)
    token = harness.patient_token(
        patient, "launch/patient patient/ImagingStudy.rs patient/DocumentReference.rs"
    )
    seen = harness.client.get("/fhir/ImagingStudy?_count=50", headers=bearer(token)).json()
    seen_ids = {e["resource"]["id"] for e in seen["entry"]}
    assert study["id"] not in seen_ids and len(seen_ids) == 9
    read = harness.client.get(f"/fhir/ImagingStudy/{study['id']}", headers=bearer(token))
    assert read.status_code == 403
    outcome = read.json()["issue"][0]
    assert outcome["code"] == "suppressed" and "available to you" in outcome["diagnostics"]
    qido = harness.client.get("/dicomweb/studies", headers=bearer(token)).json()
    assert study["id"] not in {s["0020000D"]["Value"][0] for s in qido}
    wado = harness.client.get(f"/dicomweb/studies/{study['id']}/metadata", headers=bearer(token))
    assert wado.status_code == 403 and "available to you" in wado.text
    documents = harness.client.get("/fhir/DocumentReference?_count=100", headers=bearer(token))
    assert study["id"] not in documents.text
    # Providers and backend clients are never delayed.
    assert (
        harness.client.get(f"/fhir/ImagingStudy/{study['id']}", headers=bearer(system)).status_code
        == 200
    )
    # After the delay it appears.
    clock.now = started + timedelta(days=4)
    assert (
        harness.client.get(f"/fhir/ImagingStudy/{study['id']}", headers=bearer(token)).status_code
        == 200
    )


def test_early_release_and_waiver(clocked: tuple[Harness, Clock]) -> None:
    harness, clock = clocked
    system = harness.backend_token("system/*.rs")
    patient = harness.client.get(
        f"/fhir/Patient?identifier={BENCH_PATIENT_ID}", headers=bearer(system)
    ).json()["entry"][0]["resource"]["id"]
    study = newest(harness, system, patient)
    clock.now = datetime.fromisoformat(study["started"]) + timedelta(hours=1)
    token = harness.patient_token(patient, "launch/patient patient/ImagingStudy.rs")
    path = f"/fhir/ImagingStudy/{study['id']}"
    assert harness.client.get(path, headers=bearer(token)).status_code == 403
    assert harness.call(harness.services.records.jackets.release_early, study["id"], "dr.house")
    assert harness.client.get(path, headers=bearer(token)).status_code == 200
    # A second patient's newest study, waived by the patient.
    other_mrn = "IS-1003"
    other = harness.client.get(
        f"/fhir/Patient?identifier={other_mrn}", headers=bearer(system)
    ).json()["entry"][0]["resource"]["id"]
    other_study = newest(harness, system, other)
    clock.now = datetime.fromisoformat(other_study["started"]) + timedelta(hours=1)
    other_token = harness.patient_token(other, "launch/patient patient/ImagingStudy.rs")
    other_path = f"/fhir/ImagingStudy/{other_study['id']}"
    assert harness.client.get(other_path, headers=bearer(other_token)).status_code == 403
    assert harness.call(harness.services.records.jackets.waive, other)
    assert harness.client.get(other_path, headers=bearer(other_token)).status_code == 200


def test_overrides_and_settings() -> None:
    assert parse_overrides("MG=168 XA=0") == {
        "MG": timedelta(hours=168),
        "XA": timedelta(0),
    }
    with pytest.raises(ConfigError):
        load_settings(_env_file=None, release_delay_by_modality="MG:168")


def test_the_portal_shows_held_studies_and_the_waiver(clocked: tuple[Harness, Clock]) -> None:
    harness, clock = clocked
    system = harness.backend_token("system/*.rs")
    mrn = "IS-1004"
    patient = harness.client.get(f"/fhir/Patient?identifier={mrn}", headers=bearer(system)).json()[
        "entry"
    ][0]["resource"]["id"]
    study = newest(harness, system, patient)
    started = study["started"]
    clock.now = (
        datetime.fromisoformat(started)
        if "T" in started
        else datetime.fromisoformat(started + "T00:00:00+00:00")
    ) + timedelta(hours=1)
    account = harness.call(harness.services.auth.accounts.enroll_patient, patient, "1970-01-01")
    harness.call(
        harness.services.auth.accounts.activate, account.login, "1970-01-01", "portal passphrase"
    )
    assert sign_in(harness, account.login, "portal passphrase") == 303
    page = harness.client.get("/portal/").text
    assert "Available to you from" in page and "Show me new results right away" in page
    waived = harness.client.post(
        "/portal/waive", data={"csrf_token": hidden(page, "csrf_token")}, follow_redirects=False
    )
    assert waived.status_code == 303
    after = harness.client.get("/portal/").text
    assert "Available to you from" not in after
    assert "You chose to see new results at once" in harness.client.get("/portal/activity").text
