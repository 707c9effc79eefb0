"""Browser sessions and pending authorization requests, both in the database.

The cookie carries 256 random bits; the database keeps their SHA-256. Signing
in replaces the session id (no fixation). Every form carries the session's
CSRF token, compared in constant time.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any

from sqlalchemy import delete, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from gateway.auth.secrets import digest, new_id, new_token, same
from gateway.store.models import BrowserSession, PendingAuthorization, as_utc, utcnow

COOKIE = "gateway_session"
# One step of a change made in the caller's transaction (see TokenService.create_code).
InTransaction = Callable[[AsyncSession], Awaitable[None]]
PENDING_LIFETIME = timedelta(minutes=15)


class BrowserSessions:
    def __init__(self, sessions: async_sessionmaker[AsyncSession], lifetime: timedelta) -> None:
        self.sessions = sessions
        self.lifetime = lifetime

    async def load(self, cookie: str | None) -> BrowserSession | None:
        if not cookie or len(cookie) > 128:
            return None
        async with self.sessions() as session:
            found = await session.get(BrowserSession, digest(cookie))
        if found is None or as_utc(found.expires_at) <= utcnow():
            return None
        return found

    async def start(
        self, account_id: str | None = None, share_id: str | None = None
    ) -> tuple[str, BrowserSession]:
        cookie = new_token()
        row = BrowserSession(
            id_hash=digest(cookie),
            account_id=account_id,
            share_id=share_id,
            csrf_token=new_token(),
            expires_at=utcnow() + self.lifetime,
        )
        async with self.sessions() as session:
            session.add(row)
            await session.commit()
        return cookie, row

    async def sign_in(self, old: BrowserSession, account_id: str) -> tuple[str, BrowserSession]:
        """A fresh session for the signed-in account; pending requests follow it."""
        cookie, row = await self.start(account_id)
        async with self.sessions() as session:
            await session.execute(
                update(PendingAuthorization)
                .where(PendingAuthorization.session_hash == old.id_hash)
                .values(session_hash=row.id_hash)
            )
            await session.execute(
                delete(BrowserSession).where(BrowserSession.id_hash == old.id_hash)
            )
            await session.commit()
        return cookie, row

    async def open_share(self, old: BrowserSession, share_id: str) -> tuple[str, BrowserSession]:
        """A fresh session for a recipient who gave the right PIN (no fixation either)."""
        cookie, row = await self.start(share_id=share_id)
        await self.end(old)
        return cookie, row

    async def end(self, current: BrowserSession) -> None:
        async with self.sessions() as session:
            await session.execute(
                delete(BrowserSession).where(BrowserSession.id_hash == current.id_hash)
            )
            await session.commit()

    async def save_pending(self, owner: BrowserSession, request: dict[str, Any]) -> str:
        pending = PendingAuthorization(
            id=new_id(),
            session_hash=owner.id_hash,
            request=request,
            expires_at=utcnow() + PENDING_LIFETIME,
        )
        async with self.sessions() as session:
            session.add(pending)
            await session.commit()
        return pending.id

    async def pending(self, owner: BrowserSession, request_id: str) -> dict[str, Any] | None:
        if not request_id or len(request_id) > 64:
            return None
        async with self.sessions() as session:
            found = await session.get(PendingAuthorization, request_id)
        if (
            found is None
            or not same(found.session_hash, owner.id_hash)
            or as_utc(found.expires_at) <= utcnow()
        ):
            return None
        return dict(found.request)

    async def drop_pending(self, request_id: str, *also: InTransaction) -> bool:
        """Consume the request, with ``also`` (an audit record, say) in the same
        transaction; False when it was consumed already (a form posted twice)."""
        try:
            async with self.sessions() as session:
                await self.consuming(request_id)(session)
                for step in also:
                    await step(session)
                await session.commit()
        except PendingGone:
            return False
        return True

    def consuming(self, request_id: str) -> InTransaction:
        """Consume the request inside another change's transaction (the consent's grant):
        it is gone only if that change commits. PendingGone when it was gone already."""

        async def consume(session: AsyncSession) -> None:
            deleted = await session.execute(
                delete(PendingAuthorization).where(PendingAuthorization.id == request_id)
            )
            if not deleted.rowcount:  # type: ignore[attr-defined]
                raise PendingGone(request_id)

        return consume


class PendingGone(Exception):
    """The pending request was consumed by another post (or never existed)."""


def csrf_ok(owner: BrowserSession, submitted: str | None) -> bool:
    return bool(submitted) and same(owner.csrf_token, submitted or "")
