"""Where de-identified copies go, and the runner that sends them.

``ArchiveDelivery`` is the one interface the runner sends through. For now it is
``StowDelivery``: STOW-RS straight to the project's archive from a background
task, with a simple retry (a failed study is tried again at the next pass, up to
``GATEWAY_RESEARCH_DELIVERY_ATTEMPTS`` times). It is meant to move onto the
transfer engine (``gateway/transfers/``, issue 14 phase 2: progress, backoff,
resume after a restart) by implementing this interface with a transfer job whose
transform is the de-identification.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import httpx
import orjson

from gateway.audit import AuditEntry, Auditor
from gateway.dicomweb.upstream import Upstream
from gateway.donation import copies
from gateway.donation.consents import Consents
from gateway.donation.deliveries import Deliveries
from gateway.donation.projects import Project, Projects
from gateway.errors import GatewayError
from gateway.research.deid import Excluded

logger = logging.getLogger(__name__)
BATCH_BYTES = 8 << 20
BATCH_PARTS = 25
FAILED_SOP_SEQUENCE = "00081198"


class DeliveryFailed(Exception):
    """The archive did not take the copies."""


class ArchiveDelivery(Protocol):
    """Sends one batch of de-identified Part 10 instances to a project's archive."""

    async def send(self, project: Project, parts: Sequence[bytes]) -> None: ...

    async def aclose(self) -> None: ...


class StowDelivery:
    """STOW-RS (PS3.18 10.5) to ``{archive_url}/studies``, with the project's bearer if any."""

    def __init__(self, timeout: float = 60.0) -> None:
        self._client = httpx.AsyncClient(timeout=timeout, follow_redirects=False)

    async def send(self, project: Project, parts: Sequence[bytes]) -> None:
        if not project.archive_url:
            raise DeliveryFailed("the project has no archive")
        boundary = secrets.token_hex(16)
        headers = {
            "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}',
            "Accept": "application/dicom+json",
        }
        if project.archive_token:
            headers["Authorization"] = f"Bearer {project.archive_token}"
        try:
            answer = await self._client.post(
                f"{project.archive_url}/studies",
                content=_multipart(parts, boundary),
                headers=headers,
            )
        except httpx.HTTPError as exc:
            raise DeliveryFailed(
                f"the archive could not be reached ({type(exc).__name__})"
            ) from None
        if answer.status_code not in (200, 202):
            raise DeliveryFailed(f"the archive answered {answer.status_code}")
        try:
            body = orjson.loads(answer.content) if answer.content else {}
        except orjson.JSONDecodeError:
            body = {}
        if isinstance(body, dict) and body.get(FAILED_SOP_SEQUENCE, {}).get("Value"):
            raise DeliveryFailed("the archive refused some instances")

    async def aclose(self) -> None:
        await self._client.aclose()


async def _multipart(parts: Sequence[bytes], boundary: str) -> AsyncIterator[bytes]:
    for part in parts:
        yield f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()
        yield part
        yield b"\r\n"
    yield f"--{boundary}--\r\n".encode()


@dataclass(frozen=True)
class Donated:
    """One study a patient donated to a project, under one consent."""

    consent_id: str
    patient: str
    key: tuple[str, str]  # (issuer, PatientID)
    study_uid: str


DonatedOf = Callable[[Project, frozenset[str] | None], Awaitable[list[Donated]]]


class DeliveryRunner:
    """Delivers donated studies to projects with an archive: on demand (``run_once``),
    when kicked (a donation, a new study) and every ``sweep_seconds`` in the background."""

    def __init__(
        self,
        *,
        projects: Projects,
        consents: Consents,
        deliveries: Deliveries,
        donated: DonatedOf,
        upstream: Upstream,
        audit: Auditor,
        archive: ArchiveDelivery,
        sweep_seconds: float,
        max_attempts: int,
    ) -> None:
        self.projects = projects
        self.consents = consents
        self.deliveries = deliveries
        self.donated = donated
        self.upstream = upstream
        self.audit = audit
        self.archive = archive
        self.sweep_seconds = sweep_seconds
        self.max_attempts = max_attempts
        self._lock = asyncio.Lock()
        self._tasks: set[asyncio.Task[None]] = set()

    async def run_once(self, patients: frozenset[str] | None = None) -> int:
        """One pass: every donated study of projects with an archive that is not yet
        delivered (of these patients, when given). Answers how many were delivered."""
        delivered = 0
        async with self._lock:
            for project in await self.projects.all():
                if not project.delivers_to_archive:
                    continue
                for donated in await self.donated(project, patients):
                    if await self._deliver(project, donated):
                        delivered += 1
        return delivered

    def kick(self, patients: frozenset[str] | None = None) -> None:
        """Deliver in the background now (after a donation, or when new studies came)."""
        task = asyncio.ensure_future(self._quietly(patients))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def start(self) -> None:
        if self.sweep_seconds > 0:
            task = asyncio.ensure_future(self._sweep())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def aclose(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.archive.aclose()

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(self.sweep_seconds)
            await self._quietly(None)

    async def _quietly(self, patients: frozenset[str] | None) -> None:
        try:
            await self.run_once(patients)
        except asyncio.CancelledError:
            raise
        except Exception:  # a background pass must not die; the next one tries again
            logger.exception("research delivery pass failed")

    async def _deliver(self, project: Project, donated: Donated) -> bool:
        row = await self.deliveries.claim(
            project_id=project.id,
            consent_id=donated.consent_id,
            patient=donated.patient,
            study_uid=donated.study_uid,
            pseudonymous_study_uid=project.new_uid(donated.study_uid),
            patient_pseudonym=project.pseudonyms.patient_id(donated.key[1], donated.key[0]),
            max_attempts=self.max_attempts,
        )
        if row is None:
            return False
        sent = excluded = 0
        batch: list[bytes] = []
        try:
            async for made in copies.study_copies(
                self.upstream, project, donated.study_uid, donated.key
            ):
                if isinstance(made, Excluded):
                    excluded += 1
                    continue
                batch.append(made.data)
                if len(batch) >= BATCH_PARTS or sum(map(len, batch)) >= BATCH_BYTES:
                    sent += await self._send(project, donated, batch)
            sent += await self._send(project, donated, batch)
        except _Withdrawn:
            await self.deliveries.finish(
                row,
                status="stopped",
                sent=sent,
                excluded=excluded,
                error="the donation was withdrawn during delivery",
            )
            return False
        except (DeliveryFailed, GatewayError) as exc:
            message = str(exc) or type(exc).__name__
            await self.deliveries.finish(
                row, status="failed", sent=sent, excluded=excluded, error=message
            )
            await self._audit(project, donated, 502, message)
            return False
        await self.deliveries.finish(row, status="delivered", sent=sent, excluded=excluded)
        await self._audit(project, donated, 200, f"{sent} instances, {excluded} left out")
        return True

    async def _send(self, project: Project, donated: Donated, batch: list[bytes]) -> int:
        if not batch:
            return 0
        # Withdrawal stops what has not gone yet, between two batches too.
        if not await self.consents.is_active(donated.consent_id):
            raise _Withdrawn()
        await self.archive.send(project, batch)
        count = len(batch)
        batch.clear()
        return count

    async def _audit(self, project: Project, donated: Donated, outcome: int, detail: str) -> None:
        await self.audit.record(
            AuditEntry(
                category="research",
                action="deliver",
                outcome=outcome,
                user=f"research/{project.id}",
                patient=donated.patient,
                study=donated.study_uid,
                detail=f"{project.name}: {detail}"[:500],
            )
        )


class _Withdrawn(Exception):
    pass
