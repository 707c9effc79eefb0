"""The staff enrollment API: ``POST /admin/enrollments`` and the printable letter."""

from __future__ import annotations

import logging
import re
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from fixtures.generate import BENCH_PATIENT_ID
from gateway.auth.clients import ClientKind
from tests.auth.test_authorize import PASSPHRASE, authorize_params, follow_to_consent, hidden, pkce
from tests.auth.test_oauth_api import Harness, bearer
from tests.auth.test_oauth_api import harness as harness
from tests.support.browsers import Browser

ADMIN = "system/*.rs admin/enrollments"
BENCH = {"system": "HOSP-A", "value": BENCH_PATIENT_ID}
BENCH_BIRTH_DATE = "1970-01-01"  # fixtures.generate: IS-1001 born 19700101


@pytest.fixture(scope="module")
def admin(harness: Harness) -> dict[str, str]:
    return bearer(harness.backend_token(ADMIN))


def enroll(harness: Harness, headers: dict[str, str], body: Any, **extra: str) -> Any:
    return harness.client.post(
        "/admin/enrollments", json=body, headers={**headers, "Accept": "application/json", **extra}
    )


def bench_fhir_id(harness: Harness) -> str:
    return str(harness.call(harness.services.records.patients.identify, "HOSP-A", BENCH_PATIENT_ID))


def test_enroll_by_identifier_takes_the_birth_date_from_the_archive(
    harness: Harness, admin: dict[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="gateway")
    response = enroll(harness, admin, {"identifier": BENCH})
    assert response.status_code == 201, response.text
    body = response.json()
    code = body["access_code"]
    assert re.fullmatch(r"\d{8}", code)
    fhir_id = bench_fhir_id(harness)
    base = "https://gateway.example"
    assert body["patient"] == {"reference": f"Patient/{fhir_id}"}
    assert body["portal"] == f"{base}/portal/signin"
    assert body["letter"] == f"{base}/admin/enrollments/{body['id']}/letter"
    assert response.headers["location"] == body["letter"]
    assert response.headers["cache-control"] == "no-store"
    account = harness.call(harness.services.auth.accounts.get, body["id"])
    assert (account.birth_date, account.display_name) == (BENCH_BIRTH_DATE, "Jane Doe")
    # The code is a credential: not in the audit trail, not in the logs.
    records, _ = harness.call(harness.services.audit.search, patients=frozenset({fhir_id}))
    enrolled = [r for r in records if (r.category, r.action) == ("admin", "enroll")]
    assert len(enrolled) == 1 and enrolled[0].outcome == 201
    assert enrolled[0].client_id
    assert all(code not in str(vars(r)) for r in records)
    gateway_logs = [r.getMessage() for r in caplog.records if r.name.startswith("gateway")]
    assert any(body["id"] in line for line in gateway_logs)
    assert not any(code in line for line in gateway_logs)
    # The code then activates with the archive's birth date.
    activated = harness.call(
        harness.services.auth.accounts.activate, code, BENCH_BIRTH_DATE, PASSPHRASE
    )
    assert activated is not None and activated.patient_fhir_id == fhir_id


def test_the_letter(harness: Harness, admin: dict[str, str]) -> None:
    body = enroll(harness, admin, {"identifier": BENCH, "name": "Jane Q. Doe"}).json()
    code = body["access_code"]
    page = harness.client.get(body["letter"], headers=admin)
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert page.headers["cache-control"] == "no-store"
    assert page.headers["content-security-policy"] == (
        "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'; base-uri 'none'"
    )
    html = page.text
    assert f"{code[:4]} {code[4:]}" in html
    assert "Jane Q. Doe" in html
    assert "https://gateway.example/portal/signin" in html
    assert "First time here? Activate your access code" in html
    assert "at least 10 characters" in html
    assert "72 hours" in html or "3 days" in html
    assert "Keep this letter private" in html
    assert "@media print" in html
    assert "<script" not in html and "src=" not in html and "http-equiv" not in html
    # Once activated, the letter says so.
    harness.call(harness.services.auth.accounts.activate, code, BENCH_BIRTH_DATE, PASSPHRASE)
    again = harness.client.get(body["letter"], headers=admin).text
    assert "already been activated" in again
    assert "First time here?" not in again


def test_accept_html_gives_the_letter(harness: Harness, admin: dict[str, str]) -> None:
    response = harness.client.post(
        "/admin/enrollments",
        json={"identifier": BENCH, "birthDate": "1970-01-01", "name": "Jane <b>Doe</b>"},
        headers={**admin, "Accept": "text/html,application/xhtml+xml,*/*;q=0.8"},
    )
    assert response.status_code == 201
    assert response.headers["content-type"].startswith("text/html")
    assert response.headers["location"].startswith("https://gateway.example/admin/enrollments/")
    assert "Jane &lt;b&gt;Doe&lt;/b&gt;" in response.text
    assert re.search(r"\d{4} \d{4}", response.text)


def test_enroll_by_fhir_id_with_given_details(harness: Harness, admin: dict[str, str]) -> None:
    fhir_id = bench_fhir_id(harness)
    response = enroll(harness, admin, {"patient": fhir_id, "birthDate": "1970-01-01"})
    assert response.status_code == 201, response.text
    assert response.json()["patient"]["reference"] == f"Patient/{fhir_id}"


def test_no_birth_date_anywhere_is_400(harness: Harness, admin: dict[str, str]) -> None:
    unknown = {"system": "HOSP-Z", "value": "NOT-IN-THE-ARCHIVE"}
    response = enroll(harness, admin, {"identifier": unknown})
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_request"
    assert "birth" in response.json()["error_description"]
    # Given by the staff, the enrollment goes ahead before any image arrives.
    given = enroll(harness, admin, {"identifier": unknown, "birthDate": "1990-02-03"})
    assert given.status_code == 201


def test_refusals(harness: Harness, admin: dict[str, str]) -> None:
    client = harness.client
    missing = client.post("/admin/enrollments", json={"identifier": BENCH})
    assert missing.status_code == 401
    assert missing.headers["www-authenticate"].startswith("Bearer")
    assert missing.json()["error"] == "invalid_token"
    wrong = client.post(
        "/admin/enrollments", json={"identifier": BENCH}, headers={"Authorization": "Bearer x"}
    )
    assert wrong.status_code == 401 and 'error="invalid_token"' in wrong.headers["www-authenticate"]
    system = bearer(harness.backend_token("system/*.rs"))
    forbidden = enroll(harness, system, {"identifier": BENCH})
    assert forbidden.status_code == 403
    assert forbidden.json()["error"] == "insufficient_scope"
    assert "insufficient_scope" in forbidden.headers["www-authenticate"]
    bad_json = client.post(
        "/admin/enrollments",
        content=b"{not json",
        headers={**admin, "Content-Type": "application/json"},
    )
    assert bad_json.status_code == 400 and bad_json.json()["error"] == "invalid_request"
    form = client.post("/admin/enrollments", data={"patient": "x"}, headers=admin)
    assert form.status_code == 415
    for body in (
        [],
        {},
        {"identifier": BENCH, "patient": "abc"},
        {"identifier": {"system": "HOSP-A"}},
        {"identifier": BENCH, "name": 5},
    ):
        assert enroll(harness, admin, body).status_code == 400, body
    for birth_date in ("1970-13-01", "01.01.1970", "19700101", "2999-01-01", 19700101):
        response = enroll(harness, admin, {"identifier": BENCH, "birthDate": birth_date})
        assert response.status_code == 400, birth_date
    unknown = enroll(harness, admin, {"patient": "0" * 32})
    assert unknown.status_code == 404 and unknown.json()["error"] == "not_found"
    letter = client.get("/admin/enrollments/no-such-account/letter", headers=admin)
    assert letter.status_code == 404 and letter.json()["error"] == "not_found"
    assert client.get("/admin/enrollments/x/letter").status_code == 401
    assert client.get("/admin/enrollments/x/letter", headers=system).status_code == 403


def test_a_practitioner_account_has_no_letter(harness: Harness, admin: dict[str, str]) -> None:
    account = harness.call(
        harness.services.auth.accounts.add_practitioner, "dr-letter", "Who^Doctor", "long password!"
    )
    response = harness.client.get(f"/admin/enrollments/{account.id}/letter", headers=admin)
    assert response.status_code == 404


def test_a_patient_token_cannot_enroll(harness: Harness) -> None:
    fhir_id = bench_fhir_id(harness)
    token = harness.patient_token(fhir_id, "launch/patient patient/*.rs")
    assert enroll(harness, bearer(token), {"identifier": BENCH}).status_code == 403
    # Even a person's grant that somehow names the scope is refused.
    forged = harness.patient_token(fhir_id, "launch/patient admin/enrollments")
    assert enroll(harness, bearer(forged), {"identifier": BENCH}).status_code == 403


def test_the_scope_is_only_for_backend_clients(harness: Harness) -> None:
    assert harness.backend_token("admin/enrollments")["scope"] == "admin/enrollments"
    # A backend client not pre-authorised for it cannot ask for it.
    client_id, key = harness.backend_client(scope="system/*.rs")
    refused = harness.client.post(
        "/oauth/token",
        data={
            "grant_type": "client_credentials",
            "scope": "admin/enrollments",
            "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
            "client_assertion": harness.assertion(client_id, key),
        },
    )
    assert refused.status_code == 400 and refused.json()["error"] == "invalid_scope"


def test_a_public_app_is_never_offered_the_scope(harness: Harness) -> None:
    fhir_id = bench_fhir_id(harness)
    account = harness.call(
        harness.services.auth.accounts.enroll_patient, fhir_id, "1961-04-12", "Jane Doe"
    )
    app = harness.call(
        harness.services.auth.clients.add,
        name="Sneaky viewer",
        kind=ClientKind.public,
        redirect_uris=["https://app.example/callback"],
        scope="admin/enrollments",
    ).client
    _, challenge = pkce()
    params = authorize_params(
        app.client_id, challenge, scope="launch/patient admin/enrollments patient/ImagingStudy.rs"
    )
    page = follow_to_consent(harness, params, {"code": account.login, "fhir_id": fhir_id})
    assert "patient/ImagingStudy.rs" in page
    assert "admin/enrollments" not in page and "Enrol patients" not in page
    # Ticking it anyway grants nothing of it: the code's grant lacks the scope.
    answer = harness.client.post(
        "/oauth/consent",
        data={
            "csrf_token": hidden(page, "csrf_token"),
            "request": hidden(page, "request"),
            "decision": "approve",
            "scope": ["admin/enrollments"],
        },
        follow_redirects=False,
    )
    assert answer.status_code == 302
    assert "error=access_denied" in answer.headers["location"]


def test_the_admin_scope_in_the_grammar() -> None:
    from gateway.auth import scopes

    assert scopes.is_known("admin/enrollments")
    assert not scopes.is_known("admin/everything")
    assert scopes.parse("admin/enrollments") is None  # not a resource scope
    assert scopes.backend_scopes("system/*.rs admin/enrollments launch") == [
        "system/*.rs",
        "admin/enrollments",
    ]
    # No FHIR decision ever matches it, whatever context is asked for.
    for context in ("patient", "user", "system", "admin"):
        assert not scopes.decide(["admin/enrollments"], [context], "Patient", "r").allowed
    assert scopes.narrow(["admin/enrollments"], ["admin/enrollments"]) == ["admin/enrollments"]
    assert scopes.narrow(["system/*.rs"], ["admin/enrollments"]) is None
    assert scopes.describe("admin/enrollments").startswith("Enrol patients")


def test_an_oversized_body_is_refused_as_it_arrives(
    harness: Harness, admin: dict[str, str]
) -> None:
    sent = 0

    async def endless() -> AsyncIterator[bytes]:
        # No Content-Length: refused once 16 KiB have come, not read to its end.
        nonlocal sent
        while sent < 100 << 20:
            sent += 65536
            yield b" " * 65536

    async def post() -> httpx.Response:
        browser = Browser(harness)
        try:
            return await browser.http.post(
                "/admin/enrollments",
                content=endless(),
                headers={**admin, "Content-Type": "application/json", "Accept": "application/json"},
            )
        finally:
            await browser.aclose()

    too_big: httpx.Response = harness.call(post)
    assert too_big.status_code == 413 and too_big.json()["error"] == "invalid_request"
    assert sent < 1 << 20
