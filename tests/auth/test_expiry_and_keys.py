"""Expired codes and tokens, JWKS fetched by URL (cached as the server says), registration off."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from joserfc import jwt
from joserfc.jwk import RSAKey
from sqlalchemy import update
from starlette.testclient import TestClient

from gateway.app import create_app
from gateway.auth.client_auth import JWT_BEARER
from gateway.auth.clients import ClientKind
from gateway.auth.secrets import digest
from gateway.auth.tokens import s256
from gateway.services import Services
from gateway.store.models import AuthorizationCode, Token, utcnow
from tests.auth.test_oauth_api import Harness, bearer
from tests.auth.test_oauth_api import harness as harness
from tests.conftest import make_settings, migrate


async def _expire_tokens(harness: Harness, access_token: str) -> None:
    async with harness.services.database.sessions() as session:
        await session.execute(
            update(Token)
            .where(Token.token_hash == digest(access_token))
            .values(expires_at=utcnow() - timedelta(seconds=1))
        )
        await session.commit()


def test_an_expired_access_token_is_401_everywhere(harness: Harness) -> None:
    token = harness.backend_token("system/*.rs")
    assert harness.client.get("/fhir/ImagingStudy", headers=bearer(token)).status_code == 200
    harness.call(_expire_tokens, harness, token["access_token"])
    for path in ("/fhir/ImagingStudy", "/dicomweb/studies", "/fhir/Patient"):
        response = harness.client.get(path, headers=bearer(token))
        assert response.status_code == 401, path
        assert 'error="invalid_token"' in response.headers["www-authenticate"]
    introspected = harness.client.post(
        "/oauth/introspect",
        data={
            "token": token["access_token"],
            "client_assertion_type": JWT_BEARER,
            "client_assertion": harness.assertion(token["client_id"], token["key"]),
        },
    )
    assert introspected.json() == {"active": False}


async def _expire_code(harness: Harness) -> None:
    async with harness.services.database.sessions() as session:
        await session.execute(
            update(AuthorizationCode).values(expires_at=utcnow() - timedelta(seconds=1))
        )
        await session.commit()


def test_an_expired_code_is_400_invalid_grant(harness: Harness) -> None:
    created = harness.call(
        harness.services.auth.clients.add,
        name="Slow app",
        kind=ClientKind.public,
        redirect_uris=["https://slow.example/cb"],
    )
    verifier = uuid.uuid4().hex * 2
    code = harness.call(
        harness.services.auth.tokens.create_code,
        client_id=created.client.client_id,
        account_id=None,
        scope=["patient/*.rs"],
        context={},
        redirect_uri="https://slow.example/cb",
        code_challenge=s256(verifier),
        nonce=None,
    )
    harness.call(_expire_code, harness)
    response = harness.client.post(
        "/oauth/token",
        data={
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": "https://slow.example/cb",
            "code_verifier": verifier,
            "client_id": created.client.client_id,
        },
    )
    assert response.status_code == 400 and response.json()["error"] == "invalid_grant"


class JwksServer:
    """A client's JWKS endpoint on loopback, counting how often it is asked."""

    def __init__(self, jwks: dict[str, Any], cache_control: str) -> None:
        owner = self
        self.hits = 0
        self.jwks = jwks

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                owner.hits += 1
                body = json.dumps(owner.jwks).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Cache-Control", cache_control)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                return

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/jwks.json"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()


@pytest.fixture
def jwks_server() -> Iterator[JwksServer]:
    key = RSAKey.generate_key(2048, parameters={"kid": "by-url"})
    server = JwksServer({"keys": [key.as_dict(private=False)]}, "max-age=600")
    server.key = key  # type: ignore[attr-defined]
    yield server
    server.close()


def _assertion(client_id: str, key: RSAKey, token_url: str, kid: str | None = None) -> str:
    claims = {
        "iss": client_id,
        "sub": client_id,
        "aud": token_url,
        "exp": int(time.time()) + 200,
        "jti": uuid.uuid4().hex,
    }
    header = {"alg": "RS384", "kid": kid or key.kid, "typ": "JWT"}
    return jwt.encode(header, claims, key, algorithms=["RS384"])


def test_jwks_by_url_is_cached_as_the_server_says(
    harness: Harness, jwks_server: JwksServer
) -> None:
    created = harness.call(
        harness.services.auth.clients.add,
        name="By URL",
        kind=ClientKind.backend,
        jwks_url=jwks_server.url,
        scope="system/*.rs",
        operator=True,
    )
    client_id = created.client.client_id
    key = jwks_server.key  # type: ignore[attr-defined]

    def ask(assertion: str, **headers: str) -> Any:
        return harness.client.post(
            "/oauth/token",
            data={
                "grant_type": "client_credentials",
                "client_assertion_type": JWT_BEARER,
                "client_assertion": assertion,
            },
        )

    for _ in range(3):
        assert ask(_assertion(client_id, key, harness.token_url)).status_code == 200
    assert jwks_server.hits == 1  # max-age=600: fetched once
    # An unknown kid makes the server look again once (keys rotate), then refuse.
    unknown = ask(_assertion(client_id, key, harness.token_url, kid="rotated-away"))
    assert unknown.status_code == 401 and jwks_server.hits == 2
    # A jku header that is not the registered URL is refused.
    claims = {
        "iss": client_id,
        "sub": client_id,
        "aud": harness.token_url,
        "exp": int(time.time()) + 200,
        "jti": uuid.uuid4().hex,
    }
    jku = jwt.encode(
        {"alg": "RS384", "kid": key.kid, "jku": "https://evil.example/jwks"},
        claims,
        key,
        algorithms=["RS384"],
    )
    assert ask(jku).status_code == 401


def test_dynamic_registration_can_be_turned_off(tmp_path: Path, embedded_data_dir: Path) -> None:
    settings = make_settings(
        embedded_data_dir,
        database_url=f"sqlite+aiosqlite:///{tmp_path / 'g.db'}",
        auth_required=True,
        dynamic_registration=False,
    )
    migrate(settings)
    with TestClient(create_app(settings, services=Services.build(settings))) as client:
        refused = client.post("/oauth/register", json={"redirect_uris": ["https://a.example/cb"]})
        assert refused.status_code == 403
