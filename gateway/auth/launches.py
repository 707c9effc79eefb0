"""EHR launch contexts: made by the EHR, redeemed once by the app within five minutes."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from gateway.auth.secrets import new_token
from gateway.store.models import LaunchContext, as_utc, utcnow

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
        """The context, once: a second redemption or a late one gets None."""
        if not launch_id or len(launch_id) > 64:
            return None
        async with self.sessions() as session:
            found = await session.get(LaunchContext, launch_id, with_for_update=True)
            if found is None or found.used_at is not None or as_utc(found.expires_at) <= utcnow():
                return None
            found.used_at = utcnow()
            await session.commit()
            return dict(found.context)
