"""Grants, authorization codes and tokens: issued, checked, refreshed, revoked.

Tokens are opaque random strings; the database keeps their SHA-256 only. A
grant is what one user allowed one app; its codes and tokens hang off it, so
revoking the grant (or replaying its code) kills them all at once, on every
replica, at the next request.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from authlib.oauth2.rfc6749.errors import InvalidGrantError, InvalidScopeError
from sqlalchemy import bindparam, func, select, update
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from gateway.auth import scopes
from gateway.auth.keys import KeyStore
from gateway.auth.secrets import digest, new_id, new_token, same
from gateway.auth.sessions import InTransaction
from gateway.settings import Settings
from gateway.store.database import autocommit
from gateway.store.models import (
    AuthorizationCode,
    Grant,
    OAuthClient,
    Token,
    as_utc,
    utcnow,
)

REFRESH_SCOPES = ("offline_access", "online_access")
_TOKEN, _GRANT = Token.__table__, Grant.__table__
_CHECK = (
    select(
        _TOKEN.c.kind,
        _TOKEN.c.client_id,
        _TOKEN.c.scope,
        _TOKEN.c.expires_at,
        _TOKEN.c.created_at,
        _TOKEN.c.revoked_at.label("token_revoked"),
        _GRANT.c.id.label("grant_id"),
        _GRANT.c.account_id,
        _GRANT.c.context,
        _GRANT.c.revoked_at.label("grant_revoked"),
    )
    .select_from(_TOKEN.join(_GRANT, _GRANT.c.id == _TOKEN.c.grant_id))
    .where(_TOKEN.c.token_hash == bindparam("token_hash"))
)


@dataclass(frozen=True)
class AccessGrant:
    """What a valid bearer token carries, as the resource server needs it."""

    grant_id: str
    client_id: str
    account_id: str | None
    scope: tuple[str, ...]
    context: dict[str, Any] = field(default_factory=dict)
    expires_at: datetime | None = None
    issued_at: datetime | None = None
    # Issued by an external authorization server (introspected), not by this gateway.
    external: bool = False

    @property
    def patient(self) -> str | None:
        value = self.context.get("patient")
        return str(value) if value else None


def consent_ended(context: dict[str, Any]) -> bool:
    """A patient's consent chosen for a while (one day, one week, ...) that is over."""
    until = context.get("consent_until")
    if not until:
        return False
    try:
        return datetime.fromisoformat(str(until)) <= utcnow()
    except ValueError:
        return True  # unreadable: treat as ended rather than as forever


def s256(verifier: str) -> str:
    """PKCE S256: base64url(SHA-256(verifier)) without padding (RFC 7636 4.2)."""
    hashed = hashlib.sha256(verifier.encode("ascii", "replace")).digest()
    return base64.urlsafe_b64encode(hashed).rstrip(b"=").decode()


class TokenService:
    def __init__(
        self, sessions: async_sessionmaker[AsyncSession], settings: Settings, keys: KeyStore
    ) -> None:
        self.sessions = sessions
        engine = sessions.kw.get("bind")
        assert isinstance(engine, AsyncEngine), "sessions must be bound to an engine"
        self.engine: AsyncEngine = engine
        self._reads = autocommit(engine)
        self.settings = settings
        self.keys = keys

    # -- grants and codes ----------------------------------------------------

    async def create_code(
        self,
        *,
        client_id: str,
        account_id: str | None,
        scope: list[str],
        context: dict[str, Any],
        redirect_uri: str,
        code_challenge: str,
        nonce: str | None,
        also: Sequence[InTransaction] = (),
    ) -> str:
        """A grant and its code; ``also`` (consuming the pending request, the consent's
        audit record) commits in the same transaction, or none of it does."""
        code = new_token()
        grant = Grant(
            id=new_id(),
            client_id=client_id,
            account_id=account_id,
            scope=" ".join(scope),
            context=context,
        )
        lifetime = timedelta(seconds=self.settings.authorization_code_seconds)
        async with self.sessions() as session:
            for step in also:
                await step(session)
            session.add(grant)
            session.add(
                AuthorizationCode(
                    code_hash=digest(code),
                    grant_id=grant.id,
                    client_id=client_id,
                    redirect_uri=redirect_uri,
                    code_challenge=code_challenge,
                    nonce=nonce,
                    expires_at=utcnow() + lifetime,
                )
            )
            await session.commit()
        return code

    async def live_grants(self, client_id: str, account_id: str) -> list[Grant]:
        """The account's grants to this client that still hold, newest first."""
        async with self.sessions() as session:
            found = await session.scalars(
                select(Grant)
                .where(
                    Grant.client_id == client_id,
                    Grant.account_id == account_id,
                    Grant.revoked_at.is_(None),
                )
                .order_by(Grant.created_at.desc())
            )
            return [g for g in found.all() if not consent_ended(g.context or {})]

    async def reuse_code(
        self,
        grant: Grant,
        *,
        scope: list[str],
        redirect_uri: str,
        code_challenge: str,
        nonce: str | None,
        also: Sequence[InTransaction] = (),
    ) -> str | None:
        """A code on an existing grant, for ``scope`` (which it covers): no new grant row.
        None when the grant was withdrawn meanwhile."""
        code = new_token()
        lifetime = timedelta(seconds=self.settings.authorization_code_seconds)
        async with self.sessions() as session:
            current = await session.get(Grant, grant.id)
            if current is None or current.revoked_at is not None:
                return None
            for step in also:
                await step(session)
            session.add(
                AuthorizationCode(
                    code_hash=digest(code),
                    grant_id=grant.id,
                    client_id=grant.client_id,
                    redirect_uri=redirect_uri,
                    code_challenge=code_challenge,
                    nonce=nonce,
                    expires_at=utcnow() + lifetime,
                    scope=" ".join(scope),
                )
            )
            await session.commit()
        return code

    async def redeem_code(
        self, code: str, client_id: str, redirect_uri: str, verifier: str
    ) -> dict[str, Any]:
        """Exchange a code (RFC 6749 4.1.3 with PKCE): single use, same client and redirect.

        Every check comes before the code is spent, so a request from another client,
        with another redirect_uri or with a wrong verifier leaves the code to its own
        app. Wrong verifiers need no counter: RFC 7636 4.1 asks for a verifier of at
        least 43 characters from a source of 256 bits of randomness, and guessing one
        for a code that lives a minute is hopeless.

        The code is spent with one conditional ``UPDATE ... WHERE used_at IS NULL``: of
        parallel redemptions exactly one gets the row, on SQLite (where ``SELECT ... FOR
        UPDATE`` does nothing) as on PostgreSQL. A code its own app presents again
        (right client, redirect and verifier) has leaked: the grant is withdrawn.
        """
        now = utcnow()
        async with self.sessions() as session:
            stored = await session.get(AuthorizationCode, digest(code))
        if stored is None:
            raise InvalidGrantError("The authorization code is not valid.")
        if stored.client_id != client_id:
            raise InvalidGrantError("The authorization code was issued to another client.")
        if not same(stored.redirect_uri, redirect_uri):
            raise InvalidGrantError("redirect_uri differs from the authorization request.")
        if not verifier or not same(s256(verifier), stored.code_challenge):
            raise InvalidGrantError("The code_verifier does not match the code_challenge.")
        if stored.used_at is None and as_utc(stored.expires_at) < now:
            raise InvalidGrantError("The authorization code has expired.")
        async with self.sessions() as session:
            spent = await session.execute(
                update(AuthorizationCode)
                .where(
                    AuthorizationCode.code_hash == stored.code_hash,
                    AuthorizationCode.used_at.is_(None),
                )
                .values(used_at=now)
            )
            if not spent.rowcount:  # type: ignore[attr-defined]
                # Used before (or just now, in parallel): what it issued is withdrawn
                # (RFC 6749 4.1.2).
                await self._revoke_grant(session, stored.grant_id)
                await session.commit()
                raise InvalidGrantError("The authorization code was already used.")
            grant = await session.get(Grant, stored.grant_id)
            if grant is None or grant.revoked_at is not None:
                await session.commit()
                raise InvalidGrantError("The authorization was withdrawn.")
            # The tokens are committed with the spending: a replay that loses the race
            # withdraws them only after the winner has its answer.
            granted = scopes.split(stored.scope or grant.scope)
            rows, response, now = self._mint(grant, granted)
            session.add_all(rows)
            await session.commit()
        return await self._answer(grant, granted, response, now, stored.nonce)

    async def client_credentials(self, client_id: str, scope: list[str]) -> dict[str, Any]:
        grant = Grant(id=new_id(), client_id=client_id, scope=" ".join(scope), context={})
        async with self.sessions() as session:
            session.add(grant)
            await session.commit()
        return await self.issue(grant, backend=True)

    # -- issuing ---------------------------------------------------------------

    async def issue(
        self,
        grant: Grant,
        *,
        scope: list[str] | None = None,
        nonce: str | None = None,
        backend: bool = False,
    ) -> dict[str, Any]:
        granted = scope if scope is not None else scopes.split(grant.scope)
        rows, response, now = self._mint(grant, granted, backend)
        async with self.sessions() as session:
            session.add_all(rows)
            await session.commit()
        return await self._answer(grant, granted, response, now, nonce)

    def _mint(
        self, grant: Grant, granted: list[str], backend: bool = False
    ) -> tuple[list[Token], dict[str, Any], datetime]:
        """New tokens for ``grant``: the rows to store, and the answer's token fields."""
        seconds = (
            self.settings.backend_token_seconds if backend else self.settings.access_token_seconds
        )
        now = utcnow()
        access = new_token()
        rows = [
            Token(
                token_hash=digest(access),
                grant_id=grant.id,
                kind="access",
                client_id=grant.client_id,
                scope=" ".join(granted),
                expires_at=now + timedelta(seconds=seconds),
            )
        ]
        response: dict[str, Any] = {
            "access_token": access,
            "token_type": "Bearer",
            "expires_in": seconds,
            "scope": " ".join(granted),
        }
        if not backend and any(s in granted for s in REFRESH_SCOPES):
            refresh = new_token()
            lifetime = (
                timedelta(days=self.settings.refresh_token_days)
                if "offline_access" in granted
                else timedelta(hours=self.settings.session_hours)
            )
            rows.append(
                Token(
                    token_hash=digest(refresh),
                    grant_id=grant.id,
                    kind="refresh",
                    client_id=grant.client_id,
                    scope=" ".join(granted),
                    expires_at=now + lifetime,
                )
            )
            response["refresh_token"] = refresh
        return rows, response, now

    async def _answer(
        self,
        grant: Grant,
        granted: list[str],
        response: dict[str, Any],
        now: datetime,
        nonce: str | None,
    ) -> dict[str, Any]:
        """The token answer's context and id_token, once the tokens are stored.

        Signed after the commit: the key store may write (a first key), and on SQLite
        that would wait for the write lock the redeeming transaction holds.
        """
        context = grant.context or {}
        for name in ("patient", "need_patient_banner", "smart_style_url", "fhirContext", "intent"):
            if name in context:
                response[name] = context[name]
        if "openid" in granted and context.get("fhirUser"):
            response["id_token"] = await self._id_token(grant, now, nonce)
        return response

    async def _id_token(self, grant: Grant, now: datetime, nonce: str | None) -> str:
        claims: dict[str, Any] = {
            "iss": self.settings.public_url,
            "sub": grant.account_id or grant.client_id,
            "aud": grant.client_id,
            "iat": int(now.timestamp()),
            "exp": int(now.timestamp()) + self.settings.access_token_seconds,
            "fhirUser": grant.context["fhirUser"],
        }
        if nonce:
            claims["nonce"] = nonce
        if grant.context.get("name"):
            claims["name"] = grant.context["name"]
        return await self.keys.sign(claims)

    async def refresh(
        self, refresh_token: str, client_id: str, requested: str | None
    ) -> dict[str, Any]:
        """Rotate a refresh token (RFC 6749 6); a scope parameter can only narrow."""
        now = utcnow()
        async with self.sessions() as session:
            stored = await session.get(Token, digest(refresh_token))
            if stored is None or stored.kind != "refresh" or stored.client_id != client_id:
                raise InvalidGrantError("The refresh token is not valid.")
            if stored.revoked_at is not None:
                # A rotated-out token used again: someone holds a copy; end the grant.
                await self._revoke_grant(session, stored.grant_id)
                await session.commit()
                raise InvalidGrantError("The refresh token was revoked.")
            if as_utc(stored.expires_at) < now:
                raise InvalidGrantError("The refresh token has expired.")
            grant = await session.get(Grant, stored.grant_id)
            if grant is None or grant.revoked_at is not None:
                raise InvalidGrantError("The authorization was withdrawn.")
            if consent_ended(grant.context or {}):
                raise InvalidGrantError("The patient's consent has ended.")
            held = scopes.split(stored.scope)
            wanted = held if requested is None else scopes.split(requested)
            narrowed = scopes.narrow(held, wanted)
            if narrowed is None or not narrowed:
                raise InvalidScopeError("A refresh can only keep or narrow the granted scope.")
            # Rotated with one conditional UPDATE: of parallel refreshes with one token,
            # exactly one gets the row; the others are replays.
            rotated = await session.execute(
                update(Token)
                .where(Token.token_hash == stored.token_hash, Token.revoked_at.is_(None))
                .values(revoked_at=now)
            )
            if not rotated.rowcount:  # type: ignore[attr-defined]
                await self._revoke_grant(session, stored.grant_id)
                await session.commit()
                raise InvalidGrantError("The refresh token was revoked.")
            if not any(s in narrowed for s in REFRESH_SCOPES):
                narrowed = [*narrowed, *[s for s in held if s in REFRESH_SCOPES][:1]]
            rows, response, now = self._mint(grant, narrowed)
            session.add_all(rows)
            await session.commit()
        return await self._answer(grant, narrowed, response, now, None)

    # -- checking, introspection, revocation -----------------------------------

    async def check(self, token: str) -> AccessGrant | None:
        """The per-request check: one indexed read of the token and its grant.

        Core, not the ORM: this runs on every API request, and building ORM
        objects costs more than the query itself.
        """
        if not token or len(token) > 512:
            return None
        async with self._reads.connect() as connection:
            row = (await connection.execute(_CHECK, {"token_hash": digest(token)})).first()
        if row is None:
            return None
        if row.kind != "access" or row.token_revoked or row.grant_revoked:
            return None
        expires_at = as_utc(row.expires_at)
        context = dict(row.context or {})
        if expires_at <= utcnow() or consent_ended(context):
            return None
        return AccessGrant(
            grant_id=row.grant_id,
            client_id=row.client_id,
            account_id=row.account_id,
            scope=tuple(scopes.split(row.scope)),
            context=context,
            expires_at=expires_at,
            issued_at=as_utc(row.created_at),
        )

    async def introspect(self, token: str, issued_to: str | None = None) -> dict[str, Any]:
        """RFC 7662: the token's facts when active, and exactly ``{"active": false}`` otherwise.

        With ``issued_to``, a token issued to another client is not active for the caller.
        """
        checked = await self.check(token)
        if checked is None or (issued_to is not None and checked.client_id != issued_to):
            return {"active": False}
        answer: dict[str, Any] = {
            "active": True,
            "client_id": checked.client_id,
            "scope": " ".join(checked.scope),
            "token_type": "Bearer",
            "iss": self.settings.public_url,
            "sub": checked.account_id or checked.client_id,
        }
        if checked.expires_at:
            answer["exp"] = int(checked.expires_at.timestamp())
        if checked.issued_at:
            answer["iat"] = int(checked.issued_at.timestamp())
        for name in ("patient", "fhirUser"):
            if checked.context.get(name):
                answer[name] = checked.context[name]
        return answer

    async def revoke(self, token: str, client_id: str) -> None:
        """RFC 7009: revoke the token's whole grant, if it belongs to ``client_id``."""
        async with self.sessions() as session:
            stored = await session.get(Token, digest(token))
            if stored is None or stored.client_id != client_id:
                return  # unknown or another client's: answered 200 all the same
            await self._revoke_grant(session, stored.grant_id)
            await session.commit()

    async def grants_of(self, account_id: str) -> list[tuple[Grant, str, datetime | None]]:
        """The account's live grants: (grant, app name, when a token was last issued)."""
        last = (
            select(Token.grant_id, func.max(Token.created_at).label("last_issued"))
            .group_by(Token.grant_id)
            .subquery()
        )
        async with self.sessions() as session:
            rows = await session.execute(
                select(Grant, OAuthClient.name, last.c.last_issued)
                .join(OAuthClient, OAuthClient.client_id == Grant.client_id)
                .outerjoin(last, last.c.grant_id == Grant.id)
                .where(Grant.account_id == account_id, Grant.revoked_at.is_(None))
                .order_by(Grant.created_at.desc())
            )
            return [
                (grant, name, as_utc(issued) if issued else None)
                for grant, name, issued in rows.all()
                if not consent_ended(grant.context or {})
            ]

    async def revoke_for_account(self, grant_id: str, account_id: str) -> bool:
        """The patient withdraws a grant: every token of it stops at the next request."""
        async with self.sessions() as session:
            grant = await session.get(Grant, grant_id)
            if grant is None or grant.account_id != account_id or grant.revoked_at:
                return False
            await self._revoke_grant(session, grant_id)
            await session.commit()
        return True

    async def withdrawn_app(self, grant_id: str, account_id: str) -> str | None:
        """The app's name if ``grant_id`` is the account's own grant and was withdrawn."""
        if not grant_id:
            return None
        async with self.sessions() as session:
            return await session.scalar(
                select(OAuthClient.name)
                .join(Grant, Grant.client_id == OAuthClient.client_id)
                .where(
                    Grant.id == grant_id[:64],
                    Grant.account_id == account_id,
                    Grant.revoked_at.is_not(None),
                )
            )

    async def _revoke_grant(self, session: AsyncSession, grant_id: str) -> None:
        now = utcnow()
        await session.execute(
            update(Grant)
            .where(Grant.id == grant_id, Grant.revoked_at.is_(None))
            .values(revoked_at=now)
        )
        await session.execute(
            update(Token)
            .where(Token.grant_id == grant_id, Token.revoked_at.is_(None))
            .values(revoked_at=now)
        )
