"""Who may introspect what (RFC 7662): one app cannot read another app's token.

A confidential client (Basic or a signed assertion) learns about any token, as a
resource server must; a public client naming itself, or a bearer token's holder,
only about tokens issued to that same client. Nobody else gets an answer.
"""

from __future__ import annotations

import base64
from typing import Any

from gateway.auth.client_auth import JWT_BEARER
from gateway.auth.clients import ClientKind
from tests.auth.test_oauth_api import Harness, bearer
from tests.auth.test_oauth_api import harness as harness


def patient_token(harness: Harness) -> dict[str, Any]:
    return harness.patient_token("pid-7", "launch/patient openid fhirUser patient/*.rs")


def introspect(harness: Harness, token: str, **kwargs: Any) -> Any:
    data = {"token": token, **kwargs.pop("data", {})}
    return harness.client.post("/oauth/introspect", data=data, **kwargs)


def test_a_public_client_learns_only_about_its_own_tokens(harness: Harness) -> None:
    theirs, mine = patient_token(harness), patient_token(harness)
    other = introspect(harness, theirs["access_token"], data={"client_id": mine["client_id"]})
    assert other.status_code == 200 and other.json() == {"active": False}
    own = introspect(harness, mine["access_token"], data={"client_id": mine["client_id"]}).json()
    assert own["active"] is True and own["patient"] == "pid-7"


def test_a_bearer_learns_only_about_its_own_clients_tokens(harness: Harness) -> None:
    theirs, mine = patient_token(harness), patient_token(harness)
    other = introspect(harness, theirs["access_token"], headers=bearer(mine))
    assert other.status_code == 200 and other.json() == {"active": False}
    backend = harness.backend_token()
    assert introspect(harness, theirs["access_token"], headers=bearer(backend)).json() == {
        "active": False
    }
    own = introspect(harness, mine["access_token"], headers=bearer(mine)).json()
    assert own["active"] is True and own["client_id"] == mine["client_id"]


def test_confidential_clients_learn_about_any_token(harness: Harness) -> None:
    token = patient_token(harness)
    backend = harness.backend_token()
    by_assertion = introspect(
        harness,
        token["access_token"],
        data={
            "client_assertion_type": JWT_BEARER,
            "client_assertion": harness.assertion(backend["client_id"], backend["key"]),
        },
    ).json()
    assert by_assertion["active"] is True and by_assertion["patient"] == "pid-7"
    symmetric = harness.call(
        harness.services.auth.clients.add,
        name="Resource server",
        kind=ClientKind.symmetric,
        redirect_uris=["https://rs.example/cb"],
    )
    basic = base64.b64encode(f"{symmetric.client.client_id}:{symmetric.secret}".encode()).decode()
    by_basic = introspect(
        harness, token["access_token"], headers={"Authorization": f"Basic {basic}"}
    ).json()
    assert by_basic["active"] is True and by_basic["client_id"] == token["client_id"]


def test_an_unauthenticated_caller_is_401_invalid_client(harness: Harness) -> None:
    token = patient_token(harness)
    for data, headers in (
        ({}, {}),
        ({"client_id": "nobody"}, {}),
        ({"client_id": token["client_id"], "client_secret": "guess"}, {}),
        ({}, {"Authorization": "Basic " + base64.b64encode(b"nobody:secret").decode()}),
    ):
        answer = introspect(harness, token["access_token"], data=data, headers=headers)
        assert answer.status_code == 401, (data, headers)
        assert answer.json()["error"] == "invalid_client"
        assert "active" not in answer.json()
        assert answer.headers["www-authenticate"]
    stale = introspect(harness, token["access_token"], headers={"Authorization": "Bearer x"})
    assert stale.status_code == 401 and stale.json()["error"] == "invalid_token"


def test_discovery_names_the_introspection_methods(harness: Harness) -> None:
    config = harness.client.get("/fhir/.well-known/smart-configuration").json()
    assert config["introspection_endpoint_auth_methods_supported"] == [
        "client_secret_basic",
        "private_key_jwt",
        "none",
        "Bearer",
    ]
    assert config["revocation_endpoint_auth_methods_supported"] == [
        "client_secret_basic",
        "private_key_jwt",
        "none",
    ]
