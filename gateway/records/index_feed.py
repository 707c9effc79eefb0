"""Following a PACS's change feed, so the study index learns of new studies in seconds.

Optional (``GATEWAY_INDEX_CHANGE_FEED=orthanc``). Every replica runs a
follower, but only the one holding the lease in the database polls: the lease
is taken or extended with one conditional ``UPDATE`` and lasts a few polls, so
when its holder stops another replica takes over. The cursor (the last change
read) is kept in the same row and moves only while its holder still holds the
lease. A change marks the patients it names stale; their next request reads
their studies from the PACS again. Nothing is lost if the feed stops: the
freshness bound still applies.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Protocol

from gateway.store.study_index import StudyIndex

logger = logging.getLogger(__name__)

LEASE_POLLS = 5  # a lease outlives this many polls of its holder
PAGE = 100


class Touches(Protocol):
    patient_ids: set[str]
    study_uids: set[str]
    last: int
    done: bool


class ChangeFeed(Protocol):
    async def last(self) -> int: ...

    async def since(self, cursor: int, limit: int = PAGE) -> Touches: ...

    async def aclose(self) -> None: ...


def wall_clock() -> datetime:
    return datetime.now(UTC)


class ChangeFollower:
    def __init__(
        self,
        name: str,
        feed: ChangeFeed,
        index: StudyIndex,
        interval: float,
        clock: Callable[[], datetime] = wall_clock,
    ) -> None:
        self.name = name
        self.feed = feed
        self.index = index
        self.interval = interval
        self.clock = clock
        self.holder = secrets.token_hex(8)
        self._task: asyncio.Task[None] | None = None

    async def poll_once(self) -> int | None:
        """Read the changes since the cursor; the patients marked stale, or None when
        another replica holds the lease."""
        lease = self.interval * LEASE_POLLS
        if not await self.index.hold_lease(self.name, self.holder, self.clock(), lease):
            return None
        cursor = await self.index.cursor(self.name)
        if cursor is None:
            # A new follower starts at the newest change: the index revalidates anyway.
            await self.index.advance(self.name, self.holder, await self.feed.last())
            return 0
        marked = 0
        while True:
            touched = await self.feed.since(cursor, PAGE)
            marked += await self.index.stale_by_mrn(touched.patient_ids, touched.study_uids)
            if touched.last <= cursor or not await self.index.advance(
                self.name, self.holder, touched.last
            ):
                break
            cursor = touched.last
            if touched.done:
                break
        return marked

    async def run(self) -> None:
        while True:
            try:
                await self.poll_once()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the feed is an optimisation: log, and try again
                logger.warning("study index: change feed %s: %s", self.name, exc)
            await asyncio.sleep(self.interval)

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self.run())

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        await self.feed.aclose()
