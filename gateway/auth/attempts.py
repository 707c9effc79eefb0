"""Guesses per client address: the rate limit on every secret-guessing surface.

Each account and each share link locks itself after five wrong answers; this
limit is the other half, against one address trying many access codes or many
links. Counters live in the database (fixed 15-minute windows), so every
replica counts the same guesses.

A guess first takes a try from its address's window with one conditional
``UPDATE`` (``failures < limit``), *before* the secret is checked: parallel
guesses cannot get more tries than the window holds, on SQLite as on
PostgreSQL. A right answer gives its try back, so in the end only failures
count, and a patient who signs in correctly uses none of the budget.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta

from sqlalchemy import update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from starlette.requests import Request

from gateway.store.models import AttemptWindow, as_utc, utcnow

WINDOW = timedelta(minutes=15)
# Taking a try loops only when another replica changes the window between two statements.
ROUNDS = 8


class TooManyAttempts(Exception):
    """The address made too many failed guesses; ``retry_after`` seconds until the next try."""

    def __init__(self, retry_after: int) -> None:
        super().__init__(f"too many failed attempts; retry after {retry_after} s")
        self.retry_after = retry_after

    @property
    def advice(self) -> str:
        """For a page: the wait in whole minutes, rounded up (a try sooner is refused)."""
        minutes = -(-self.retry_after // 60)
        wait = "1 minute" if minutes == 1 else f"{minutes} minutes"
        return f"Too many failed attempts from this connection. Try again in {wait}."


def client_address(request: Request) -> str:
    """The peer address (behind a proxy, run uvicorn with --forwarded-allow-ips)."""
    return request.client.host if request.client else "unknown"


class AttemptLimiter:
    def __init__(self, sessions: async_sessionmaker[AsyncSession], limit: int) -> None:
        self.sessions = sessions
        self.limit = limit

    async def take(self, surface: str, address: str) -> None:
        """Take one try before a secret is checked; TooManyAttempts when none is left.

        The try stays taken (a failure) unless ``give_back`` returns it.
        """
        for _ in range(ROUNDS):
            async with self.sessions() as session:
                await self.take_in(session, surface, address)
                try:
                    await session.commit()
                    return
                except IntegrityError:
                    continue  # another replica made the window first: take the try there
        raise TooManyAttempts(1)

    def taking(self, surface: str, address: str) -> Callable[[AsyncSession], Awaitable[None]]:
        """``take_in`` for another counter's transaction (``Accounts.sign_in(first=...)``)."""
        return lambda session: self.take_in(session, surface, address)

    async def take_in(self, session: AsyncSession, surface: str, address: str) -> None:
        """``take`` inside the caller's transaction; the caller commits.

        The first try of an address inserts its window, so the commit can raise
        IntegrityError when another replica inserted it first: then take again.
        """
        key = _key(surface, address)
        for _ in range(ROUNDS):
            now = utcnow()
            if await self._count_in_window(session, key, now) or await self._restart(
                session, key, now
            ):
                return
            window = await session.get(AttemptWindow, key, populate_existing=True)
            if window is None:
                session.add(AttemptWindow(key=key, window_start=now, failures=1))
                return
            ends = as_utc(window.window_start) + WINDOW
            if window.failures >= self.limit and ends > now:
                raise TooManyAttempts(max(1, int((ends - now).total_seconds())))
            # Another replica changed the window between two statements: take again.
        raise TooManyAttempts(1)

    async def give_back(self, surface: str, address: str) -> None:
        """A right answer: its try no longer counts against the address."""
        async with self.sessions() as session:
            await session.execute(
                update(AttemptWindow)
                .where(
                    AttemptWindow.key == _key(surface, address),
                    AttemptWindow.window_start > utcnow() - WINDOW,
                    AttemptWindow.failures > 0,
                )
                .values(failures=AttemptWindow.failures - 1)
            )
            await session.commit()

    async def _count_in_window(self, session: AsyncSession, key: str, now: datetime) -> bool:
        counted = await session.execute(
            update(AttemptWindow)
            .where(
                AttemptWindow.key == key,
                AttemptWindow.window_start > now - WINDOW,
                AttemptWindow.failures < self.limit,
            )
            .values(failures=AttemptWindow.failures + 1)
        )
        return bool(counted.rowcount)  # type: ignore[attr-defined]

    async def _restart(self, session: AsyncSession, key: str, now: datetime) -> bool:
        """The window is over: this try is the first of a new one."""
        restarted = await session.execute(
            update(AttemptWindow)
            .where(AttemptWindow.key == key, AttemptWindow.window_start <= now - WINDOW)
            .values(window_start=now, failures=1)
        )
        return bool(restarted.rowcount)  # type: ignore[attr-defined]


def _key(surface: str, address: str) -> str:
    return f"{surface}:{address}"[:128]
