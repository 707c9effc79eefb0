"""Research delivery as jobs of the transfer engine (``gateway/transfers/``).

``DeliveryPlanner`` makes passes (when a patient donates, when studies are stored,
every ``GATEWAY_RESEARCH_SWEEP_SECONDS``, on demand): each donated study of a project
with an archive that has no delivery yet gets one transfer job (target
``research/{project}``, transform ``research-deid``, the donation as the job's
consent) saved with its ``research_delivery`` row. The transfer worker does the rest,
as for any push: lease, batches, exponential backoff, per-instance resume after a
restart, final status.

``ResearchJobs`` is what the worker asks of such a job: where the project's archive
is (the destination), whether the donation still holds (checked before every batch),
the de-identification of each instance (the job's transform: an instance left out
by the profile, unreadable, or not the donor's is counted as excluded and never
sent), and the final status's record in the patient's Activity.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import anyio.from_thread
from pydantic import SecretStr

from gateway.audit import AuditEntry
from gateway.dicomweb.dicomjson import PatientKey
from gateway.donation import copies
from gateway.donation.consents import Consents
from gateway.donation.deliveries import Deliveries, Planned
from gateway.donation.projects import Project, Projects
from gateway.store.models import TransferJob
from gateway.transfers.queue import TransferQueue
from gateway.transfers.stow import StowTarget
from gateway.transfers.transforms import TransformContext
from gateway.transfers.worker import outcome

logger = logging.getLogger(__name__)
RESEARCH = "research"  # the jobs' target kind
DEIDENTIFY = "research-deid"  # their transform
ACTIONS = {
    "done": "deliver",
    "partial": "deliver-partial",
    "failed": "deliver-failed",
    "cancelled": "deliver-stopped",
}


@dataclass(frozen=True)
class Donated:
    """One study a patient donated to a project, under one consent."""

    consent_id: str
    patient: str
    key: tuple[str, str]  # (issuer, PatientID)
    study_uid: str


DonatedOf = Callable[[Project, frozenset[str] | None], Awaitable[list[Donated]]]


def planned(project: Project, donated: Donated) -> Planned:
    return Planned(
        project_id=project.id,
        consent_id=donated.consent_id,
        patient=donated.patient,
        study_uid=donated.study_uid,
        pseudonymous_study_uid=project.new_uid(donated.study_uid),
        patient_pseudonym=project.pseudonyms.patient_id(donated.key[1], donated.key[0]),
    )


@dataclass(frozen=True)
class _Job:
    """What a research job needs beyond its row: the project and the donor."""

    project: Project
    donor: PatientKey
    consent_id: str


class ResearchJobs:
    """The transfer worker's destination for ``research`` jobs, and their transform."""

    def __init__(self, projects: Projects, consents: Consents, deliveries: Deliveries) -> None:
        self.projects = projects
        self.consents = consents
        self.deliveries = deliveries
        self._known: dict[str, _Job] = {}

    async def _job(self, job_id: str) -> _Job | None:
        if job_id in self._known:
            return self._known[job_id]
        found = await self.deliveries.of_job(job_id)
        if found is None:
            return None
        row, consent = found
        project = await self.projects.get(row.project_id)
        if project is None:
            return None
        made = _Job(project, (consent.issuer or "", consent.patient_id), consent.id)
        self._known[job_id] = made
        return made

    async def target(self, job: TransferJob) -> StowTarget | None:
        known = await self._job(job.id)
        if known is None or not known.project.archive_url:
            return None
        token = known.project.archive_token
        return StowTarget(
            url=known.project.archive_url,
            auth="bearer" if token else "none",
            secret=SecretStr(token) if token else None,
        )

    async def wanted(self, job: TransferJob) -> bool:
        known = await self._job(job.id)
        return (
            known is not None
            and await self.projects.get(known.project.id) is not None
            and await self.consents.is_active(known.consent_id)
        )

    async def ended(self, job: TransferJob, status: str, detail: str) -> AuditEntry:
        known = await self._job(job.id)
        self._known.pop(job.id, None)
        name = known.project.name if known else job.target_id
        return AuditEntry(
            category="research",
            action=ACTIONS[status],
            outcome=outcome(status),
            user=f"research/{job.target_id}",
            patient=job.patient_fhir_id,
            study=job.studies[0] if job.studies else None,
            detail=f"{name}: {detail}"[:500],
        )

    def transform(self, data: bytes, context: TransformContext) -> bytes | None:
        """An instance as stored -> its de-identified copy (in a worker thread)."""
        known = self._known.get(context.job_id) or anyio.from_thread.run(self._job, context.job_id)
        if known is None:
            return None
        return copies.deidentified_part10(data, known.project, known.donor)


class DeliveryPlanner:
    """Queues the deliveries of donated studies: on demand (``run_once``), when kicked
    (a donation, a new study) and every ``sweep_seconds`` in the background."""

    def __init__(
        self,
        *,
        projects: Projects,
        deliveries: Deliveries,
        donated: DonatedOf,
        queue: TransferQueue,
        sweep_seconds: float,
    ) -> None:
        self.projects = projects
        self.deliveries = deliveries
        self.donated = donated
        self.queue = queue
        self.sweep_seconds = sweep_seconds
        self._lock = asyncio.Lock()
        self._tasks: set[asyncio.Task[None]] = set()

    async def run_once(self, patients: frozenset[str] | None = None) -> int:
        """One pass over projects with an archive (these patients' donations, when
        given); answers how many deliveries it queued."""
        queued = 0
        async with self._lock:
            for project in await self.projects.all():
                if not project.delivers_to_archive:
                    continue
                known = await self.deliveries.known(project.id)
                for donated in await self.donated(project, patients):
                    if (donated.consent_id, donated.study_uid) in known:
                        continue
                    job = self.queue.new_job(
                        target_kind=RESEARCH,
                        target_id=project.id,
                        studies=[donated.study_uid],
                        send_id=donated.consent_id,
                        patient=donated.patient,
                        transform=DEIDENTIFY,
                    )
                    if await self.deliveries.queue(planned(project, donated), job):
                        queued += 1
        return queued

    def kick(self, patients: frozenset[str] | None = None) -> None:
        """Queue in the background now (after a donation, or when new studies came)."""
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
