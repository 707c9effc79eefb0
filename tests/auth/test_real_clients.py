"""Real HTTP through `gateway serve`, with OAuth clients we did not write.

authlib's OAuth2Client (PKCE) and the SMART project's own ``fhirclient``
complete standalone launches; the sign-in and consent pages are driven by
form posts, as a browser would send them.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from authlib.common.security import generate_token
from authlib.integrations.httpx_client import OAuth2Client
from fhirclient import client as smart_client
from fhirclient.models.imagingstudy import ImagingStudy

from fixtures.generate import BENCH_PATIENT_ID
from gateway.auth.clients import ClientKind
from gateway.auth.service import AuthServices
from gateway.store.database import Database
from gateway.store.patients import PatientIndex
from tests.conftest import make_settings, serve_gateway

pytestmark = pytest.mark.slow
REDIRECT = "http://127.0.0.1:9/callback"  # never contacted: the test reads the redirect
PASSPHRASE = "a passphrase for tests"


def hidden(html: str, name: str) -> str:
    found = re.search(rf'name="{name}" value="([^"]*)"', html)
    assert found, f"no {name} in the page"
    return found.group(1)


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory, embedded_data_dir: Path
) -> Iterator[dict[str, Any]]:
    workdir = tmp_path_factory.mktemp("real-oauth")
    with serve_gateway(workdir, data_dir=str(embedded_data_dir), auth_required="true") as base:
        settings = make_settings(
            embedded_data_dir,
            database_url=f"sqlite+aiosqlite:///{workdir / 'gateway.db'}",
            public_url=base,
            auth_required=True,
        )

        async def prepare() -> dict[str, Any]:
            database = Database(settings.effective_database_url)
            auth = AuthServices.build(settings, database.sessions)
            try:
                index = PatientIndex(database.sessions)
                key = ("HOSP-A", BENCH_PATIENT_ID)
                fhir_id = (await index.ids_for([key]))[key]
                account = await auth.accounts.enroll_patient(fhir_id, "1961-04-12", "Jane Doe")
                await auth.accounts.activate(account.login, "1961-04-12", PASSPHRASE)
                app = await auth.clients.add(
                    name="Real client", kind=ClientKind.public, redirect_uris=[REDIRECT]
                )
                return {
                    "base": base,
                    "code": account.login,
                    "patient": fhir_id,
                    "client_id": app.client.client_id,
                }
            finally:
                await auth.aclose()
                await database.dispose()

        yield asyncio.run(prepare())


def sign_in_and_consent(authorize_url: str, code: str) -> str:
    """What a person does in the browser; returns the URL the app is sent back to."""
    with httpx.Client(follow_redirects=False, timeout=10) as browser:
        started = browser.get(authorize_url)
        assert started.status_code == 303, started.text
        page = browser.get(started.headers["location"]).text
        signed = browser.post(
            started.headers["location"].split("?")[0],
            data={
                "csrf_token": hidden(page, "csrf_token"),
                "request": hidden(page, "request"),
                "mode": "patient",
                "access_code": code,
                "passphrase": PASSPHRASE,
            },
        )
        assert signed.status_code == 303, signed.text
        consent = browser.get(signed.headers["location"]).text
        chosen = re.findall(r'name="scope" value="([^"]*)"', consent)
        approved = browser.post(
            signed.headers["location"].split("?")[0],
            data={
                "csrf_token": hidden(consent, "csrf_token"),
                "request": hidden(consent, "request"),
                "decision": "approve",
                "scope": chosen,
            },
        )
        assert approved.status_code == 302
        return str(approved.headers["location"])


def test_authlib_client_with_pkce(server: dict[str, Any]) -> None:
    base = server["base"]
    config = httpx.get(f"{base}/fhir/.well-known/smart-configuration").json()
    scope = "launch/patient openid fhirUser offline_access patient/ImagingStudy.rs"
    with OAuth2Client(
        server["client_id"],
        redirect_uri=REDIRECT,
        scope=scope,
        code_challenge_method="S256",
    ) as oauth:
        verifier = generate_token(64)
        url, state = oauth.create_authorization_url(
            config["authorization_endpoint"], code_verifier=verifier, aud=f"{base}/fhir"
        )
        back = sign_in_and_consent(url, server["code"])
        assert f"state={state}" in back
        token = oauth.fetch_token(
            config["token_endpoint"], authorization_response=back, code_verifier=verifier
        )
        assert token["patient"] == server["patient"] and token["refresh_token"]
        studies = oauth.get(f"{base}/fhir/ImagingStudy", params={"_count": 50}).json()
        assert studies["total"] == 10
        refreshed = oauth.refresh_token(config["token_endpoint"])
        assert refreshed["access_token"] != token["access_token"]
        assert oauth.get(f"{base}/fhir/ImagingStudy").status_code == 200
        revoked = httpx.post(
            config["revocation_endpoint"],
            data={"token": refreshed["refresh_token"], "client_id": server["client_id"]},
        )
        assert revoked.status_code == 200
        assert oauth.get(f"{base}/fhir/ImagingStudy").status_code == 401


def test_fhirclient_standalone_launch(server: dict[str, Any]) -> None:
    base = server["base"]
    smart = smart_client.FHIRClient(
        settings={
            "app_id": server["client_id"],
            "api_base": f"{base}/fhir",
            "redirect_uri": REDIRECT,
            "scope": "launch/patient openid fhirUser patient/ImagingStudy.rs patient/Patient.rs",
        }
    )
    assert not smart.ready
    back = sign_in_and_consent(smart.authorize_url, server["code"])
    smart.handle_callback(back)
    assert smart.ready and smart.patient_id == server["patient"]
    patient = smart.patient
    assert patient is not None and patient.id == server["patient"]
    search = ImagingStudy.where(struct={"patient": server["patient"]})
    studies = list(search.perform_resources_iter(smart.server))
    assert len(studies) == 10
