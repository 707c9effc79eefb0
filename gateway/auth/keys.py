"""The server's signing keys, kept in the database so every replica signs alike.

One RSA key is current (RS256, for id_tokens). ``rotate`` makes a new one
current and keeps the old public key in the JWKS until every token it
signed has expired.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from typing import Any

import anyio
from joserfc import jwt
from joserfc.jwk import RSAKey
from sqlalchemy import Select, false, or_, select, text, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from gateway.auth.secrets import new_id
from gateway.store.models import SigningKey

ALG = "RS256"
# Replicas pick up a rotation made elsewhere within this many seconds.
RELOAD_SECONDS = 30.0
# pg_advisory_xact_lock key for making the first key.
KEY_LOCK = 0x6B65_7973  # "keys"


def _newest_current() -> Select[SigningKey]:
    return (
        select(SigningKey)
        .where(SigningKey.retired_at.is_(None))
        .order_by(SigningKey.created_at.desc())
        .limit(1)
    )


class KeyStore:
    def __init__(self, sessions: async_sessionmaker[AsyncSession]) -> None:
        self.sessions = sessions
        self._current: tuple[str, RSAKey] | None = None
        self._loaded_at = 0.0

    async def current(self) -> tuple[str, RSAKey]:
        """(kid, key) to sign with, created on first use."""
        if self._current and time.monotonic() - self._loaded_at < RELOAD_SECONDS:
            return self._current
        async with self.sessions() as session:
            row = await session.scalar(_newest_current())
            if row is None:
                row = await self._first(session)
        self._current = (row.kid, RSAKey.import_key(row.private_jwk))
        self._loaded_at = time.monotonic()
        return self._current

    async def _first(self, session: AsyncSession) -> SigningKey:
        """The first key, made by one process only: workers and replicas starting together
        would otherwise each make and sign with a key of their own."""
        if session.get_bind().dialect.name == "postgresql":
            await session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": KEY_LOCK})
        else:
            # An UPDATE takes SQLite's write lock even when it changes nothing.
            await session.execute(update(SigningKey).where(false()).values(alg=SigningKey.alg))
        row = await session.scalar(_newest_current())
        if row is None:
            row = await self._create(session)
        await session.commit()
        return row

    async def _create(self, session: AsyncSession) -> SigningKey:
        kid = new_id()[:16]
        key = await anyio.to_thread.run_sync(
            lambda: RSAKey.generate_key(2048, parameters={"kid": kid, "alg": ALG, "use": "sig"})
        )
        row = SigningKey(kid=kid, alg=ALG, private_jwk=key.as_dict(private=True))
        session.add(row)
        await session.flush()
        return row

    async def rotate(self, keep_published: timedelta) -> str:
        """Make a new current key; the old one stays published for ``keep_published``."""
        now = datetime.now(UTC)
        async with self.sessions() as session:
            for row in await session.scalars(
                select(SigningKey).where(SigningKey.retired_at.is_(None))
            ):
                row.retired_at = now
                row.publish_until = now + keep_published
            created = await self._create(session)
            await session.commit()
        self._current = None
        return created.kid

    async def jwks(self) -> dict[str, Any]:
        await self.current()
        now = datetime.now(UTC)
        async with self.sessions() as session:
            rows = await session.scalars(
                select(SigningKey)
                .where(or_(SigningKey.retired_at.is_(None), SigningKey.publish_until > now))
                .order_by(SigningKey.created_at.desc())
            )
            keys = [RSAKey.import_key(row.private_jwk).as_dict(private=False) for row in rows]
        return {"keys": keys}

    async def sign(self, claims: dict[str, Any]) -> str:
        kid, key = await self.current()
        return jwt.encode({"alg": ALG, "kid": kid, "typ": "JWT"}, claims, key)
