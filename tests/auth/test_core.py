"""The authorization server core on a real (SQLite) database: accounts, codes, tokens, clients."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import pytest
from authlib.oauth2.rfc6749.errors import InvalidClientError, InvalidGrantError, InvalidScopeError
from joserfc import jwt
from joserfc.jwk import ECKey, RSAKey

from gateway.auth.accounts import Accounts
from gateway.auth.client_auth import JWT_BEARER, ClientAuthenticator, JwksCache
from gateway.auth.clients import ClientKind, ClientRegistry, RegistrationError
from gateway.auth.keys import KeyStore
from gateway.auth.tokens import TokenService, s256
from gateway.store.database import Database
from tests.conftest import make_settings

pytestmark = pytest.mark.anyio
TOKEN_URL = "http://127.0.0.1:8080/oauth/token"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def database(tmp_path: Path):  # type: ignore[no-untyped-def]
    db = Database(f"sqlite+aiosqlite:///{tmp_path / 'auth.db'}")
    await db.upgrade()
    yield db
    await db.dispose()


@pytest.fixture
def tokens(database: Database, tmp_path: Path) -> TokenService:
    settings = make_settings(tmp_path)
    return TokenService(database.sessions, settings, KeyStore(database.sessions))


async def test_patient_activation_sign_in_and_lockout(database: Database) -> None:
    accounts = Accounts(database.sessions)
    account = await accounts.enroll_patient("pid-1", "1970-01-02")
    assert len(account.login) == 8 and account.login.isdigit()
    assert await accounts.activate(account.login, "1970-01-03", "a long passphrase") is None
    activated = await accounts.activate(account.login, "1970-01-02", "a long passphrase")
    assert activated is not None
    # Activation happens once; then the passphrase is the way in.
    assert await accounts.activate(account.login, "1970-01-02", "another passphrase") is None
    assert (await accounts.sign_in(account.login, "a long passphrase")) is not None
    for _ in range(5):
        assert await accounts.sign_in(account.login, "wrong passphrase") is None
    # Locked: even the right passphrase is refused, with the same answer.
    assert await accounts.sign_in(account.login, "a long passphrase") is None
    assert await accounts.sign_in("00000000", "anything") is None


async def _code(tokens: TokenService, verifier: str, scope: list[str]) -> str:
    return await tokens.create_code(
        client_id="app",
        account_id="acct",
        scope=scope,
        context={"patient": "pid-1", "fhirUser": "http://x/fhir/Patient/pid-1"},
        redirect_uri="https://app.example/cb",
        code_challenge=s256(verifier),
        nonce="n-1",
    )


async def test_code_exchange_pkce_and_replay(tokens: TokenService) -> None:
    verifier = "v" * 50
    scope = ["launch/patient", "openid", "fhirUser", "offline_access", "patient/ImagingStudy.rs"]
    code = await _code(tokens, verifier, scope)
    for wrong in ("", "x" * 50, s256(verifier)):
        other = await _code(tokens, verifier, scope)
        with pytest.raises(InvalidGrantError):
            await tokens.redeem_code(other, "app", "https://app.example/cb", wrong)
    with pytest.raises(InvalidGrantError):
        await tokens.redeem_code(
            await _code(tokens, verifier, scope), "other", "https://app.example/cb", verifier
        )
    with pytest.raises(InvalidGrantError):
        await tokens.redeem_code(
            await _code(tokens, verifier, scope), "app", "https://app.example/other", verifier
        )
    answer = await tokens.redeem_code(code, "app", "https://app.example/cb", verifier)
    assert answer["token_type"] == "Bearer" and isinstance(answer["expires_in"], int)
    assert answer["scope"] == " ".join(scope) and answer["patient"] == "pid-1"
    assert answer["refresh_token"] and answer["id_token"]
    claims = jwt.decode(
        answer["id_token"], RSAKey.import_key((await tokens.keys.jwks())["keys"][0])
    ).claims
    assert claims["aud"] == "app" and claims["nonce"] == "n-1"
    assert claims["fhirUser"].endswith("/Patient/pid-1")
    checked = await tokens.check(answer["access_token"])
    assert checked is not None and checked.patient == "pid-1"
    # The code again: refused, and what it issued is withdrawn.
    with pytest.raises(InvalidGrantError):
        await tokens.redeem_code(code, "app", "https://app.example/cb", verifier)
    assert await tokens.check(answer["access_token"]) is None
    assert await tokens.introspect(answer["access_token"]) == {"active": False}


async def test_refresh_rotates_and_only_narrows(tokens: TokenService) -> None:
    verifier = "w" * 60
    scope = ["launch/patient", "offline_access", "patient/ImagingStudy.rs"]
    first = await tokens.redeem_code(
        await _code(tokens, verifier, scope), "app", "https://app.example/cb", verifier
    )
    with pytest.raises(InvalidGrantError):
        await tokens.refresh(first["refresh_token"], "other-client", None)
    with pytest.raises(InvalidScopeError):
        await tokens.refresh(first["refresh_token"], "app", "patient/ImagingStudy.c")
    second = await tokens.refresh(first["refresh_token"], "app", "patient/ImagingStudy.r")
    assert second["scope"].split() == ["patient/ImagingStudy.r", "offline_access"]
    assert second["refresh_token"] != first["refresh_token"]
    introspected = await tokens.introspect(second["access_token"])
    assert introspected["active"] and introspected["patient"] == "pid-1"
    assert introspected["scope"] == second["scope"]
    # The rotated-out token used again ends the whole grant.
    with pytest.raises(InvalidGrantError):
        await tokens.refresh(first["refresh_token"], "app", None)
    assert await tokens.check(second["access_token"]) is None
    with pytest.raises(InvalidGrantError):
        await tokens.refresh("unknown", "app", None)


async def test_revocation_ends_the_grant_for_its_own_client_only(tokens: TokenService) -> None:
    verifier = "z" * 43
    answer = await tokens.redeem_code(
        await _code(tokens, verifier, ["offline_access", "patient/*.rs"]),
        "app",
        "https://app.example/cb",
        verifier,
    )
    await tokens.revoke(answer["access_token"], "someone-else")
    assert await tokens.check(answer["access_token"]) is not None
    await tokens.revoke(answer["refresh_token"], "app")
    assert await tokens.check(answer["access_token"]) is None
    with pytest.raises(InvalidGrantError):
        await tokens.refresh(answer["refresh_token"], "app", None)
    await tokens.revoke("never-issued", "app")  # no error (RFC 7009)


async def test_key_rotation_keeps_the_old_public_key(tokens: TokenService) -> None:
    from datetime import timedelta

    first, _ = await tokens.keys.current()
    second = await tokens.keys.rotate(timedelta(hours=1))
    kids = [key["kid"] for key in (await tokens.keys.jwks())["keys"]]
    assert kids == [second, first]
    assert all("d" not in key for key in (await tokens.keys.jwks())["keys"])


def _assertion(key: RSAKey | ECKey, alg: str, client_id: str, **overrides: object) -> str:
    now = int(time.time())
    claims = {
        "iss": client_id,
        "sub": client_id,
        "aud": TOKEN_URL,
        "exp": now + 240,
        "jti": str(uuid.uuid4()),
        **overrides,
    }
    header = {"alg": alg, "kid": key.kid, "typ": "JWT"}
    return jwt.encode(header, claims, key, algorithms=[alg])


@pytest.mark.parametrize(
    ("alg", "make_key"),
    [
        ("RS384", lambda: RSAKey.generate_key(2048, parameters={"kid": "rsa-1"})),
        ("ES384", lambda: ECKey.generate_key("P-384", parameters={"kid": "ec-1"})),
    ],
)
async def test_backend_assertions(database: Database, alg: str, make_key) -> None:  # type: ignore[no-untyped-def]
    key = make_key()
    registry = ClientRegistry(database.sessions)
    jwks = {"keys": [key.as_dict(private=False)]}
    client = (
        await registry.add(
            name="EHR", kind=ClientKind.backend, jwks=jwks, scope="system/ImagingStudy.rs"
        )
    ).client
    authenticator = ClientAuthenticator(registry, database.sessions, JwksCache(60), TOKEN_URL)
    form = {"client_assertion_type": JWT_BEARER}
    assertion = _assertion(key, alg, client.client_id)
    found = await authenticator.authenticate({**form, "client_assertion": assertion}, None)
    assert found.client_id == client.client_id
    bad = [
        assertion,  # replayed jti
        _assertion(key, alg, client.client_id, aud="https://elsewhere/token"),
        _assertion(key, alg, client.client_id, exp=int(time.time()) + 3600),
        _assertion(key, alg, client.client_id, exp=int(time.time()) - 600),
        _assertion(key, alg, client.client_id, sub="someone"),
        _assertion(key, alg, "not_a_valid_iss", sub="not_a_valid_iss"),
    ]
    other = (
        RSAKey.generate_key(2048, parameters={"kid": key.kid})
        if alg == "RS384"
        else ECKey.generate_key("P-384", parameters={"kid": key.kid})
    )
    bad.append(_assertion(other, alg, client.client_id))  # signed with another key
    for attempt in bad:
        with pytest.raises(InvalidClientError):
            await authenticator.authenticate({**form, "client_assertion": attempt}, None)
    with pytest.raises(InvalidClientError):
        await authenticator.authenticate(
            {"client_assertion_type": "not_an_assertion_type", "client_assertion": assertion}, None
        )
    # A client using another method than it registered.
    with pytest.raises(InvalidClientError):
        await authenticator.authenticate({"client_id": client.client_id}, None)


async def test_registration_rules(database: Database) -> None:
    registry = ClientRegistry(database.sessions)
    with pytest.raises(RegistrationError):
        await registry.add(name="x", kind=ClientKind.public)
    with pytest.raises(RegistrationError):
        await registry.add(name="x", kind=ClientKind.public, redirect_uris=["http://app.example/"])
    with pytest.raises(RegistrationError):
        await registry.add(
            name="x", kind=ClientKind.public, redirect_uris=["https://a/"], scope="superpowers"
        )
    created = await registry.add(
        name="Viewer", kind=ClientKind.symmetric, redirect_uris=["https://viewer.example/cb"]
    )
    assert created.secret and created.client.secret_hash != created.secret
    assert await registry.check_secret(created.client, created.secret)
    assert not await registry.check_secret(created.client, "nope")
    assert await registry.remove(created.client.client_id)
    assert await registry.get(created.client.client_id) is None
