"""Standalone and EHR launches through the sign-in and consent pages (form posts, in-process)."""

from __future__ import annotations

import base64
import hashlib
import re
import secrets
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import pytest
from fhir.resources.R4B.practitioner import Practitioner
from joserfc import jwt
from joserfc.jwk import KeySet
from sqlalchemy import select

from fixtures.generate import BENCH_PATIENT_ID
from gateway.auth.clients import ClientKind
from gateway.store.models import Grant
from tests.auth.test_oauth_api import Harness, bearer
from tests.auth.test_oauth_api import harness as harness

REDIRECT = "https://app.example/callback"
PASSPHRASE = "correct horse battery"


def pkce() -> tuple[str, str]:
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest())
    return verifier, challenge.rstrip(b"=").decode()


def hidden(html: str, name: str) -> str:
    found = re.search(rf'name="{name}" value="([^"]*)"', html)
    assert found, f"no {name} in page"
    return found.group(1)


def patient_fhir_id(harness: Harness) -> str:
    system = harness.backend_token("system/*.rs")
    found = harness.client.get(
        f"/fhir/Patient?identifier={BENCH_PATIENT_ID}", headers=bearer(system)
    ).json()
    return str(found["entry"][0]["resource"]["id"])


@pytest.fixture(scope="module")
def patient(harness: Harness) -> dict[str, str]:
    fhir_id = patient_fhir_id(harness)
    account = harness.call(
        harness.services.auth.accounts.enroll_patient, fhir_id, "1961-04-12", "Jane Doe"
    )
    return {"code": account.login, "fhir_id": fhir_id}


@pytest.fixture(scope="module")
def app_id(harness: Harness) -> str:
    created = harness.call(
        harness.services.auth.clients.add,
        name="Image Viewer",
        kind=ClientKind.public,
        redirect_uris=[REDIRECT],
    )
    return str(created.client.client_id)


def authorize_params(app_id: str, challenge: str, **overrides: str) -> dict[str, str]:
    return {
        "response_type": "code",
        "client_id": app_id,
        "redirect_uri": REDIRECT,
        "scope": "launch/patient openid fhirUser offline_access patient/ImagingStudy.rs "
        "patient/DocumentReference.rs",
        "state": "st-" + secrets.token_hex(4),
        "aud": "https://gateway.example/fhir",
        "code_challenge": challenge,
        "code_challenge_method": "S256",
        "nonce": "nonce-1",
        **overrides,
    }


def follow_to_consent(harness: Harness, params: dict[str, str], patient: dict[str, str]) -> str:
    """Authorize, then sign in (activating on first use); returns the consent page."""
    client = harness.client
    client.cookies.clear()
    started = client.get("/oauth/authorize?" + urlencode(params), follow_redirects=False)
    assert started.status_code == 303, started.text
    signin_url = started.headers["location"]
    assert "/oauth/signin?request=" in signin_url
    page = client.get(signin_url).text
    form = {
        "csrf_token": hidden(page, "csrf_token"),
        "request": hidden(page, "request"),
    }
    signed = client.post(
        "/oauth/signin",
        data={**form, "mode": "patient", "access_code": patient["code"], "passphrase": PASSPHRASE},
        follow_redirects=False,
    )
    if signed.status_code == 401:  # first time: activate
        signed = client.post(
            "/oauth/signin",
            data={
                **form,
                "mode": "activate",
                "access_code": patient["code"],
                "birth_date": "1961-04-12",
                "passphrase": PASSPHRASE,
            },
            follow_redirects=False,
        )
    assert signed.status_code == 303, signed.text
    return client.get(signed.headers["location"]).text


def redeem(harness: Harness, code: str, verifier: str, client_id: str) -> Any:
    """The token endpoint's answer to a code (redirected to ``REDIRECT``)."""
    return harness.client.post(
        "/oauth/token",
        data={
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": REDIRECT,
            "code_verifier": verifier,
            "client_id": client_id,
        },
    )


def approve(harness: Harness, consent_page: str, untick: tuple[str, ...] = ()) -> dict[str, Any]:
    scopes = re.findall(r'name="scope" value="([^"]*)"', consent_page)
    answer = harness.client.post(
        "/oauth/consent",
        data={
            "csrf_token": hidden(consent_page, "csrf_token"),
            "request": hidden(consent_page, "request"),
            "decision": "approve",
            "scope": [s for s in scopes if s not in untick],
        },
        follow_redirects=False,
    )
    assert answer.status_code == 302
    location = answer.headers["location"]
    assert location.startswith(REDIRECT + "?")
    return {k: v[0] for k, v in parse_qs(urlsplit(location).query).items()}


def test_standalone_patient_launch(harness: Harness, patient: dict[str, str], app_id: str) -> None:
    verifier, challenge = pkce()
    params = authorize_params(app_id, challenge)
    consent_page = follow_to_consent(harness, params, patient)
    assert "Image Viewer" in consent_page and "Read and search your imaging studies" in consent_page
    # N20: the user unticks documents; the token must not carry them.
    redirected = approve(harness, consent_page, untick=("patient/DocumentReference.rs",))
    assert redirected["state"] == params["state"]
    token = redeem(harness, redirected["code"], verifier, app_id)
    assert token.status_code == 200, token.text
    assert token.headers["cache-control"] == "no-store" and token.headers["pragma"] == "no-cache"
    body = token.json()
    assert body["patient"] == patient["fhir_id"] and body["need_patient_banner"] is True
    assert "patient/DocumentReference.rs" not in body["scope"].split()
    assert "patient/ImagingStudy.rs" in body["scope"].split()
    assert body["refresh_token"] and isinstance(body["expires_in"], int)
    assert harness.client.get(
        body["smart_style_url"].removeprefix("https://gateway.example")
    ).json()
    keys = KeySet.import_key_set(harness.client.get("/oauth/jwks").json())
    header = jwt.decode(body["id_token"], keys)
    claims = header.claims
    assert header.header["alg"] == "RS256" and header.header["kid"]
    assert claims["iss"] == "https://gateway.example" and claims["aud"] == app_id
    assert claims["nonce"] == "nonce-1"
    assert claims["fhirUser"] == f"https://gateway.example/fhir/Patient/{patient['fhir_id']}"
    # The token reads its fhirUser and its studies, but not documents it was not given.
    me = harness.client.get(f"/fhir/Patient/{patient['fhir_id']}", headers=bearer(body))
    assert me.status_code == 200
    assert harness.client.get("/fhir/ImagingStudy", headers=bearer(body)).status_code == 200
    assert harness.client.get("/fhir/DocumentReference", headers=bearer(body)).status_code == 403
    introspected = harness.client.post(
        "/oauth/introspect", data={"token": body["access_token"]}, headers=bearer(body)
    ).json()
    assert introspected["patient"] == body["patient"] and introspected["scope"] == body["scope"]
    # Refresh: rotated, and a wider scope is refused.
    refreshed = harness.client.post(
        "/oauth/token",
        data={
            "grant_type": "refresh_token",
            "refresh_token": body["refresh_token"],
            "client_id": app_id,
        },
    ).json()
    assert refreshed["refresh_token"] != body["refresh_token"]
    assert set(refreshed["scope"].split()) <= set(body["scope"].split())
    wider = harness.client.post(
        "/oauth/token",
        data={
            "grant_type": "refresh_token",
            "refresh_token": refreshed["refresh_token"],
            "client_id": app_id,
            "scope": "patient/DocumentReference.rs",
        },
    )
    assert wider.status_code == 400 and wider.json()["error"] == "invalid_scope"
    # N1: the code again is exactly 400 invalid_grant.
    again = redeem(harness, redirected["code"], verifier, app_id)
    assert again.status_code == 400 and again.json()["error"] == "invalid_grant"


def test_denial_and_bad_requests(harness: Harness, patient: dict[str, str], app_id: str) -> None:
    _, challenge = pkce()
    params = authorize_params(app_id, challenge)
    consent_page = follow_to_consent(harness, params, patient)
    denied = harness.client.post(
        "/oauth/consent",
        data={
            "csrf_token": hidden(consent_page, "csrf_token"),
            "request": hidden(consent_page, "request"),
            "decision": "deny",
        },
        follow_redirects=False,
    )
    query = parse_qs(urlsplit(denied.headers["location"]).query)
    assert query["error"] == ["access_denied"] and query["state"] == [params["state"]]

    def start(**overrides: str) -> Any:
        return harness.client.get(
            "/oauth/authorize?" + urlencode(authorize_params(app_id, challenge, **overrides)),
            follow_redirects=False,
        )

    # N7 and friends: back to the app with error and the same state.
    for overrides, error in [
        ({"aud": "https://elsewhere.example/fhir"}, "invalid_request"),
        ({"code_challenge_method": "plain"}, "invalid_request"),
        ({"code_challenge": ""}, "invalid_request"),
        ({"response_type": "token"}, "unsupported_response_type"),
        ({"scope": "superpowers"}, "invalid_scope"),
        ({"launch": "no-such-launch", "scope": "launch patient/*.rs"}, "invalid_request"),
    ]:
        response = start(state="keep-me", **overrides)
        assert response.status_code == 302, overrides
        query = parse_qs(urlsplit(response.headers["location"]).query)
        assert query["error"] == [error] and query["state"] == ["keep-me"], overrides
    # The trailing slash and the host's case do not matter for aud.
    assert start(aud="https://GATEWAY.example/fhir/").status_code == 303
    # Unknown client or unregistered redirect: an error page, never a redirect.
    for overrides in ({"client_id": "nobody"}, {"redirect_uri": "https://evil.example/cb"}):
        response = start(**overrides)
        assert response.status_code == 400 and "location" not in response.headers
    # POST works like GET (authorize-post).
    posted = harness.client.post(
        "/oauth/authorize", data=authorize_params(app_id, challenge), follow_redirects=False
    )
    assert posted.status_code == 303


def test_sign_in_failures_and_csrf(harness: Harness, patient: dict[str, str], app_id: str) -> None:
    _, challenge = pkce()
    harness.client.cookies.clear()
    started = harness.client.get(
        "/oauth/authorize?" + urlencode(authorize_params(app_id, challenge)), follow_redirects=False
    )
    page = harness.client.get(started.headers["location"]).text
    form = {"request": hidden(page, "request"), "mode": "patient"}
    no_csrf = harness.client.post(
        "/oauth/signin", data={**form, "access_code": patient["code"], "passphrase": "x"}
    )
    assert no_csrf.status_code == 400
    wrong = harness.client.post(
        "/oauth/signin",
        data={
            **form,
            "csrf_token": hidden(page, "csrf_token"),
            "access_code": patient["code"],
            "passphrase": "wrong passphrase",
        },
    )
    unknown = harness.client.post(
        "/oauth/signin",
        data={
            **form,
            "csrf_token": hidden(page, "csrf_token"),
            "access_code": "99999999",
            "passphrase": "wrong passphrase",
        },
    )
    assert wrong.status_code == unknown.status_code == 401
    # The same words whatever was wrong.
    message = re.search(r'role="alert">([^<]*)<', wrong.text)
    assert message and message.group(1) in unknown.text


def test_ehr_launch(harness: Harness, patient: dict[str, str], app_id: str) -> None:
    ehr_id, ehr_key = harness.backend_client(scope="system/*.rs")
    harness.call(_make_ehr, harness, ehr_id)
    ehr_token = harness.client.post(
        "/oauth/token",
        data={
            "grant_type": "client_credentials",
            "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
            "client_assertion": harness.assertion(ehr_id, ehr_key),
        },
    ).json()
    context = {
        "patient": patient["fhir_id"],
        "fhirContext": [{"reference": "ImagingStudy/1.2.3"}],
        "need_patient_banner": False,
    }
    launched = harness.client.post("/oauth/launch", json=context, headers=bearer(ehr_token))
    assert launched.status_code == 201
    launch = launched.json()["launch"]
    # Only EHR clients launch; a patient's token cannot.
    assert harness.client.post("/oauth/launch", json=context).status_code == 401
    harness.call(
        harness.services.auth.accounts.add_practitioner, "dr.grey", "Grey^Meredith", PASSPHRASE
    )
    verifier, challenge = pkce()
    params = authorize_params(
        app_id, challenge, launch=launch, scope="launch openid fhirUser patient/ImagingStudy.rs"
    )
    harness.client.cookies.clear()
    started = harness.client.get("/oauth/authorize?" + urlencode(params), follow_redirects=False)
    page = harness.client.get(started.headers["location"]).text
    signed = harness.client.post(
        "/oauth/signin",
        data={
            "csrf_token": hidden(page, "csrf_token"),
            "request": hidden(page, "request"),
            "mode": "practitioner",
            "username": "dr.grey",
            "password": PASSPHRASE,
        },
        follow_redirects=False,
    )
    consent_page = harness.client.get(signed.headers["location"]).text
    redirected = approve(harness, consent_page)
    body = redeem(harness, redirected["code"], verifier, app_id).json()
    assert body["patient"] == patient["fhir_id"]
    assert body["fhirContext"] == [{"reference": "ImagingStudy/1.2.3"}]
    assert body["need_patient_banner"] is False
    claims = jwt.decode(
        body["id_token"], KeySet.import_key_set(harness.client.get("/oauth/jwks").json())
    ).claims
    practitioner = claims["fhirUser"].removeprefix("https://gateway.example")
    assert practitioner.startswith("/fhir/Practitioner/")
    me = harness.client.get(practitioner, headers=bearer(body))
    assert me.status_code == 200 and me.json()["name"][0]["family"] == "Grey"
    Practitioner.model_validate(me.json())
    # The launch is single use.
    reused = harness.client.get("/oauth/authorize?" + urlencode(params), follow_redirects=False)
    assert parse_qs(urlsplit(reused.headers["location"]).query)["error"] == ["invalid_request"]


async def _make_ehr(harness: Harness, client_id: str) -> None:
    from gateway.store.models import OAuthClient

    async with harness.services.database.sessions() as session:
        client = await session.get(OAuthClient, client_id)
        assert client is not None
        client.ehr = True
        await session.commit()


async def _end_consent(harness: Harness, client_id: str) -> None:
    async with harness.services.database.sessions() as session:
        for grant in await session.scalars(select(Grant).where(Grant.client_id == client_id)):
            grant.context = {**grant.context, "consent_until": "2000-01-01T00:00:00+00:00"}
        await session.commit()


def test_the_patient_picks_two_studies_for_a_day(harness: Harness, patient: dict[str, str]) -> None:
    app = harness.call(
        harness.services.auth.clients.add,
        name="Second opinion",
        kind=ClientKind.public,
        redirect_uris=[REDIRECT],
    ).client.client_id
    verifier, challenge = pkce()
    params = authorize_params(
        app,
        challenge,
        scope="launch/patient offline_access patient/ImagingStudy.rs patient/DocumentReference.rs",
    )
    consent_page = follow_to_consent(harness, params, patient)
    offered = re.findall(r'name="study" value="([^"]*)"', consent_page)
    assert len(offered) == 10  # the patient's jacket
    assert "report available" in consent_page and "One week" in consent_page
    chosen = offered[:2]
    answer = harness.client.post(
        "/oauth/consent",
        data={
            "csrf_token": hidden(consent_page, "csrf_token"),
            "request": hidden(consent_page, "request"),
            "decision": "approve",
            "scope": re.findall(r'name="scope" value="([^"]*)"', consent_page),
            "studies": "selected",
            "study": [*chosen, "1.2.3.4.5.6.7.8"],  # a UID not in the jacket is ignored
            "duration": "1d",
        },
        follow_redirects=False,
    )
    code = parse_qs(urlsplit(answer.headers["location"]).query)["code"][0]
    token = redeem(harness, code, verifier, app).json()
    assert token["fhirContext"] == [{"reference": f"ImagingStudy/{uid}"} for uid in chosen]
    headers = bearer(token)
    studies = harness.client.get("/fhir/ImagingStudy?_count=50", headers=headers).json()
    assert {e["resource"]["id"] for e in studies["entry"]} == set(chosen)
    qido = harness.client.get("/dicomweb/studies?PatientID=*", headers=headers).json()
    assert {s["0020000D"]["Value"][0] for s in qido} == set(chosen)
    documents = harness.client.get("/fhir/DocumentReference?_count=50", headers=headers).json()
    for entry in documents.get("entry", []):
        related = entry["resource"]["context"]["related"][0]["reference"]
        assert related.removeprefix("ImagingStudy/") in chosen
    other = offered[2]
    assert harness.client.get(f"/fhir/ImagingStudy/{other}", headers=headers).status_code == 404
    assert (
        harness.client.get(f"/dicomweb/studies/{other}/metadata", headers=headers).status_code
        == 404
    )
    # The day is over: the tokens stop, and so does the refresh.
    harness.call(_end_consent, harness, app)
    assert harness.client.get("/fhir/ImagingStudy", headers=headers).status_code == 401
    refreshed = harness.client.post(
        "/oauth/token",
        data={
            "grant_type": "refresh_token",
            "refresh_token": token["refresh_token"],
            "client_id": app,
        },
    )
    assert refreshed.status_code == 400
