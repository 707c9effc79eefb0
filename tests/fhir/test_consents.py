"""Each grant a patient made is readable as an R4 Consent; a revoked one turns inactive."""

from __future__ import annotations

import re
from urllib.parse import parse_qs, urlsplit

from fhir.resources.R4B.consent import Consent
from sqlalchemy import select

from gateway.auth.clients import ClientKind
from gateway.store.models import Account
from tests.auth.test_authorize import (
    REDIRECT,
    authorize_params,
    follow_to_consent,
    hidden,
    pkce,
)
from tests.auth.test_authorize import patient as patient
from tests.auth.test_oauth_api import Harness, bearer
from tests.auth.test_oauth_api import harness as harness


def test_a_grant_is_a_consent(harness: Harness, patient: dict[str, str]) -> None:
    app = harness.call(
        harness.services.auth.clients.add,
        name="Consent app",
        kind=ClientKind.public,
        redirect_uris=[REDIRECT],
    ).client.client_id
    _, challenge = pkce()
    page = follow_to_consent(harness, authorize_params(app, challenge), patient)
    chosen = re.findall(r'name="study" value="([^"]*)"', page)[:2]
    answer = harness.client.post(
        "/oauth/consent",
        data={
            "csrf_token": hidden(page, "csrf_token"),
            "request": hidden(page, "request"),
            "decision": "approve",
            "scope": re.findall(r'name="scope" value="([^"]*)"', page),
            "studies": "selected",
            "study": chosen,
            "duration": "7d",
        },
        follow_redirects=False,
    )
    assert "code" in parse_qs(urlsplit(answer.headers["location"]).query)
    system = harness.backend_token("system/*.rs")
    bundle = harness.client.get(
        f"/fhir/Consent?patient={patient['fhir_id']}&status=active", headers=bearer(system)
    ).json()
    found = [e["resource"] for e in bundle["entry"]]
    mine = next(
        c for c in found if c["provision"]["actor"][0]["reference"]["display"] == "Consent app"
    )
    Consent.model_validate(mine)
    assert (
        mine["status"] == "active"
        and mine["patient"]["reference"] == f"Patient/{patient['fhir_id']}"
    )
    assert [d["reference"]["reference"] for d in mine["provision"]["data"]] == [
        f"ImagingStudy/{uid}" for uid in chosen
    ]
    assert mine["provision"]["period"]["end"]
    read = harness.client.get(f"/fhir/Consent/{mine['id']}", headers=bearer(system))
    assert read.status_code == 200 and read.json()["id"] == mine["id"]
    # Withdrawn: the same Consent, now inactive.
    assert harness.call(
        harness.services.auth.tokens.revoke_for_account, mine["id"], _account(harness, patient)
    )
    again = harness.client.get(f"/fhir/Consent/{mine['id']}", headers=bearer(system)).json()
    assert again["status"] == "inactive" and again["provision"]["period"]["end"]
    # Another patient's token sees none of them.
    other = harness.patient_token("someone-else", "launch/patient patient/Consent.rs")
    assert harness.client.get("/fhir/Consent", headers=bearer(other)).json()["total"] == 0
    assert (
        harness.client.get(f"/fhir/Consent/{mine['id']}", headers=bearer(other)).status_code == 404
    )


def _account(harness: Harness, patient: dict[str, str]) -> str:
    async def find() -> str:
        async with harness.services.database.sessions() as session:
            account = await session.scalar(select(Account).where(Account.login == patient["code"]))
            assert account is not None
            return account.id

    return harness.call(find)
