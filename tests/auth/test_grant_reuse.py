"""Grant reuse and ``prompt=none`` (issue 13): an app coming back within what it was
allowed gets its code without the consent page, and no second grant is made."""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import pytest
from sqlalchemy import func, select

from gateway.auth.clients import ClientKind
from gateway.store.models import AuditRecord, Grant
from tests.auth.test_authorize import (
    REDIRECT,
    approve,
    authorize_params,
    follow_to_consent,
    patient_fhir_id,
    pkce,
    redeem,
)
from tests.auth.test_oauth_api import Harness, bearer
from tests.auth.test_oauth_api import harness as harness

STUDIES = "launch/patient openid fhirUser online_access patient/ImagingStudy.rs"
WITH_DOCUMENTS = f"{STUDIES} patient/DocumentReference.rs"


@pytest.fixture(scope="module")
def patient(harness: Harness) -> dict[str, str]:
    fhir_id = patient_fhir_id(harness)
    account = harness.call(
        harness.services.auth.accounts.enroll_patient, fhir_id, "1961-04-12", "Jane Doe"
    )
    return {"code": account.login, "fhir_id": fhir_id, "account_id": account.id}


def new_app(harness: Harness, name: str = "OHIF Viewer") -> str:
    created = harness.call(
        harness.services.auth.clients.add,
        name=name,
        kind=ClientKind.public,
        redirect_uris=[REDIRECT],
    )
    return str(created.client.client_id)


def grants_of(harness: Harness, app: str) -> int:
    async def count() -> int:
        async with harness.services.database.sessions() as session:
            found = await session.scalar(
                select(func.count()).select_from(Grant).where(Grant.client_id == app)
            )
            return int(found or 0)

    return int(harness.call(count))


def first_grant(
    harness: Harness, app: str, patient: dict[str, str], scope: str, untick: tuple[str, ...] = ()
) -> dict[str, Any]:
    """A fresh browser signs in and approves; its cookies stay for what follows."""
    verifier, challenge = pkce()
    consent = follow_to_consent(harness, authorize_params(app, challenge, scope=scope), patient)
    redirected = approve(harness, consent, untick=untick)
    token = redeem(harness, redirected["code"], verifier, app)
    assert token.status_code == 200, token.text
    return dict(token.json())


def authorize_again(harness: Harness, app: str, scope: str, **extra: str) -> tuple[Any, str]:
    """The same browser asks again; returns the answer (not followed) and the verifier."""
    verifier, challenge = pkce()
    params = authorize_params(app, challenge, scope=scope, **extra)
    answer = harness.client.get("/oauth/authorize?" + urlencode(params), follow_redirects=False)
    return answer, verifier


def at_app(answer: Any) -> dict[str, str]:
    assert answer.status_code == 302, answer.text
    location = answer.headers["location"]
    assert location.startswith(REDIRECT + "?"), location
    return {k: v[0] for k, v in parse_qs(urlsplit(location).query).items()}


def test_an_app_within_its_grant_skips_the_consent_page(
    harness: Harness, patient: dict[str, str]
) -> None:
    app = new_app(harness)
    first = first_grant(harness, app, patient, STUDIES)
    assert grants_of(harness, app) == 1
    answer, verifier = authorize_again(harness, app, STUDIES)
    back = at_app(answer)  # straight back to the app: no sign-in, no consent page
    token = redeem(harness, back["code"], verifier, app)
    assert token.status_code == 200, token.text
    body = token.json()
    assert body["patient"] == patient["fhir_id"] == first["patient"]
    assert set(body["scope"].split()) == set(STUDIES.split())
    assert body["refresh_token"] and body["access_token"] != first["access_token"]
    found = harness.client.get("/fhir/ImagingStudy", headers=bearer(body))
    assert found.status_code == 200 and found.json()["entry"]
    # The same grant: one row, and revoking it ends both tokens.
    assert grants_of(harness, app) == 1
    harness.client.post("/oauth/revoke", data={"token": body["access_token"], "client_id": app})
    for token_body in (first, body):
        assert (
            harness.client.get("/fhir/ImagingStudy", headers=bearer(token_body)).status_code == 401
        )


def test_a_narrower_request_gets_the_narrower_scope(
    harness: Harness, patient: dict[str, str]
) -> None:
    app = new_app(harness)
    first_grant(harness, app, patient, WITH_DOCUMENTS)
    answer, verifier = authorize_again(harness, app, STUDIES)
    body = redeem(harness, at_app(answer)["code"], verifier, app).json()
    assert set(body["scope"].split()) == set(STUDIES.split())
    assert harness.client.get("/fhir/DocumentReference", headers=bearer(body)).status_code == 403
    assert grants_of(harness, app) == 1


def test_wider_scopes_still_ask(harness: Harness, patient: dict[str, str]) -> None:
    app = new_app(harness)
    # The patient unticked documents the first time.
    first_grant(harness, app, patient, WITH_DOCUMENTS, untick=("patient/DocumentReference.rs",))
    answer, _ = authorize_again(harness, app, WITH_DOCUMENTS)
    assert answer.status_code == 303 and "/oauth/consent?request=" in answer.headers["location"]
    silent, _ = authorize_again(harness, app, WITH_DOCUMENTS, prompt="none")
    assert at_app(silent)["error"] == "consent_required"
    assert grants_of(harness, app) == 1


def test_another_app_or_a_withdrawn_grant_asks(harness: Harness, patient: dict[str, str]) -> None:
    app = new_app(harness)
    first = first_grant(harness, app, patient, STUDIES)
    other = new_app(harness, "Another viewer")
    answer, _ = authorize_again(harness, other, STUDIES)
    assert answer.status_code == 303 and "/oauth/consent?request=" in answer.headers["location"]
    harness.client.post("/oauth/revoke", data={"token": first["access_token"], "client_id": app})
    answer, _ = authorize_again(harness, app, STUDIES)
    assert answer.status_code == 303 and "/oauth/consent?request=" in answer.headers["location"]
    silent, _ = authorize_again(harness, app, STUDIES, prompt="none")
    assert at_app(silent)["error"] == "consent_required"


def test_prompt_consent_asks_even_when_a_grant_covers(
    harness: Harness, patient: dict[str, str]
) -> None:
    app = new_app(harness)
    first_grant(harness, app, patient, STUDIES)
    answer, _ = authorize_again(harness, app, STUDIES, prompt="consent")
    assert answer.status_code == 303 and "/oauth/consent?request=" in answer.headers["location"]


def test_prompt_none(harness: Harness, patient: dict[str, str]) -> None:
    app = new_app(harness)
    harness.client.cookies.clear()
    silent, _ = authorize_again(harness, app, STUDIES, prompt="none", state="s-1")
    answer = at_app(silent)  # nobody signed in: back to the app, no page
    assert answer == {
        "error": "login_required",
        "error_description": answer["error_description"],
        "state": "s-1",
    }
    first_grant(harness, app, patient, STUDIES)
    silent, verifier = authorize_again(harness, app, STUDIES, prompt="none")
    body = redeem(harness, at_app(silent)["code"], verifier, app).json()
    assert body["patient"] == patient["fhir_id"]
    mixed, _ = authorize_again(harness, app, STUDIES, prompt="none login")
    assert at_app(mixed)["error"] == "invalid_request"
    assert grants_of(harness, app) == 1
    # The reuse is in the patient's trail, as a consent record naming the app.
    assert reuses_audited(harness, app) == 1


def reuses_audited(harness: Harness, app: str) -> int:
    async def count() -> int:
        async with harness.services.database.sessions() as session:
            found = await session.scalar(
                select(func.count())
                .select_from(AuditRecord)
                .where(
                    AuditRecord.client_id == app,
                    AuditRecord.category == "consent",
                    AuditRecord.action == "reuse",
                )
            )
            return int(found or 0)

    return int(harness.call(count))
