"""Patient tokens from real SMART standalone launches, for benchmarks.

Enrolls patients and registers a public app with the token service on the
gateway's database (as an operator's CLI would), then makes each launch over
HTTP exactly as a browser would: authorize, sign in (activating the account),
consent, and redeem the code with PKCE at the token endpoint.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import re
import secrets
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import httpx

from gateway.auth.clients import ClientKind
from gateway.auth.service import AuthServices
from gateway.settings import load_settings
from gateway.store.database import Database

REDIRECT = "https://bench.example/callback"
BIRTH_DATE = "1961-04-12"
PASSPHRASE = "bench launch passphrase"
SCOPE = "launch/patient openid fhirUser patient/ImagingStudy.rs patient/DocumentReference.rs"


@dataclass(frozen=True)
class Enrolled:
    client_id: str
    logins: dict[str, str]  # FHIR Patient id -> access code


async def _with_auth(database_url: str, action: Any) -> Any:
    settings = load_settings(_env_file=None, database_url=database_url)
    database = Database(database_url)
    auth = AuthServices.build(settings, database.sessions)
    try:
        return await action(auth)
    finally:
        await auth.aclose()
        await database.dispose()


def enroll(database_url: str, patients: list[str]) -> Enrolled:
    """Accounts for these FHIR Patient ids, and one public app to launch."""

    async def run(auth: AuthServices) -> Enrolled:
        app = await auth.clients.add(
            name="Load bench viewer", kind=ClientKind.public, redirect_uris=[REDIRECT]
        )
        logins = {}
        for patient in patients:
            account = await auth.accounts.enroll_patient(patient, BIRTH_DATE, "Bench Patient")
            logins[patient] = account.login
        return Enrolled(app.client.client_id, logins)

    result: Enrolled = asyncio.run(_with_auth(database_url, run))
    return result


def _hidden(html: str, name: str) -> str:
    found = re.search(rf'name="{name}" value="([^"]*)"', html)
    if not found:
        raise RuntimeError(f"no {name} in the page")
    return found.group(1)


def launch(base_url: str, client_id: str, login: str) -> dict[str, Any]:
    """The token response of one standalone launch through ``base_url`` (the first
    sign-in activates the account)."""
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest())
    params = {
        "response_type": "code",
        "client_id": client_id,
        "redirect_uri": REDIRECT,
        "scope": SCOPE,
        "state": secrets.token_hex(4),
        "aud": f"{base_url}/fhir",
        "code_challenge": challenge.rstrip(b"=").decode(),
        "code_challenge_method": "S256",
    }
    with httpx.Client(base_url=base_url, timeout=60) as http:
        started = http.get("/oauth/authorize?" + urlencode(params))
        if started.status_code != 303:
            raise RuntimeError(f"authorize: {started.status_code} {started.text[:200]}")
        page = http.get(started.headers["location"]).text
        signed = http.post(
            "/oauth/signin",
            data={
                "csrf_token": _hidden(page, "csrf_token"),
                "request": _hidden(page, "request"),
                "mode": "activate",
                "access_code": login,
                "birth_date": BIRTH_DATE,
                "passphrase": PASSPHRASE,
            },
        )
        if signed.status_code != 303:
            raise RuntimeError(f"sign-in: {signed.status_code} {signed.text[:200]}")
        consent = http.get(signed.headers["location"]).text
        approved = http.post(
            "/oauth/consent",
            data={
                "csrf_token": _hidden(consent, "csrf_token"),
                "request": _hidden(consent, "request"),
                "decision": "approve",
                "scope": re.findall(r'name="scope" value="([^"]*)"', consent),
            },
        )
        answer = parse_qs(urlsplit(approved.headers.get("location", "")).query)
        if "code" not in answer:
            raise RuntimeError(f"consent: {approved.status_code} {approved.text[:200]}")
        token = http.post(
            "/oauth/token",
            data={
                "grant_type": "authorization_code",
                "code": answer["code"][0],
                "redirect_uri": REDIRECT,
                "code_verifier": verifier,
                "client_id": client_id,
            },
        )
        token.raise_for_status()
        result: dict[str, Any] = token.json()
        return result
