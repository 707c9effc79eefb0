"""The client registry: apps, EHRs and backend services allowed to ask for tokens."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any
from urllib.parse import urlsplit

from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from gateway.auth import scopes
from gateway.auth.secrets import hash_secret, new_id, new_token, verify_secret
from gateway.store.models import OAuthClient


class ClientKind(StrEnum):
    public = "public"
    symmetric = "confidential-symmetric"
    asymmetric = "confidential-asymmetric"
    backend = "backend"


# How each kind authenticates at the token endpoint (RFC 7591 names).
AUTH_METHODS = {
    ClientKind.public: "none",
    ClientKind.symmetric: "client_secret_basic",
    ClientKind.asymmetric: "private_key_jwt",
    ClientKind.backend: "private_key_jwt",
}


_IDENTIFIER = re.compile(r"[A-Za-z0-9\-._]{1,64}")


class RegistrationError(ValueError):
    """The registration is invalid; the message says why (RFC 7591 invalid_client_metadata)."""


@dataclass(frozen=True)
class NewClient:
    client: OAuthClient
    secret: str | None


def check_redirect_uri(uri: str) -> str:
    try:
        parts = urlsplit(uri)
        loopback = parts.hostname in ("localhost", "127.0.0.1", "::1")
    except ValueError:  # an unbalanced IPv6 bracket, say
        raise RegistrationError(f"redirect URI {uri!r} is not a URL") from None
    if any(c.isspace() or not c.isprintable() for c in uri):
        raise RegistrationError(f"redirect URI {uri!r} has spaces or control characters")
    if parts.scheme not in ("https", "http") or not parts.netloc or parts.fragment:
        raise RegistrationError(f"redirect URI {uri!r} must be an absolute http(s) URL")
    if parts.scheme == "http" and not loopback:
        raise RegistrationError(f"redirect URI {uri!r} must use https (http only for loopback)")
    return uri


class ClientRegistry:
    def __init__(self, sessions: async_sessionmaker[AsyncSession]) -> None:
        self.sessions = sessions

    async def add(
        self,
        *,
        name: str,
        kind: ClientKind,
        redirect_uris: Sequence[str] = (),
        launch_uri: str | None = None,
        jwks_url: str | None = None,
        jwks: dict[str, Any] | None = None,
        scope: str = "",
        ehr: bool = False,
        dynamic: bool = False,
        operator: bool = False,
        organization_id: str | None = None,
    ) -> NewClient:
        if not name.strip():
            raise RegistrationError("a client needs a name")
        uris = [check_redirect_uri(u) for u in redirect_uris]
        if kind is not ClientKind.backend and not uris:
            raise RegistrationError("apps that launch need at least one redirect URI")
        if kind in (ClientKind.asymmetric, ClientKind.backend) and not (jwks_url or jwks):
            raise RegistrationError("asymmetric and backend clients need a JWKS URL or a JWKS")
        if jwks is not None and not isinstance(jwks.get("keys"), list):
            raise RegistrationError("a JWKS is a JSON object with a 'keys' list")
        if jwks_url and urlsplit(jwks_url).scheme not in ("https", "http"):
            raise RegistrationError("the JWKS URL must be an http(s) URL")
        unknown = [s for s in scopes.split(scope) if not scopes.is_known(s)]
        if unknown:
            raise RegistrationError(f"unknown scope(s): {' '.join(unknown)}")
        if (operator or organization_id) and kind is not ClientKind.backend:
            raise RegistrationError("only backend clients are operators or act for an organization")
        if organization_id is not None and not _IDENTIFIER.fullmatch(organization_id):
            raise RegistrationError("an organization id is 1-64 letters, digits, '-', '.' or '_'")
        secret = new_token() if kind is ClientKind.symmetric else None
        client_id = new_id()
        if launch_uri:  # a launch page that must know its app: ...?client_id={client_id}
            launch_uri = launch_uri.replace("{client_id}", client_id)
        client = OAuthClient(
            client_id=client_id,
            name=name.strip(),
            kind=kind.value,
            secret_hash=await hash_secret(secret) if secret else None,
            redirect_uris=uris,
            launch_uri=launch_uri,
            jwks_url=jwks_url,
            jwks=jwks,
            scope=" ".join(scopes.split(scope)),
            ehr=ehr,
            dynamic=dynamic,
            operator=operator,
            organization_id=organization_id,
        )
        async with self.sessions() as session:
            session.add(client)
            await session.commit()
        return NewClient(client, secret)

    async def get(self, client_id: str) -> OAuthClient | None:
        if not client_id or len(client_id) > 64:
            return None
        async with self.sessions() as session:
            return await session.get(OAuthClient, client_id)

    async def all(self) -> list[OAuthClient]:
        async with self.sessions() as session:
            return list(await session.scalars(select(OAuthClient).order_by(OAuthClient.name)))

    async def remove(self, client_id: str) -> bool:
        async with self.sessions() as session:
            result = await session.execute(
                delete(OAuthClient).where(OAuthClient.client_id == client_id)
            )
            await session.commit()
        return bool(getattr(result, "rowcount", 0))

    async def check_secret(self, client: OAuthClient, secret: str) -> bool:
        return await verify_secret(client.secret_hash, secret)


def describe(client: OAuthClient) -> dict[str, Any]:
    """What ``clients list`` and registration answers show (never the secret hash)."""
    answer = {
        "client_id": client.client_id,
        "client_name": client.name,
        "type": client.kind,
        "token_endpoint_auth_method": AUTH_METHODS[ClientKind(client.kind)],
        "redirect_uris": list(client.redirect_uris or []),
        "launch_uri": client.launch_uri,
        "jwks_uri": client.jwks_url,
        "scope": client.scope,
        "ehr": client.ehr,
    }
    if client.kind == ClientKind.backend.value:
        answer["operator"] = bool(client.operator)
        answer["organization"] = client.organization_id
    return answer
