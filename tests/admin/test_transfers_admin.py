"""Staff sides of sending and research, in-process: a staff revoke is in the patient's
Activity; ``gateway orgs remove`` withdraws the organization's sends (FHIR Consent
inactive) and cancels its pushes; ``/admin/transfers`` and ``/admin/research`` answer
bad input with a clear 400/404/415 JSON error and change nothing."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from joserfc.jwk import RSAKey
from typer.testing import CliRunner

from gateway.auth.client_auth import JWT_BEARER
from gateway.cli import app
from tests.auth.test_backend_access import backend_token
from tests.auth.test_oauth_api import Harness, bearer
from tests.portal.support import Clock, Patient, enroll, portal_harness, portal_sign_in
from tests.support.catalog import by_patient, read_catalog

pytestmark = pytest.mark.slow
KEY = ("HOSP-A", "IS-1001")  # the patient ``enroll`` signs up
BURNS_KEY = RSAKey.generate_key(2048, parameters={"kid": "burns"})  # its pulling client's
PULLING: dict[str, str] = {}  # organization id -> its backend client's id


@pytest.fixture(scope="module")
def harness(tmp_path_factory: pytest.TempPathFactory, embedded_data_dir: Path) -> Iterator[Harness]:
    workdir = tmp_path_factory.mktemp("staff")
    with portal_harness(workdir, embedded_data_dir, Clock(), transfer_worker=False) as made:
        for org_id, name, jwks in (
            ("trauma", "Trauma Centre", None),
            ("burns", "Burns Unit", {"keys": [BURNS_KEY.as_dict(private=False)]}),
        ):
            _, client = made.call(
                made.services.auth.organizations.add,
                org_id=org_id,
                name=name,
                jwks=jwks,
                stow_url="http://127.0.0.1:9/dicom-web",  # never answers: pushes stay queued
            )
            if client is not None:
                PULLING[org_id] = client.client_id
        yield made


@pytest.fixture(scope="module")
def patient(harness: Harness) -> Patient:
    return enroll(harness)


@pytest.fixture(scope="module")
def studies(fixture_files: list[Path]) -> list[str]:
    return [s.uid for s in by_patient(read_catalog(fixture_files))[KEY]]


@pytest.fixture(scope="module")
def admin(harness: Harness) -> dict[str, str]:
    return bearer(backend_token(harness, "admin/transfers admin/research"))


def _state(harness: Harness) -> tuple[int, int, int, int]:
    """Sends, transfer jobs, projects, audit records: what a refused request must not change."""
    services = harness.services
    sends = harness.call(services.auth.sends.recent)
    jobs = harness.call(services.transfers.jobs, limit=10_000)
    projects = harness.call(services.donation.projects.all)
    _, audited = harness.call(services.audit.search, limit=1)
    return len(sends), len(jobs), len(projects), audited


def _send(harness: Harness, admin: dict[str, str], org: str, studies: list[str]) -> Any:
    answer = harness.client.post(
        "/admin/transfers",
        headers=admin,
        json={
            "identifier": {"system": KEY[0], "value": KEY[1]},
            "organization": org,
            "studies": studies,
            "days": 3,
            "reason": "transfer of care",
        },
    )
    assert answer.status_code == 201, answer.text
    return answer.json()


def _activity(harness: Harness, patient: Patient) -> str:
    harness.client.cookies.clear()
    assert portal_sign_in(harness.client, patient.code) == 303
    return harness.client.get("/portal/activity").text


def test_a_staff_revoke_is_in_the_patients_activity(
    harness: Harness, patient: Patient, studies: list[str], admin: dict[str, str]
) -> None:
    send = _send(harness, admin, "trauma", studies[:1])
    assert send["patient"] == {"reference": f"Patient/{patient.fhir_id}"}
    revoked = harness.client.post(f"/admin/transfers/{send['id']}/revoke", headers=admin)
    assert revoked.status_code == 200
    trail, _ = harness.call(harness.services.audit.search, patients=frozenset({patient.fhir_id}))
    (event,) = [e for e in trail if (e.category, e.action) == ("transfer", "revoke")]
    assert event.outcome == 200 and event.client_id and send["id"] in event.detail
    activity = _activity(harness, patient)
    assert "A send to a hospital was withdrawn" in activity
    assert "Referral service" in activity  # who: the staff system, by its name
    (job,) = [p for p in send["pushes"]]
    assert harness.call(harness.services.transfers.get, job["id"]).status == "cancelled"


def test_orgs_remove_withdraws_the_sends_and_cancels_the_pushes(
    harness: Harness, patient: Patient, studies: list[str], admin: dict[str, str]
) -> None:
    first = _send(harness, admin, "burns", studies[:1])
    second = _send(harness, admin, "burns", studies[1:3])
    kept = _send(harness, admin, "trauma", studies[:1])
    # The organization's own backend client pulls what was sent to it, and only that.
    pulled = harness.client.post(
        "/oauth/token",
        data={
            "grant_type": "client_credentials",
            "scope": "system/ImagingStudy.rs",
            "client_assertion_type": JWT_BEARER,
            "client_assertion": harness.assertion(PULLING["burns"], BURNS_KEY),
        },
    )
    assert pulled.status_code == 200, pulled.text
    pull = bearer(pulled.json())
    listed = harness.client.get("/fhir/ImagingStudy", headers=pull).json()
    assert {e["resource"]["id"] for e in listed["entry"]} == set(studies[:3])
    assert harness.client.get(f"/fhir/ImagingStudy/{studies[3]}", headers=pull).status_code == 404

    env = {
        "GATEWAY_DATABASE_URL": harness.settings.effective_database_url,
        "GATEWAY_DATA_DIR": str(harness.settings.data_dir),
    }
    removed = CliRunner().invoke(app, ["orgs", "remove", "burns"], env=env)
    assert removed.exit_code == 0, removed.output
    assert "2 send(s) to it withdrawn" in removed.output
    again = CliRunner().invoke(app, ["orgs", "remove", "burns"], env=env)
    assert again.exit_code == 1 and "no organization burns" in again.output

    operator = bearer(backend_token(harness, "system/*.rs", operator=True))
    for send in (first, second):
        consent = harness.client.get(f"/fhir/Consent/org-{send['id']}", headers=operator)
        assert consent.status_code == 200 and consent.json()["status"] == "inactive"
        (job,) = send["pushes"]
        stopped = harness.call(harness.services.transfers.get, job["id"])
        assert (
            stopped.status == "cancelled" and stopped.last_error == "the organization was removed"
        )
    # The other organization's send is untouched.
    still = harness.client.get(f"/fhir/Consent/org-{kept['id']}", headers=operator).json()
    assert still["status"] == "active"
    (job,) = kept["pushes"]
    assert harness.call(harness.services.transfers.get, job["id"]).status == "queued"
    assert harness.call(harness.services.auth.organizations.get, "burns") is None
    # Its client is refused from its next request on.
    refused = harness.client.get(f"/fhir/ImagingStudy/{studies[0]}", headers=pull)
    assert refused.status_code in (401, 403, 404), refused.text
    assert "ImagingStudy" not in refused.json().get("resourceType", "")

    trail, _ = harness.call(harness.services.audit.search, patients=frozenset({patient.fhir_id}))
    removals = [e for e in trail if "Burns Unit was removed" in (e.detail or "")]
    assert {e.detail.split(":")[0] for e in removals} == {
        f"send {first['id']}",
        f"send {second['id']}",
    }
    assert "A send to a hospital was withdrawn" in _activity(harness, patient)


def test_admin_transfers_bad_input_is_refused_and_changes_nothing(
    harness: Harness, studies: list[str], admin: dict[str, str], fixture_files: list[Path]
) -> None:
    other = by_patient(read_catalog(fixture_files))[("HOSP-A", "IS-1002")][0].uid
    good = {
        "identifier": {"system": KEY[0], "value": KEY[1]},
        "organization": "trauma",
        "studies": studies[:1],
        "days": 3,
        "reason": "transfer of care",
    }
    most = harness.services.auth.sends.max_days
    cases: list[tuple[dict[str, Any], int, str]] = [
        ({"organization": "nowhere"}, 404, "No organization nowhere."),
        ({"organization": 7}, 400, "organization must be an organization id."),
        ({"studies": []}, 400, "Each study must be one of the patient's studies."),
        ({"studies": [other]}, 400, "Each study must be one of the patient's studies."),
        ({"studies": "1.2.3"}, 400, "studies must be a list of StudyInstanceUIDs."),
        ({"reason": "  "}, 400, "Give the reason for sending (reason)."),
        ({"days": 0}, 400, f"Access lasts from 1 to {most} days."),
        ({"days": most + 1}, 400, f"Access lasts from 1 to {most} days."),
        ({"days": "7"}, 400, "days must be a whole number."),
        (
            {"identifier": {"system": "HOSP-A", "value": "NOBODY"}},
            400,
            "Each study must be one of the patient's studies.",
        ),
        ({"identifier": {"value": 5}}, 400, "identifier needs a value"),
        ({"patient": "x"}, 400, "Give either patient or identifier."),
        ({"identifier": None, "patient": "nobody-here"}, 404, "Patient/nobody-here is not known."),
    ]
    before = _state(harness)
    for change, status, said in cases:
        body = {k: v for k, v in {**good, **change}.items() if v is not None}
        answer = harness.client.post("/admin/transfers", headers=admin, json=body)
        assert answer.status_code == status, (change, answer.text)
        assert answer.headers["content-type"] == "application/json"
        assert said in answer.json()["error_description"], (change, answer.json())
    not_json = harness.client.post(
        "/admin/transfers", headers={**admin, "Content-Type": "text/plain"}, content=b"{}"
    )
    assert not_json.status_code == 415
    assert "Send the send as application/json." in not_json.json()["error_description"]
    broken = harness.client.post(
        "/admin/transfers", headers={**admin, "Content-Type": "application/json"}, content=b"{"
    )
    assert broken.status_code == 400 and broken.json()["error"] == "invalid_request"
    unknown = harness.client.post("/admin/transfers/no-such-send/revoke", headers=admin)
    assert unknown.status_code == 404 and unknown.json()["error"] == "not_found"
    sends, jobs, projects, _ = _state(harness)
    assert (sends, jobs, projects) == before[:3]
    # Without the scope: refused, as JSON.
    plain = bearer(backend_token(harness, "system/*.rs"))
    assert harness.client.post("/admin/transfers", headers=plain, json=good).status_code == 403
    assert _state(harness)[:3] == before[:3]


def test_admin_research_bad_input_is_refused_and_changes_nothing(
    harness: Harness, admin: dict[str, str]
) -> None:
    made = harness.client.post(
        "/admin/research/projects",
        headers=admin,
        json={"name": "Cohort", "protocolId": "COH-1", "options": ["clean-descriptors"]},
    )
    assert made.status_code == 201, made.text
    good = {"name": "Another", "protocolId": "COH-2"}
    cases: list[tuple[dict[str, Any], str]] = [
        ({"name": ""}, "a project needs a name"),
        ({"name": None}, "name must be text."),
        ({"protocolId": "COH-1"}, "exists already"),
        ({"protocolId": "bad id!"}, "the protocol id is letters"),
        ({"archiveUrl": "ftp://archive.example/"}, "must be an http(s) URL"),
        ({"options": ["no-such-option"]}, "unknown option no-such-option"),
        ({"options": "clean-descriptors"}, "options must be a list of option names."),
        ({"acceptBurnedIn": "yes"}, "acceptBurnedIn must be true or false."),
        ({"clientId": "no-such-client"}, "clientId names no backend client here."),
    ]
    before = _state(harness)
    for change, said in cases:
        answer = harness.client.post(
            "/admin/research/projects", headers=admin, json={**good, **change}
        )
        assert answer.status_code == 400, (change, answer.text)
        assert said in answer.json()["error_description"], (change, answer.json())
    for method, path in (
        ("GET", "/admin/research/projects/nope"),
        ("DELETE", "/admin/research/projects/nope"),
        ("GET", "/admin/research/projects/nope/deliveries"),
        ("POST", "/admin/research/projects/nope/deliver"),
        ("GET", "/admin/research/projects/nope/package"),
    ):
        answer = harness.client.request(method, path, headers=admin)
        assert answer.status_code == 404, (method, path, answer.text)
        assert answer.json() == {
            "error": "not_found",
            "error_description": "No such research project.",
        }
    assert _state(harness)[:3] == before[:3]
