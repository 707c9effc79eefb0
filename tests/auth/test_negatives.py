"""The SMART checklist's negative list, N1 to N20, one test each, with the answer each must get.

The ones Inferno does not test but the checklist requires follow at the end.
"""

from __future__ import annotations

import base64
import re
import secrets
import time
import uuid
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import pytest
from joserfc import jwt

from fixtures.generate import BENCH_PATIENT_ID
from gateway.auth.client_auth import JWT_BEARER
from gateway.auth.clients import ClientKind
from gateway.auth.tokens import s256
from tests.auth.test_oauth_api import Harness, bearer
from tests.auth.test_oauth_api import harness as harness

REDIRECT = "https://negatives.example/cb"
PASSPHRASE = "negative tests passphrase"


@pytest.fixture(scope="module")
def setup(harness: Harness) -> dict[str, Any]:
    system = harness.backend_token("system/*.rs")
    found = harness.client.get(
        f"/fhir/Patient?identifier={BENCH_PATIENT_ID}", headers=bearer(system)
    ).json()
    patient = found["entry"][0]["resource"]["id"]
    account = harness.call(
        harness.services.auth.accounts.enroll_patient, patient, "1961-04-12", "Jane Doe"
    )
    harness.call(harness.services.auth.accounts.activate, account.login, "1961-04-12", PASSPHRASE)
    public = harness.call(
        harness.services.auth.clients.add,
        name="Negatives app",
        kind=ClientKind.public,
        redirect_uris=[REDIRECT],
    ).client.client_id
    symmetric = harness.call(
        harness.services.auth.clients.add,
        name="Negatives portal",
        kind=ClientKind.symmetric,
        redirect_uris=[REDIRECT],
    )
    return {
        "patient": patient,
        "code": account.login,
        "public": public,
        "symmetric": symmetric.client.client_id,
        "secret": symmetric.secret,
    }


def hidden(html: str, name: str) -> str:
    found = re.search(rf'name="{name}" value="([^"]*)"', html)
    assert found
    return found.group(1)


def launch(
    harness: Harness,
    setup: dict[str, Any],
    client_id: str,
    scope: str,
    untick: tuple[str, ...] = (),
    aud: str = "https://gateway.example/fhir",
) -> dict[str, str]:
    """A standalone launch through the pages; returns code, verifier, challenge, state."""
    verifier = secrets.token_urlsafe(48)
    challenge = s256(verifier)
    state = secrets.token_hex(8)
    params = {
        "response_type": "code",
        "client_id": client_id,
        "redirect_uri": REDIRECT,
        "scope": scope,
        "state": state,
        "aud": aud,
        "code_challenge": challenge,
        "code_challenge_method": "S256",
    }
    client = harness.client
    client.cookies.clear()
    started = client.get("/oauth/authorize?" + urlencode(params), follow_redirects=False)
    if started.status_code == 302:  # an error sent back to the app
        return {k: v[0] for k, v in parse_qs(urlsplit(started.headers["location"]).query).items()}
    page = client.get(started.headers["location"]).text
    signed = client.post(
        "/oauth/signin",
        data={
            "csrf_token": hidden(page, "csrf_token"),
            "request": hidden(page, "request"),
            "mode": "patient",
            "access_code": setup["code"],
            "passphrase": PASSPHRASE,
        },
        follow_redirects=False,
    )
    consent = client.get(signed.headers["location"]).text
    offered = re.findall(r'name="scope" value="([^"]*)"', consent)
    answer = client.post(
        "/oauth/consent",
        data={
            "csrf_token": hidden(consent, "csrf_token"),
            "request": hidden(consent, "request"),
            "decision": "approve",
            "scope": [s for s in offered if s not in untick],
        },
        follow_redirects=False,
    )
    back = {k: v[0] for k, v in parse_qs(urlsplit(answer.headers["location"]).query).items()}
    return {**back, "verifier": verifier, "challenge": challenge, "sent_state": state}


def exchange(harness: Harness, client_id: str, code: str, verifier: str | None) -> Any:
    data = {
        "grant_type": "authorization_code",
        "code": code,
        "redirect_uri": REDIRECT,
        "client_id": client_id,
    }
    if verifier is not None:
        data["code_verifier"] = verifier
    return harness.client.post("/oauth/token", data=data)


SCOPE = "launch/patient openid fhirUser offline_access patient/ImagingStudy.rs"


@pytest.fixture
def granted(harness: Harness, setup: dict[str, Any]) -> Iterator[dict[str, Any]]:
    back = launch(harness, setup, setup["public"], SCOPE)
    token = exchange(harness, setup["public"], back["code"], back["verifier"])
    assert token.status_code == 200
    yield token.json()


def test_n01_unknown_code_is_exactly_400_invalid_grant(harness: Harness, setup: dict) -> None:
    response = exchange(harness, setup["public"], "no-such-code", "x" * 43)
    assert response.status_code == 400 and response.json()["error"] == "invalid_grant"


def test_n02_unknown_client_or_wrong_secret_is_401(harness: Harness, setup: dict) -> None:
    back = launch(harness, setup, setup["symmetric"], SCOPE)
    data = {
        "grant_type": "authorization_code",
        "code": back["code"],
        "redirect_uri": REDIRECT,
        "code_verifier": back["verifier"],
    }
    wrong = base64.b64encode(f"{setup['symmetric']}:not-the-secret".encode()).decode()
    response = harness.client.post(
        "/oauth/token", data=data, headers={"Authorization": f"Basic {wrong}"}
    )
    assert response.status_code == 401 and response.json()["error"] == "invalid_client"
    unknown = exchange(harness, "no-such-client", back["code"], back["verifier"])
    assert unknown.status_code == 401
    right = base64.b64encode(f"{setup['symmetric']}:{setup['secret']}".encode()).decode()
    fresh = launch(harness, setup, setup["symmetric"], SCOPE)
    ok = harness.client.post(
        "/oauth/token",
        data={**data, "code": fresh["code"], "code_verifier": fresh["verifier"]},
        headers={"Authorization": f"Basic {right}"},
    )
    assert ok.status_code == 200


def test_n03_missing_code_verifier(harness: Harness, setup: dict) -> None:
    back = launch(harness, setup, setup["public"], SCOPE)
    assert exchange(harness, setup["public"], back["code"], None).status_code in (400, 401)


def test_n04_blank_code_verifier(harness: Harness, setup: dict) -> None:
    back = launch(harness, setup, setup["public"], SCOPE)
    assert exchange(harness, setup["public"], back["code"], "").status_code in (400, 401)


def test_n05_wrong_code_verifier(harness: Harness, setup: dict) -> None:
    back = launch(harness, setup, setup["public"], SCOPE)
    wrong = secrets.token_urlsafe(48)
    assert exchange(harness, setup["public"], back["code"], wrong).status_code in (400, 401)


def test_n06_challenge_sent_as_verifier(harness: Harness, setup: dict) -> None:
    back = launch(harness, setup, setup["public"], SCOPE)
    response = exchange(harness, setup["public"], back["code"], back["challenge"])
    assert response.status_code in (400, 401)


def test_n07_wrong_aud_gets_no_code(harness: Harness, setup: dict) -> None:
    back = launch(harness, setup, setup["public"], SCOPE, aud="https://other.example/fhir")
    assert "code" not in back and back["error"] == "invalid_request"
    assert back["state"]


def test_n08_unknown_refresh_token(harness: Harness, setup: dict) -> None:
    response = harness.client.post(
        "/oauth/token",
        data={"grant_type": "refresh_token", "refresh_token": "nope", "client_id": setup["public"]},
    )
    assert response.status_code in (400, 401)


def test_n09_read_without_a_token_is_exactly_401(harness: Harness, setup: dict) -> None:
    response = harness.client.get(f"/fhir/Patient/{setup['patient']}")
    assert response.status_code == 401
    assert response.headers["www-authenticate"].startswith("Bearer")


def test_n10_type_not_granted(harness: Harness, granted: dict) -> None:
    response = harness.client.get("/fhir/DocumentReference", headers=bearer(granted))
    assert response.status_code in (401, 403)


def test_n11_revoked_access_token(harness: Harness, setup: dict, granted: dict) -> None:
    revoked = harness.client.post(
        "/oauth/revoke", data={"token": granted["access_token"], "client_id": setup["public"]}
    )
    assert revoked.status_code == 200
    response = harness.client.get(f"/fhir/Patient/{setup['patient']}", headers=bearer(granted))
    assert response.status_code in (401, 403, 404)


def test_n12_revoked_refresh_token(harness: Harness, setup: dict, granted: dict) -> None:
    harness.client.post(
        "/oauth/revoke", data={"token": granted["refresh_token"], "client_id": setup["public"]}
    )
    response = harness.client.post(
        "/oauth/token",
        data={
            "grant_type": "refresh_token",
            "refresh_token": granted["refresh_token"],
            "client_id": setup["public"],
        },
    )
    assert response.status_code in (400, 401)


def test_n13_introspecting_an_invalid_token(harness: Harness, granted: dict) -> None:
    response = harness.client.post(
        "/oauth/introspect", data={"token": "invalid_token_value"}, headers=bearer(granted)
    )
    assert response.status_code == 200 and response.json() == {"active": False}


def _backend_form(harness: Harness, **overrides: str) -> dict[str, str]:
    client_id, key = harness.backend_client()
    claims: dict[str, Any] = {
        "iss": client_id,
        "sub": client_id,
        "aud": harness.token_url,
        "exp": int(time.time()) + 240,
        "jti": uuid.uuid4().hex,
    }
    claims.update({k: v for k, v in overrides.items() if k in ("iss",)})
    assertion = jwt.encode(
        {"alg": "RS384", "kid": key.kid, "typ": "JWT"}, claims, key, algorithms=["RS384"]
    )
    form = {
        "grant_type": "client_credentials",
        "scope": "system/*.rs",
        "client_assertion_type": JWT_BEARER,
        "client_assertion": assertion,
    }
    form.update({k: v for k, v in overrides.items() if k in form})
    return form


def test_n14_unknown_grant_type_is_exactly_400(harness: Harness) -> None:
    form = _backend_form(harness, grant_type="not_a_grant_type")
    response = harness.client.post("/oauth/token", data=form)
    assert response.status_code == 400 and response.json()["error"] == "unsupported_grant_type"


def test_n15_unknown_assertion_type(harness: Harness) -> None:
    form = _backend_form(harness, client_assertion_type="not_an_assertion_type")
    assert harness.client.post("/oauth/token", data=form).status_code in (400, 401)


def test_n16_assertion_with_a_bad_iss(harness: Harness) -> None:
    form = _backend_form(harness, iss="not_a_valid_iss")
    assert harness.client.post("/oauth/token", data=form).status_code in (400, 401)


GRANULAR = "patient/ImagingStudy.rs?modality=CT"


def test_n17_granular_read_and_search(harness: Harness, setup: dict) -> None:
    back = launch(harness, setup, setup["public"], f"launch/patient {GRANULAR}")
    token = exchange(harness, setup["public"], back["code"], back["verifier"]).json()
    studies = harness.client.get("/fhir/ImagingStudy?_count=100", headers=bearer(token)).json()
    for entry in studies.get("entry", []):
        assert any(m["code"] == "CT" for m in entry["resource"]["modality"])
    system = harness.backend_token("system/*.rs")
    every = harness.client.get(
        f"/fhir/ImagingStudy?patient={setup['patient']}&_count=100", headers=bearer(system)
    ).json()
    not_ct = next(
        e["resource"]["id"]
        for e in every["entry"]
        if not any(m["code"] == "CT" for m in e["resource"]["modality"])
    )
    read = harness.client.get(f"/fhir/ImagingStudy/{not_ct}", headers=bearer(token))
    assert read.status_code != 200


def test_n18_granular_grant_is_not_widened(harness: Harness, setup: dict) -> None:
    back = launch(harness, setup, setup["public"], f"launch/patient {GRANULAR}")
    token = exchange(harness, setup["public"], back["code"], back["verifier"]).json()
    granted = token["scope"].split()
    assert GRANULAR in granted
    assert not any(
        s.startswith(("patient/ImagingStudy.", "patient/*.")) and "?" not in s for s in granted
    )


def test_n19_refresh_scope_is_a_subset(harness: Harness, setup: dict, granted: dict) -> None:
    response = harness.client.post(
        "/oauth/token",
        data={
            "grant_type": "refresh_token",
            "refresh_token": granted["refresh_token"],
            "client_id": setup["public"],
        },
    )
    assert set(response.json()["scope"].split()) <= set(granted["scope"].split())


def test_n20_an_unticked_permission_is_absent(harness: Harness, setup: dict) -> None:
    back = launch(
        harness,
        setup,
        setup["public"],
        "launch/patient patient/ImagingStudy.rs patient/Patient.rs",
        untick=("patient/Patient.rs",),
    )
    token = exchange(harness, setup["public"], back["code"], back["verifier"]).json()
    assert "patient/Patient.rs" not in token["scope"].split()


# -- required though Inferno does not test them ------------------------------------


def test_a_code_used_twice_is_400_and_withdraws_its_tokens(harness: Harness, setup: dict) -> None:
    back = launch(harness, setup, setup["public"], SCOPE)
    first = exchange(harness, setup["public"], back["code"], back["verifier"]).json()
    again = exchange(harness, setup["public"], back["code"], back["verifier"])
    assert again.status_code == 400 and again.json()["error"] == "invalid_grant"
    assert harness.client.get("/fhir/ImagingStudy", headers=bearer(first)).status_code == 401


def test_a_redirect_uri_differing_at_the_token_endpoint_is_400(
    harness: Harness, setup: dict
) -> None:
    back = launch(harness, setup, setup["public"], SCOPE)
    response = harness.client.post(
        "/oauth/token",
        data={
            "grant_type": "authorization_code",
            "code": back["code"],
            "redirect_uri": REDIRECT + "/other",
            "code_verifier": back["verifier"],
            "client_id": setup["public"],
        },
    )
    assert response.status_code == 400 and response.json()["error"] == "invalid_grant"


def test_a_code_of_client_a_redeemed_by_client_b_is_400(harness: Harness, setup: dict) -> None:
    other = harness.call(
        harness.services.auth.clients.add,
        name="Client B",
        kind=ClientKind.public,
        redirect_uris=[REDIRECT],
    ).client.client_id
    back = launch(harness, setup, setup["public"], SCOPE)
    response = exchange(harness, other, back["code"], back["verifier"])
    assert response.status_code == 400 and response.json()["error"] == "invalid_grant"


def test_a_client_using_another_method_than_registered_is_401(
    harness: Harness, setup: dict
) -> None:
    back = launch(harness, setup, setup["symmetric"], SCOPE)
    response = exchange(harness, setup["symmetric"], back["code"], back["verifier"])
    assert response.status_code == 401 and response.json()["error"] == "invalid_client"


def test_introspection_by_a_symmetric_client_with_basic(
    harness: Harness, setup: dict, granted: dict
) -> None:
    basic = base64.b64encode(f"{setup['symmetric']}:{setup['secret']}".encode()).decode()
    response = harness.client.post(
        "/oauth/introspect",
        data={"token": granted["access_token"]},
        headers={"Authorization": f"Basic {basic}"},
    )
    body = response.json()
    assert body["active"] is True and body["patient"] == granted["patient"]
    assert body["scope"] == granted["scope"]
