"""Failed guesses per client address: the rate limit on every secret-guessing surface.

Each account and each share link locks itself after five wrong answers; this
limit is the other half, against one address trying many access codes or many
links. Counters live in the database (fixed 15-minute windows), so every
replica counts the same guesses. Only failures count: a patient who signs in
correctly is never slowed down by others behind the same address.
"""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from starlette.requests import Request

from gateway.store.models import AttemptWindow, as_utc, utcnow

WINDOW = timedelta(minutes=15)


class TooManyAttempts(Exception):
    """The address made too many failed guesses; ``retry_after`` seconds until the next try."""

    def __init__(self, retry_after: int) -> None:
        super().__init__(f"too many failed attempts; retry after {retry_after} s")
        self.retry_after = retry_after


def client_address(request: Request) -> str:
    """The peer address (behind a proxy, run uvicorn with --forwarded-allow-ips)."""
    return request.client.host if request.client else "unknown"


class AttemptLimiter:
    def __init__(self, sessions: async_sessionmaker[AsyncSession], limit: int) -> None:
        self.sessions = sessions
        self.limit = limit

    async def check(self, surface: str, address: str) -> None:
        """Raise TooManyAttempts when this address used up its failures for now."""
        async with self.sessions() as session:
            window = await session.get(AttemptWindow, _key(surface, address))
        if window is None:
            return
        ends = as_utc(window.window_start) + WINDOW
        now = utcnow()
        if window.failures >= self.limit and ends > now:
            raise TooManyAttempts(max(1, int((ends - now).total_seconds())))

    async def failed(self, surface: str, address: str) -> None:
        """Count one failure (a new window starts when the last one is over)."""
        key, now = _key(surface, address), utcnow()
        async with self.sessions() as session:
            # One atomic UPDATE per case, so concurrent failures on replicas all count.
            counted = await session.execute(
                update(AttemptWindow)
                .where(AttemptWindow.key == key, AttemptWindow.window_start > now - WINDOW)
                .values(failures=AttemptWindow.failures + 1)
            )
            if counted.rowcount == 0:  # type: ignore[attr-defined]
                restarted = await session.execute(
                    update(AttemptWindow)
                    .where(AttemptWindow.key == key)
                    .values(window_start=now, failures=1)
                )
                if restarted.rowcount == 0:  # type: ignore[attr-defined]
                    session.add(AttemptWindow(key=key, window_start=now, failures=1))
            try:
                await session.commit()
            except IntegrityError:
                await session.rollback()  # another replica created it first: count there
                await self.failed(surface, address)


def _key(surface: str, address: str) -> str:
    return f"{surface}:{address}"[:128]
