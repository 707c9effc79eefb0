"""Client authentication at the token, introspection and revocation endpoints.

Each client authenticates the one way it registered (RFC 7591 names):
``none`` (public: client_id in the body), ``client_secret_basic`` (HTTP
Basic only) or ``private_key_jwt`` (a signed assertion, RFC 7523, as SMART
Backend Services profiles it: RS384 or ES384, ``kid``, ``jti`` never seen
before, ``exp`` at most five minutes ahead).
"""

from __future__ import annotations

import base64
import re
import time
from collections.abc import Mapping
from datetime import timedelta
from typing import Any
from urllib.parse import unquote

import httpx
import orjson
from authlib.oauth2.rfc6749.errors import InvalidClientError, InvalidRequestError
from joserfc import jws, jwt
from joserfc.errors import JoseError
from joserfc.jwk import ECKey, RSAKey
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from gateway.auth.clients import ClientKind, ClientRegistry
from gateway.store.models import OAuthClient, SeenAssertion, utcnow

JWT_BEARER = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
ALGORITHMS = {"RS384": "RSA", "ES384": "EC"}
MAX_LIFETIME = 300
CLOCK_SKEW = 30


class JwksCache:
    """Registered JWKS URLs, fetched on demand and kept as long as the answer allows."""

    def __init__(self, default_seconds: int, http: httpx.AsyncClient | None = None) -> None:
        self.default_seconds = default_seconds
        self.http = http or httpx.AsyncClient(timeout=5.0, follow_redirects=False)
        self._cache: dict[str, tuple[float, dict[str, Any]]] = {}

    async def get(self, url: str, refresh: bool = False) -> dict[str, Any]:
        cached = self._cache.get(url)
        if cached and not refresh and cached[0] > time.monotonic():
            return cached[1]
        try:
            response = await self.http.get(url, headers={"Accept": "application/json"})
            response.raise_for_status()
            document = response.json()
        except (httpx.HTTPError, ValueError):
            raise InvalidClientError(
                description="The client's JWKS could not be fetched."
            ) from None
        if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
            raise InvalidClientError(description="The client's JWKS is not a key set.")
        seconds = _max_age(response.headers.get("cache-control", ""), self.default_seconds)
        if seconds > 0:
            self._cache[url] = (time.monotonic() + seconds, document)
        return document

    async def aclose(self) -> None:
        await self.http.aclose()


def _max_age(cache_control: str, default: int) -> int:
    directives = cache_control.lower()
    if "no-store" in directives or "no-cache" in directives:
        return 0
    found = re.search(r"max-age\s*=\s*(\d+)", directives)
    return min(int(found.group(1)), 86_400) if found else default


class ClientAuthenticator:
    def __init__(
        self,
        registry: ClientRegistry,
        sessions: async_sessionmaker[AsyncSession],
        jwks: JwksCache,
        token_url: str,
    ) -> None:
        self.registry = registry
        self.sessions = sessions
        self.jwks = jwks
        self.token_url = token_url

    async def authenticate(self, form: Mapping[str, str], authorization: str | None) -> OAuthClient:
        """The client the request proves to be, or InvalidClientError (401)."""
        assertion = form.get("client_assertion")
        assertion_type = form.get("client_assertion_type")
        if assertion or assertion_type:
            if assertion_type != JWT_BEARER:
                raise InvalidClientError(description="client_assertion_type must be jwt-bearer.")
            if not assertion:
                raise InvalidClientError(description="client_assertion is missing.")
            return await self._by_assertion(assertion, form.get("client_id"))
        if authorization and authorization[:6].lower() == "basic ":
            client_id, secret = _basic(authorization)
            client = await self.registry.get(client_id)
            if (
                client is None
                or client.kind != ClientKind.symmetric
                or not await self.registry.check_secret(client, secret)
            ):
                raise InvalidClientError(description="Client authentication failed.")
            if form.get("client_id") not in (None, client_id):
                raise InvalidClientError(description="client_id differs from the credentials.")
            return client
        public_id = form.get("client_id")
        if not public_id:
            raise InvalidClientError(description="The client is not identified.")
        client = await self.registry.get(public_id)
        if client is None or client.kind != ClientKind.public or form.get("client_secret"):
            # A confidential client must use its registered method, never the body.
            raise InvalidClientError(description="Client authentication failed.")
        return client

    async def _by_assertion(self, assertion: str, body_client_id: str | None) -> OAuthClient:
        failed = InvalidClientError(description="The client assertion is not valid.")
        try:
            compact = jws.extract_compact(assertion.encode())
            header = compact.protected
            claims = _unverified(compact)
        except (JoseError, ValueError, TypeError):
            raise failed from None
        alg, kid = header.get("alg"), header.get("kid")
        if alg not in ALGORITHMS or not kid:
            raise InvalidClientError(description="The assertion must be RS384 or ES384 with a kid.")
        client_id = claims.get("iss")
        if not isinstance(client_id, str) or claims.get("sub") != client_id:
            raise failed
        if body_client_id not in (None, client_id):
            raise failed
        client = await self.registry.get(client_id)
        if client is None or client.kind not in (ClientKind.asymmetric, ClientKind.backend):
            raise failed
        if "jku" in header and header["jku"] != client.jwks_url:
            raise InvalidClientError(description="The jku header is not the registered JWKS URL.")
        key = await self._key(client, kid, ALGORITHMS[alg])
        try:
            verified = jwt.decode(assertion, key, algorithms=[alg])
        except (JoseError, ValueError):
            raise failed from None
        self._check_claims(verified.claims)
        await self._remember_jti(client_id, str(verified.claims["jti"]), verified.claims["exp"])
        return client

    async def _key(self, client: OAuthClient, kid: str, kty: str) -> RSAKey | ECKey:
        for attempt in range(2):
            document = client.jwks
            if document is None and client.jwks_url:
                document = await self.jwks.get(client.jwks_url, refresh=attempt == 1)
            for entry in (document or {}).get("keys", []):
                if entry.get("kid") == kid and entry.get("kty") == kty:
                    try:
                        return RSAKey.import_key(entry) if kty == "RSA" else ECKey.import_key(entry)
                    except (JoseError, ValueError):
                        break
            if client.jwks is not None:
                break  # an inline JWKS does not change by fetching again
        raise InvalidClientError(description="No registered key matches the assertion's kid.")

    def _check_claims(self, claims: Mapping[str, Any]) -> None:
        now = int(time.time())
        audience = claims.get("aud")
        audiences = audience if isinstance(audience, list) else [audience]
        if self.token_url not in audiences:
            raise InvalidClientError(description="The assertion's aud is not the token endpoint.")
        expires = claims.get("exp")
        if not isinstance(expires, int) or expires < now - CLOCK_SKEW:
            raise InvalidClientError(description="The assertion has expired.")
        if expires > now + MAX_LIFETIME + CLOCK_SKEW:
            raise InvalidClientError(description="The assertion's exp is more than 5 minutes out.")
        jti = claims.get("jti")
        if not isinstance(jti, str) or not jti or len(jti) > 255:
            raise InvalidClientError(description="The assertion needs a jti.")

    async def _remember_jti(self, client_id: str, jti: str, expires: int) -> None:
        until = utcnow() + timedelta(seconds=max(expires - int(time.time()), 0) + CLOCK_SKEW)
        try:
            async with self.sessions() as session:
                session.add(SeenAssertion(client_id=client_id, jti=jti, expires_at=until))
                await session.commit()
        except IntegrityError:
            raise InvalidClientError(description="The assertion's jti was already used.") from None


def _unverified(compact: Any) -> dict[str, Any]:
    """The claims before the key is known: only to find the client (verified right after)."""
    claims = orjson.loads(compact.payload)
    if not isinstance(claims, dict):
        raise ValueError("claims are not an object")
    return claims


def _basic(authorization: str) -> tuple[str, str]:
    try:
        decoded = base64.b64decode(authorization[6:].strip(), validate=True).decode()
    except (ValueError, UnicodeDecodeError):
        raise InvalidClientError(description="The Basic credentials are malformed.") from None
    client_id, separator, secret = decoded.partition(":")
    if not separator:
        raise InvalidClientError(description="The Basic credentials are malformed.")
    # RFC 6749 2.3.1: both parts are form-urlencoded before Base64.
    return unquote(client_id.replace("+", " ")), unquote(secret.replace("+", " "))


def bearer_token(authorization: str | None) -> str | None:
    if authorization and authorization[:7].lower() == "bearer ":
        return authorization[7:].strip() or None
    return None


def require_form(form: Mapping[str, str], name: str) -> str:
    value = form.get(name)
    if not value:
        raise InvalidRequestError(description=f"Missing parameter '{name}'.")
    return value
