"""Organizations as records: who they are, their backend client (for sites that pull) and
their STOW-RS endpoint with its credentials (for sites that receive pushes).

A pulling site's backend client is registered by the same machinery as any backend
client (:class:`gateway.auth.clients.ClientRegistry`, asymmetric keys only), with
``organization_id`` set, so it sees what was sent to the organization.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any
from urllib.parse import urlsplit

from pydantic import SecretStr
from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from gateway.auth.clients import ClientKind, ClientRegistry, RegistrationError
from gateway.auth.secrets import seal, unseal
from gateway.store.models import OAuthClient, Organization
from gateway.transfers.stow import StowTarget

ORG_ID = re.compile(r"[A-Za-z0-9\-._]{1,64}")
STOW_AUTH = ("none", "bearer", "oauth")
DEFAULT_PULL_SCOPE = "system/ImagingStudy.rs system/DocumentReference.rs system/Patient.rs"


class OrganizationError(ValueError):
    """The organization cannot be recorded as asked; the message says why."""


def _http_url(value: str, what: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.fragment:
        raise OrganizationError(f"{what} must be an absolute http(s) URL")
    return value.rstrip("/")


def _identifiers(values: Sequence[str]) -> list[str]:
    checked = []
    for value in values:
        system, bar, code = value.partition("|")
        if not bar or not code.strip() or len(value) > 300:
            raise OrganizationError(f"identifier {value!r} must be system|value")
        checked.append(f"{system.strip()}|{code.strip()}")
    return checked


class Organizations:
    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        clients: ClientRegistry,
        key: Callable[[], bytes],
    ) -> None:
        self.sessions = sessions
        self.clients = clients
        self._key = key

    async def add(
        self,
        *,
        org_id: str,
        name: str,
        identifiers: Sequence[str] = (),
        jwks: dict[str, Any] | None = None,
        jwks_url: str | None = None,
        pull_scope: str = DEFAULT_PULL_SCOPE,
        stow_url: str | None = None,
        bearer: str | None = None,
        token_url: str | None = None,
        oauth_client_id: str | None = None,
        oauth_client_secret: str | None = None,
        oauth_scope: str | None = None,
    ) -> tuple[Organization, OAuthClient | None]:
        """Record an organization; with keys, register its backend client too."""
        if not ORG_ID.fullmatch(org_id):
            raise OrganizationError("an organization id is 1-64 letters, digits, '-', '.' or '_'")
        if not name.strip() or len(name) > 200:
            raise OrganizationError("an organization needs a name (at most 200 characters)")
        if not (jwks or jwks_url or stow_url):
            raise OrganizationError(
                "give a backend client's keys (--jwks-file or --jwks-url) for a site that "
                "pulls, or a STOW-RS endpoint (--stow-url) for a site that receives pushes"
            )
        auth, secret = "none", None
        if stow_url:
            stow_url = _http_url(stow_url, "the STOW-RS URL")
            if bearer and (token_url or oauth_client_id or oauth_client_secret):
                raise OrganizationError("give a static bearer token or OAuth credentials, not both")
            if bearer:
                auth, secret = "bearer", bearer.strip()
            elif token_url or oauth_client_id or oauth_client_secret:
                if not (token_url and oauth_client_id and oauth_client_secret):
                    raise OrganizationError(
                        "OAuth client credentials need a token URL, a client id and a secret"
                    )
                token_url = _http_url(token_url, "the token URL")
                auth, secret = "oauth", oauth_client_secret.strip()
        elif bearer or token_url or oauth_client_id or oauth_client_secret:
            raise OrganizationError("STOW credentials need a STOW-RS URL (--stow-url)")
        if await self.get(org_id) is not None:
            raise OrganizationError(f"an organization {org_id} exists already")
        organization = Organization(
            id=org_id,
            name=name.strip(),
            identifiers=_identifiers(identifiers),
            stow_url=stow_url,
            stow_auth=auth,
            token_url=token_url if auth == "oauth" else None,
            oauth_client_id=oauth_client_id if auth == "oauth" else None,
            oauth_scope=oauth_scope if auth == "oauth" else None,
            stow_secret=seal(self._key(), secret) if secret else None,
        )
        client = None
        if jwks or jwks_url:
            try:
                client = (
                    await self.clients.add(
                        name=organization.name,
                        kind=ClientKind.backend,
                        jwks=jwks,
                        jwks_url=jwks_url,
                        scope=pull_scope,
                        organization_id=org_id,
                    )
                ).client
            except RegistrationError as exc:
                raise OrganizationError(str(exc)) from None
        async with self.sessions() as session:
            session.add(organization)
            await session.commit()
        return organization, client

    async def get(self, org_id: str) -> Organization | None:
        if not ORG_ID.fullmatch(org_id):
            return None
        async with self.sessions() as session:
            return await session.get(Organization, org_id)

    async def all(self) -> list[Organization]:
        async with self.sessions() as session:
            return list(await session.scalars(select(Organization).order_by(Organization.name)))

    async def clients_of(self, org_id: str) -> list[str]:
        async with self.sessions() as session:
            found = await session.scalars(
                select(OAuthClient.client_id).where(OAuthClient.organization_id == org_id)
            )
            return list(found)

    async def remove(self, org_id: str) -> bool:
        """Remove the organization and its backend clients: they see nothing from now on."""
        async with self.sessions() as session:
            removed = await session.execute(delete(Organization).where(Organization.id == org_id))
            await session.execute(
                delete(OAuthClient).where(
                    OAuthClient.organization_id == org_id,
                    OAuthClient.kind == ClientKind.backend.value,
                )
            )
            await session.commit()
        return bool(removed.rowcount)  # type: ignore[attr-defined]

    def stow_target(self, organization: Organization) -> StowTarget | None:
        """How to push to the organization (its secret unsealed), or None: it only pulls."""
        if not organization.stow_url:
            return None
        secret = (
            SecretStr(unseal(self._key(), organization.stow_secret))
            if organization.stow_secret
            else None
        )
        return StowTarget(
            url=organization.stow_url,
            auth=organization.stow_auth,
            secret=secret,
            token_url=organization.token_url,
            client_id=organization.oauth_client_id,
            scope=organization.oauth_scope,
        )


def describe(organization: Organization, clients: Sequence[str] = ()) -> dict[str, Any]:
    """What may be shown of an organization (never its secret)."""
    return {
        "id": organization.id,
        "name": organization.name,
        "identifiers": list(organization.identifiers or []),
        "backend_clients": list(clients),
        "stow_url": organization.stow_url,
        "stow_auth": organization.stow_auth,
        "token_url": organization.token_url,
        "oauth_client_id": organization.oauth_client_id,
    }
