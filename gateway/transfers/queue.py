"""The transfer queue: jobs in the database, claimed by one worker at a time.

Any number of replicas run a worker on the same database. A worker claims a due
job by taking its lease (``lease_holder``, ``lease_until``): on PostgreSQL the
candidate row is locked with ``FOR UPDATE SKIP LOCKED`` so replicas never wait on
each other; on SQLite the claim is a conditional UPDATE that only one writer can win.
The worker renews the lease between batches; a worker that dies leaves a lease that
lapses, and the next claim (another replica's, or this one's after a restart) takes
the job over. Every instance the receiver answered for is a ``transfer_item`` row, so
a resumed job never sends an acknowledged instance again.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, func, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from gateway.auth.secrets import new_id
from gateway.store.models import TransferItem, TransferJob, utcnow

OPEN = ("queued", "running")
FINAL = ("done", "partial", "failed", "cancelled")
STORED, REFUSED, EXCLUDED = "stored", "refused", "excluded"


class TransferQueue:
    def __init__(
        self, sessions: async_sessionmaker[AsyncSession], clock: Callable[[], datetime] = utcnow
    ) -> None:
        self.sessions = sessions
        self.clock = clock

    def new_job(
        self,
        *,
        target_kind: str,
        target_id: str,
        studies: Sequence[str],
        send_id: str | None = None,
        patient: str | None = None,
        transform: str = "identity",
    ) -> TransferJob:
        """A queued job, not yet saved (for a caller that saves it with rows of its own)."""
        return TransferJob(
            id=new_id(),
            target_kind=target_kind,
            target_id=target_id,
            send_id=send_id,
            patient_fhir_id=patient,
            studies=list(studies),
            transform=transform,
            status="queued",
            total=0,
            sent=0,
            failed=0,
            excluded=0,
            attempts=0,
            next_try_at=self.clock(),
            last_error="",
            created_at=self.clock(),
        )

    async def enqueue(self, **fields: Any) -> TransferJob:
        """A new job (the fields of :meth:`new_job`), saved."""
        job = self.new_job(**fields)
        async with self.sessions() as session:
            session.add(job)
            await session.commit()
        return job

    def _due(self, now: datetime) -> object:
        return and_(
            TransferJob.status.in_(OPEN),
            TransferJob.next_try_at <= now,
            or_(TransferJob.lease_until.is_(None), TransferJob.lease_until < now),
        )

    async def claim(self, holder: str, lease: timedelta) -> TransferJob | None:
        """Take the lease of one due job (the oldest first), or None."""
        now = self.clock()
        async with self.sessions() as session:
            postgres = session.get_bind().dialect.name == "postgresql"
            candidates = (
                select(TransferJob.id)
                .where(self._due(now))  # type: ignore[arg-type]
                .order_by(TransferJob.next_try_at, TransferJob.created_at)
                .limit(1 if postgres else 5)
            )
            if postgres:
                candidates = candidates.with_for_update(skip_locked=True)
            for job_id in list(await session.scalars(candidates)):
                taken = await session.execute(
                    update(TransferJob)
                    .where(TransferJob.id == job_id, self._due(now))  # type: ignore[arg-type]
                    .values(status="running", lease_holder=holder, lease_until=now + lease)
                )
                if taken.rowcount == 1:  # type: ignore[attr-defined]
                    await session.commit()
                    return await session.get(TransferJob, job_id, populate_existing=True)
            await session.commit()
        return None

    async def renew(self, job_id: str, holder: str, lease: timedelta) -> bool:
        """Extend the lease; False when the job is no longer this holder's."""
        async with self.sessions() as session:
            renewed = await session.execute(
                update(TransferJob)
                .where(
                    TransferJob.id == job_id,
                    TransferJob.lease_holder == holder,
                    TransferJob.status == "running",
                )
                .values(lease_until=self.clock() + lease)
            )
            await session.commit()
        return bool(renewed.rowcount)  # type: ignore[attr-defined]

    async def answered(self, job_id: str) -> set[str]:
        """SOP Instance UIDs the receiver already answered for (never sent again)."""
        async with self.sessions() as session:
            found = await session.scalars(
                select(TransferItem.sop_uid).where(TransferItem.job_id == job_id)
            )
            return set(found)

    async def record(
        self,
        job_id: str,
        holder: str,
        items: Sequence[tuple[str, str, str, str]],
        total: int,
    ) -> bool:
        """Keep what the receiver answered (sop, study, state, reason) and the progress."""
        async with self.sessions() as session:
            for sop, study, state, reason in items:
                async with session.begin_nested():
                    try:
                        session.add(
                            TransferItem(
                                job_id=job_id,
                                sop_uid=sop,
                                study_uid=study,
                                state=state,
                                reason=reason[:200],
                            )
                        )
                        await session.flush()
                    except IntegrityError:
                        pass  # answered before (a retried batch): kept once
            counts = dict(
                (
                    await session.execute(
                        select(TransferItem.state, func.count())
                        .where(TransferItem.job_id == job_id)
                        .group_by(TransferItem.state)
                    )
                ).all()
            )
            updated = await session.execute(
                update(TransferJob)
                .where(TransferJob.id == job_id, TransferJob.lease_holder == holder)
                .values(
                    total=total,
                    sent=int(counts.get(STORED, 0)),
                    failed=int(counts.get(REFUSED, 0)),
                    excluded=int(counts.get(EXCLUDED, 0)),
                )
            )
            await session.commit()
        return bool(updated.rowcount)  # type: ignore[attr-defined]

    async def set_total(self, job_id: str, holder: str, total: int) -> None:
        async with self.sessions() as session:
            await session.execute(
                update(TransferJob)
                .where(TransferJob.id == job_id, TransferJob.lease_holder == holder)
                .values(total=total)
            )
            await session.commit()

    async def retry_later(self, job_id: str, holder: str, error: str, delay: timedelta) -> None:
        """A try failed: count it, keep why, release the lease until ``delay`` has passed."""
        async with self.sessions() as session:
            await session.execute(
                update(TransferJob)
                .where(TransferJob.id == job_id, TransferJob.lease_holder == holder)
                .values(
                    status="queued",
                    attempts=TransferJob.attempts + 1,
                    last_error=error[:1000],
                    next_try_at=self.clock() + delay,
                    lease_holder=None,
                    lease_until=None,
                )
            )
            await session.commit()

    async def finish(self, job_id: str, holder: str | None, status: str, error: str = "") -> bool:
        assert status in FINAL
        statement = update(TransferJob).where(
            TransferJob.id == job_id, TransferJob.status.in_(OPEN)
        )
        if holder is not None:
            statement = statement.where(TransferJob.lease_holder == holder)
        async with self.sessions() as session:
            finished = await session.execute(
                statement.values(
                    status=status,
                    last_error=error[:1000],
                    finished_at=self.clock(),
                    lease_holder=None,
                    lease_until=None,
                )
            )
            await session.commit()
        return bool(finished.rowcount)  # type: ignore[attr-defined]

    async def cancel_for_send(self, send_id: str) -> int:
        """A withdrawn consent (an organization send, or a research donation): its
        unfinished jobs stop (a running one at its next batch)."""
        return await self._cancel(TransferJob.send_id == send_id, "the consent was withdrawn")

    async def cancel_for_target(self, target_kind: str, target_id: str, reason: str) -> int:
        """A target that is gone (an organization removed): its unfinished jobs stop."""
        return await self._cancel(
            and_(TransferJob.target_kind == target_kind, TransferJob.target_id == target_id),
            reason,
        )

    async def _cancel(self, which: object, reason: str) -> int:
        async with self.sessions() as session:
            cancelled = await session.execute(
                update(TransferJob)
                .where(which, TransferJob.status.in_(OPEN))  # type: ignore[arg-type]
                .values(
                    status="cancelled",
                    last_error=reason[:1000],
                    finished_at=self.clock(),
                    lease_holder=None,
                    lease_until=None,
                )
            )
            await session.commit()
        return int(cancelled.rowcount or 0)  # type: ignore[attr-defined]

    async def get(self, job_id: str) -> TransferJob | None:
        async with self.sessions() as session:
            return await session.get(TransferJob, job_id[:64])

    async def jobs(
        self,
        *,
        patient: str | None = None,
        send_ids: Sequence[str] | None = None,
        limit: int = 200,
    ) -> list[TransferJob]:
        query = select(TransferJob).order_by(TransferJob.created_at.desc()).limit(limit)
        if patient is not None:
            query = query.where(TransferJob.patient_fhir_id == patient)
        if send_ids is not None:
            query = query.where(TransferJob.send_id.in_(list(send_ids)))
        async with self.sessions() as session:
            return list(await session.scalars(query))

    async def items(self, job_id: str) -> list[TransferItem]:
        async with self.sessions() as session:
            found = await session.scalars(
                select(TransferItem)
                .where(TransferItem.job_id == job_id)
                .order_by(TransferItem.sop_uid)
            )
            return list(found)
