"""The transfer worker: claims due pushes and sends their instances by STOW-RS.

One job at a time per worker, in batches. Before each batch the worker renews its
lease and checks that the push is still wanted (its consent not withdrawn); the
instances the receiver already answered for are skipped, so a job resumed after a
crash or a restart sends each instance once. A try that fails for a reason worth
retrying (the receiver down, 5xx, the archive here unavailable) is counted and the
job waits ``backoff * 2**(tries-1)`` (at most ``backoff_max``) before the next one;
after ``attempts`` tries it ends as failed, with the reason. Each final status
(done, partial, failed, cancelled) goes to the audit trail under the patient, in the
words of the job's destination, so it is in their Activity, and stays on the job for
staff.

A job's transform (``identity``, or one registered by name, such as the research
de-identification) changes each instance's bytes before it goes, or leaves it out
(counted as excluded). The receiver names what it stored by the UIDs it was sent, so
for a transformed instance the worker reads the new SOP Instance UID from the bytes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from io import BytesIO
from typing import Protocol

import anyio
from pydicom import dcmread
from pydicom.errors import InvalidDicomError

from gateway.audit import AuditEntry, Auditor
from gateway.auth.secrets import new_id
from gateway.dicomweb import dicomjson as dj
from gateway.dicomweb.instances import AS_STORED, SinglePart
from gateway.dicomweb.upstream import Upstream
from gateway.errors import GatewayError, NotFound
from gateway.store.models import TransferJob, utcnow
from gateway.transfers.queue import EXCLUDED, REFUSED, STORED, TransferQueue
from gateway.transfers.stow import StowClient, StowRefused, StowTarget, StowUnavailable
from gateway.transfers.transforms import (
    IDENTITY,
    Transform,
    TransformContext,
    Transforms,
    UnknownTransform,
)

logger = logging.getLogger(__name__)
FIELDS = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")


class Destination(Protocol):
    """Where one kind of target (an organization, a research archive) receives pushes."""

    async def target(self, job: TransferJob) -> StowTarget | None:
        """How to reach it; None: it is gone (the job fails)."""

    async def wanted(self, job: TransferJob) -> bool:
        """Is the push still wanted (its consent active)? False: the job is cancelled."""

    async def ended(self, job: TransferJob, status: str, detail: str) -> AuditEntry:
        """The audit record (in the patient's Activity) of the job's final status."""


@dataclass(frozen=True)
class WorkerOptions:
    batch: int = 10
    attempts: int = 8
    backoff: float = 5.0
    backoff_max: float = 600.0
    poll: float = 2.0
    lease: float = 60.0
    timeout: float = 60.0


def transformed(
    transform: Transform, data: bytes, context: TransformContext, sop: str, identity: bool
) -> tuple[bytes, str] | None:
    """The instance through the transform (blocking), with the SOP Instance UID it now
    carries; None when the transform left it out or made something unreadable."""
    changed = transform(data, context)
    if changed is None or identity:
        return None if changed is None else (changed, sop)
    try:
        read = dcmread(BytesIO(changed), stop_before_pixels=True, specific_tags=["SOPInstanceUID"])
    except (InvalidDicomError, ValueError, EOFError, OSError):
        return None
    return changed, str(read.get("SOPInstanceUID", "")) or sop


@dataclass(frozen=True)
class _Instance:
    study: str
    series: str
    sop: str


class _Retry(Exception):
    pass


class TransferWorker:
    def __init__(
        self,
        queue: TransferQueue,
        upstream: Upstream,
        destinations: Mapping[str, Destination],
        transforms: Transforms,
        audit: Auditor,
        options: WorkerOptions,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.queue = queue
        self.upstream = upstream
        self.destinations = destinations
        self.transforms = transforms
        self.audit = audit
        self.options = options
        self.clock = clock
        self.holder = new_id()
        self._task: asyncio.Task[None] | None = None
        self._stop = asyncio.Event()

    @property
    def lease(self) -> timedelta:
        return timedelta(seconds=self.options.lease)

    def backoff(self, tries: int) -> timedelta:
        seconds = self.options.backoff * 2 ** max(tries - 1, 0)
        return timedelta(seconds=min(seconds, self.options.backoff_max))

    # -- running -------------------------------------------------------------

    def start(self) -> None:
        if self._task is None:
            self._stop.clear()
            self._task = asyncio.create_task(self.run_forever(), name="transfer-worker")

    async def aclose(self) -> None:
        self._stop.set()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def run_forever(self) -> None:
        while not self._stop.is_set():
            try:
                worked = await self.run_once()
            except asyncio.CancelledError:
                raise
            except Exception:  # the loop must outlive one bad job or a database blip
                logger.exception("transfer worker: a try failed unexpectedly")
                worked = False
            if not worked:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), self.options.poll)

    async def run_once(self) -> bool:
        """Claim one due job and work on it; False when none was due."""
        job = await self.queue.claim(self.holder, self.lease)
        if job is None:
            return False
        await self._process(job)
        return True

    # -- one job ---------------------------------------------------------------

    async def _process(self, job: TransferJob) -> None:
        destination = self.destinations.get(job.target_kind)
        target = await destination.target(job) if destination else None
        if destination is None or target is None:
            await self._end(job, "failed", f"the {job.target_kind} {job.target_id} is gone")
            return
        if not await destination.wanted(job):
            await self._end(job, "cancelled", "the consent was withdrawn or has expired")
            return
        try:
            transform = self.transforms.get(job.transform)
        except UnknownTransform:
            await self._end(job, "failed", f"no transform {job.transform!r} in this gateway")
            return
        client = StowClient(target, timeout=self.options.timeout)
        try:
            await self._send_all(job, destination, client, transform, job.transform == IDENTITY)
        except _Retry as retry:
            await self._retry(job, str(retry))
        except StowRefused as exc:
            await self._end(job, "failed", str(exc))
        finally:
            await client.aclose()

    async def _send_all(
        self,
        job: TransferJob,
        destination: Destination,
        client: StowClient,
        transform: Transform,
        identity: bool,
    ) -> None:
        try:
            instances = await self._instances(job.studies)
        except GatewayError as exc:
            raise _Retry(f"the archive here could not list the studies: {exc.message}") from None
        answered = await self.queue.answered(job.id)
        await self.queue.set_total(job.id, self.holder, len(instances))
        todo = [i for i in instances if i.sop not in answered]
        context = TransformContext(job.id, job.target_kind, job.target_id, job.patient_fhir_id)
        for start in range(0, len(todo), self.options.batch):
            if not await self.queue.renew(job.id, self.holder, self.lease):
                return  # cancelled, or taken over after a lapsed lease
            if not await destination.wanted(job):
                await self._end(job, "cancelled", "the consent was withdrawn or has expired")
                return
            batch = todo[start : start + self.options.batch]
            items, parts, sent = [], [], []  # sent: (the original, the UID it went as)
            for instance in batch:
                data = await self._bytes(instance)
                if data is None:
                    items.append(
                        (instance.sop, instance.study, REFUSED, "no longer in the archive")
                    )
                    continue
                changed = await anyio.to_thread.run_sync(
                    transformed, transform, data, context, instance.sop, identity
                )
                if changed is None:
                    items.append(
                        (instance.sop, instance.study, EXCLUDED, "left out by the transform")
                    )
                    continue
                parts.append(changed[0])
                sent.append((instance, changed[1]))
            if parts:
                try:
                    answer = await client.send(parts)
                except StowUnavailable as exc:
                    await self.queue.record(job.id, self.holder, items, len(instances))
                    raise _Retry(str(exc)) from None
                for instance, uid in sent:
                    if uid in answer.failed:
                        items.append((instance.sop, instance.study, REFUSED, answer.failed[uid]))
                    elif uid in answer.stored or answer.status == 200:
                        items.append((instance.sop, instance.study, STORED, ""))
                    else:
                        items.append(
                            (
                                instance.sop,
                                instance.study,
                                REFUSED,
                                "not acknowledged by the receiver",
                            )
                        )
            await self.queue.record(job.id, self.holder, items, len(instances))
        finished = await self.queue.get(job.id)
        if finished is None:
            return
        if finished.failed == 0:
            await self._end(finished, "done", "")
        elif finished.sent > 0:
            await self._end(
                finished, "partial", f"{finished.failed} of {finished.total} instances refused"
            )
        else:
            await self._end(finished, "failed", f"all {finished.failed} instances refused")

    async def _instances(self, studies: Sequence[str]) -> list[_Instance]:
        found: dict[str, _Instance] = {}
        for uid in studies:
            for item in await self.upstream.search_instances({"StudyInstanceUID": uid}, FIELDS):
                series, sop = dj.text(item, "SeriesInstanceUID"), dj.text(item, "SOPInstanceUID")
                if dj.text(item, "StudyInstanceUID") != uid or not series or not sop:
                    continue
                if dj.is_uid(series) and dj.is_uid(sop):
                    found.setdefault(sop, _Instance(uid, series, sop))
        return sorted(found.values(), key=lambda i: (i.study, i.series, i.sop))

    async def _bytes(self, instance: _Instance) -> bytes | None:
        path = f"studies/{instance.study}/series/{instance.series}/instances/{instance.sop}"
        try:
            retrieved = await self.upstream.retrieve(path, AS_STORED)
        except NotFound:
            return None
        except GatewayError as exc:
            raise _Retry(f"the archive here could not give an instance: {exc.message}") from None
        body, pieces = SinglePart(retrieved.media_type), []
        try:
            async for chunk in retrieved.chunks:
                pieces.extend(body.feed(chunk))
            body.finish()
        except GatewayError as exc:
            raise _Retry(f"the archive here sent an unreadable instance: {exc.message}") from None
        finally:
            await retrieved.close()
        return b"".join(pieces)

    async def _retry(self, job: TransferJob, reason: str) -> None:
        current = await self.queue.get(job.id)
        tries = (current.attempts if current else job.attempts) + 1
        if tries >= self.options.attempts:
            await self._end(job, "failed", f"gave up after {tries} tries: {reason}")
            return
        delay = self.backoff(tries)
        logger.info(
            "transfer %s: try %d failed (%s); next in %.0f s",
            job.id,
            tries,
            reason,
            delay.total_seconds(),
        )
        await self.queue.retry_later(job.id, self.holder, reason, delay)

    async def _end(self, job: TransferJob, status: str, reason: str) -> None:
        if not await self.queue.finish(job.id, self.holder, status, reason):
            return
        current = await self.queue.get(job.id) or job
        logger.info("transfer %s: %s %s", job.id, status, reason)
        detail = (
            f"{current.sent} of {current.total} instances stored"
            + (f", {current.failed} refused" if current.failed else "")
            + (f", {current.excluded} left out" if current.excluded else "")
            + (f" ({reason})" if reason else "")
        )
        destination = self.destinations.get(job.target_kind)
        await self.audit.record(
            await destination.ended(current, status, detail)
            if destination is not None
            else push_entry(current, status, detail)
        )


def push_entry(job: TransferJob, status: str, detail: str) -> AuditEntry:
    """The audit record of a push's final status, in the patient's Activity."""
    return AuditEntry(
        category="transfer",
        action=f"push-{status}",
        outcome=outcome(status),
        patient=job.patient_fhir_id,
        detail=f"push {job.id} to {job.target_kind} {job.target_id}: {status}, {detail}",
    )


def outcome(status: str) -> int:
    """The audit outcome of a final status: 200 done, 409 cancelled, 502 otherwise."""
    return 200 if status == "done" else 409 if status == "cancelled" else 502
