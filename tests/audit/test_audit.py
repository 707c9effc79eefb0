"""The audit trail: each action leaves its AuditEvent, and an unrecordable access is refused."""

from __future__ import annotations

from typing import Any

import pytest
from fhir.resources.R4B.auditevent import AuditEvent
from fhir.resources.R4B.bundle import Bundle

from fixtures.generate import BENCH_PATIENT_ID
from tests.auth.test_authorize import (
    REDIRECT,
    approve,
    authorize_params,
    follow_to_consent,
    pkce,
)
from tests.auth.test_authorize import app_id as app_id
from tests.auth.test_authorize import patient as patient
from tests.auth.test_oauth_api import Harness, bearer
from tests.auth.test_oauth_api import harness as harness


def events(harness: Harness, token: dict[str, Any], query: str = "") -> list[dict[str, Any]]:
    response = harness.client.get(f"/fhir/AuditEvent?_count=200{query}", headers=bearer(token))
    assert response.status_code == 200, response.text
    bundle = response.json()
    Bundle.model_validate(bundle)
    found = [e["resource"] for e in bundle.get("entry", [])]
    for resource in found:
        AuditEvent.model_validate(resource)
    return found


def kinds(found: list[dict[str, Any]]) -> set[tuple[str, str]]:
    return {(e["type"]["code"], e["subtype"][0]["code"]) for e in found}


def test_each_action_is_recorded(harness: Harness, patient: dict[str, str], app_id: str) -> None:
    auditor = harness.backend_token("system/*.rs")
    # A refused request, a search, a read and a DICOMweb retrieve with a system token.
    assert harness.client.get("/fhir/ImagingStudy").status_code == 401
    studies = harness.client.get("/fhir/ImagingStudy?_count=1", headers=bearer(auditor)).json()
    study = studies["entry"][0]["resource"]["id"]
    assert (
        harness.client.get(f"/fhir/ImagingStudy/{study}", headers=bearer(auditor)).status_code
        == 200
    )
    assert (
        harness.client.get(
            f"/dicomweb/studies/{study}/metadata", headers=bearer(auditor)
        ).status_code
        == 200
    )
    # A patient signs in, consents, and the app gets a token, then it is revoked.
    verifier, challenge = pkce()
    consent = follow_to_consent(harness, authorize_params(app_id, challenge), patient)
    code = approve(harness, consent)["code"]
    token = harness.client.post(
        "/oauth/token",
        data={
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": REDIRECT,
            "code_verifier": verifier,
            "client_id": app_id,
        },
    ).json()
    harness.client.post("/oauth/revoke", data={"token": token["access_token"], "client_id": app_id})
    found = events(harness, auditor)
    recorded = kinds(found)
    for expected in [
        ("rest", "search"),
        ("rest", "read"),
        ("110103", "retrieve"),
        ("110114", "client_credentials"),
        ("110114", "authorization_code"),
        ("110114", "revoke"),
        ("110137", "grant"),
    ]:
        assert expected in recorded, expected
    assert any(k[1] in ("sign-in", "activate") for k in recorded)
    refused = [e for e in found if e["subtype"][0]["code"] == "search" and e["outcome"] == "4"]
    assert refused, "the 401 was recorded as a failure"
    retrieve = next(e for e in found if e["subtype"][0]["code"] == "retrieve")
    assert {"reference": f"ImagingStudy/{study}"} in [x.get("what") for x in retrieve["entity"]]
    # Search by agent, entity and date.
    mine = events(harness, auditor, f"&agent={auditor['client_id']}")
    assert mine and all(
        any(a["who"].get("identifier", {}).get("value") == auditor["client_id"] for a in e["agent"])
        for e in mine
    )
    about = events(harness, auditor, f"&entity=ImagingStudy/{study}")
    assert about and all(f"ImagingStudy/{study}" in str(e["entity"]) for e in about)
    assert events(harness, auditor, "&date=lt2000-01-01") == []
    assert events(harness, auditor, "&date=ge2000-01-01")


def test_a_patient_token_sees_only_its_own_events(harness: Harness) -> None:
    system = harness.backend_token("system/*.rs")
    found = harness.client.get(
        f"/fhir/Patient?identifier={BENCH_PATIENT_ID}", headers=bearer(system)
    ).json()
    patient_id = found["entry"][0]["resource"]["id"]
    token = harness.patient_token(
        patient_id, "launch/patient patient/AuditEvent.rs patient/ImagingStudy.rs"
    )
    harness.client.get("/fhir/ImagingStudy", headers=bearer(token))
    own = events(harness, token)
    assert own
    assert all(f"Patient/{patient_id}" in str(e.get("entity", "")) for e in own)
    others = events(harness, token, "&patient=someone-else")
    assert others == []
    # Events of other patients never show; the system token's search did touch this
    # patient's data, so it shows (its other events do not).
    assert any(system["client_id"] in str(e["agent"]) for e in own)


def test_an_access_that_cannot_be_recorded_is_refused(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    token = harness.backend_token("system/*.rs")

    async def broken(entry: Any) -> None:
        raise RuntimeError("the audit database is down")

    monkeypatch.setattr(harness.services.audit, "record", broken)
    response = harness.client.get("/fhir/ImagingStudy?_count=5", headers=bearer(token))
    assert response.status_code == 500
    assert "ImagingStudy" not in response.text and "2.25." not in response.text
    metadata = harness.client.get("/dicomweb/studies", headers=bearer(token))
    assert metadata.status_code == 500 and "2.25." not in metadata.text
