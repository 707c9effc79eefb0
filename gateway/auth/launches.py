"""EHR launch contexts: made by the EHR, redeemed once by the app within five minutes."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from gateway.auth.secrets import new_token
from gateway.store.models import LaunchContext, utcnow

LIFETIME = timedelta(minutes=5)


class LaunchStore:
    def __init__(self, sessions: async_sessionmaker[AsyncSession]) -> None:
        self.sessions = sessions

    async def create(self, created_by: str, context: dict[str, Any]) -> str:
        launch_id = new_token()[:32]
        async with self.sessions() as session:
            session.add(
                LaunchContext(
                    id=launch_id,
                    created_by=created_by,
                    context=context,
                    expires_at=utcnow() + LIFETIME,
                )
            )
            await session.commit()
        return launch_id

    async def redeem(self, launch_id: str) -> dict[str, Any] | None:
        """The context, once: a second redemption or a late one gets None.

        Taken with one conditional ``UPDATE``, so of parallel redemptions exactly one
        wins, on SQLite (no ``SELECT ... FOR UPDATE``) as on PostgreSQL.
        """
        if not launch_id or len(launch_id) > 64:
            return None
        now = utcnow()
        async with self.sessions() as session:
            taken = await session.execute(
                update(LaunchContext)
                .where(
                    LaunchContext.id == launch_id,
                    LaunchContext.used_at.is_(None),
                    LaunchContext.expires_at > now,
                )
                .values(used_at=now)
            )
            if not taken.rowcount:  # type: ignore[attr-defined]
                return None
            found = await session.get(LaunchContext, launch_id)
            await session.commit()
        return dict(found.context) if found is not None else None
