"""The authorization server's parts, built once per process next to the other services."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from gateway.auth.accounts import Accounts
from gateway.auth.attempts import AttemptLimiter
from gateway.auth.client_auth import ClientAuthenticator, JwksCache
from gateway.auth.clients import ClientRegistry
from gateway.auth.external import ExternalTokens
from gateway.auth.keys import KeyStore
from gateway.auth.launches import LaunchStore
from gateway.auth.preauthorized import AccessTable, BackendAccess
from gateway.auth.sessions import BrowserSessions
from gateway.auth.tokens import TokenService
from gateway.organizations.registry import Organizations
from gateway.organizations.sealing import sealing_key
from gateway.organizations.sending import ConsentGrants, Sends
from gateway.settings import Settings
from gateway.store.patients import PatientIndex


@dataclass
class AuthServices:
    clients: ClientRegistry
    accounts: Accounts
    keys: KeyStore
    tokens: TokenService
    client_auth: ClientAuthenticator
    jwks_cache: JwksCache
    browser_sessions: BrowserSessions
    launches: LaunchStore
    attempts: AttemptLimiter
    registrations: AttemptLimiter
    access_table: AccessTable
    backend_access: BackendAccess
    organizations: Organizations
    sends: Sends
    # Set in external authorization server mode: tokens are introspected there.
    external: ExternalTokens | None = None

    @classmethod
    def build(cls, settings: Settings, sessions: async_sessionmaker[AsyncSession]) -> AuthServices:
        clients = ClientRegistry(sessions)
        keys = KeyStore(sessions)
        jwks_cache = JwksCache(settings.jwks_cache_seconds)
        access_table = AccessTable(sessions)
        sends = Sends(sessions, max_days=settings.share_max_days)
        return cls(
            clients=clients,
            accounts=Accounts(sessions),
            keys=keys,
            tokens=TokenService(sessions, settings, keys),
            client_auth=ClientAuthenticator(
                clients, sessions, jwks_cache, f"{settings.oauth_base_url}/token"
            ),
            jwks_cache=jwks_cache,
            browser_sessions=BrowserSessions(sessions, timedelta(hours=settings.session_hours)),
            launches=LaunchStore(sessions),
            attempts=AttemptLimiter(sessions, settings.secret_attempts_per_ip),
            registrations=AttemptLimiter(sessions, settings.registrations_per_ip),
            access_table=access_table,
            backend_access=BackendAccess(access_table, ConsentGrants(access_table, sends)),
            organizations=Organizations(sessions, clients, lambda: sealing_key(settings)),
            sends=sends,
            external=(
                ExternalTokens(settings, PatientIndex(sessions)) if settings.external_as else None
            ),
        )

    async def aclose(self) -> None:
        await self.jwks_cache.aclose()
        if self.external is not None:
            await self.external.aclose()
