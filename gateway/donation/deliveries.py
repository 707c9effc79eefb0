"""The ``research_delivery`` rows: what went (or goes) to which project, under which consent.

A delivery to a project's archive is a job of the transfer engine: its row and its
``transfer_job`` are written in one transaction (the row's unique key, project +
consent + study, lets only one replica queue a study), and its status, counts and
error are read from the job. A study packaged for download has a row without a job,
``delivered`` at once.

Statuses as staff and the project see them: ``queued``, ``sending``, ``delivered``,
``partial`` (some instances refused by the archive), ``failed`` (with the reason),
``stopped`` (the donation was withdrawn, or the project removed, before all went).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import ColumnElement, and_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from gateway.store.models import ResearchConsent, ResearchDelivery, TransferJob, as_utc

# The transfer job's status -> the delivery's.
FROM_JOB = {
    "queued": "queued",
    "running": "sending",
    "done": "delivered",
    "partial": "partial",
    "failed": "failed",
    "cancelled": "stopped",
}
# Rows of an older gateway (before deliveries were jobs) that a job may take over.
UNFINISHED = ("pending", "sending", "failed")


@dataclass(frozen=True)
class Delivered:
    """A delivery as staff and the project see it."""

    id: int
    project_id: str
    consent_id: str
    patient: str
    study_uid: str  # the original: staff only
    pseudonymous_study_uid: str
    patient_pseudonym: str
    status: str
    sent: int
    excluded: int
    refused: int
    attempts: int
    error: str | None
    delivered_at: datetime | None
    withdrawn_at: datetime | None
    job_id: str | None = None

    @property
    def went(self) -> bool:
        """Did at least one copy reach the project (so it is theirs to delete)?"""
        return self.sent > 0 or self.status == "delivered"

    def for_project(self) -> dict[str, object]:
        """What the project may be told: pseudonyms only."""
        return {
            "studyInstanceUID": self.pseudonymous_study_uid,
            "patientId": self.patient_pseudonym,
            "status": self.status,
            "instances": self.sent,
            "excluded": self.excluded,
            "refused": self.refused,
            "attempts": self.attempts,
            "error": self.error,
            "delivered": self.delivered_at.isoformat(timespec="seconds")
            if self.delivered_at
            else None,
            "withdrawn": self.withdrawn_at.isoformat(timespec="seconds")
            if self.withdrawn_at
            else None,
        }


@dataclass(frozen=True)
class Planned:
    """One study's delivery to be queued."""

    project_id: str
    consent_id: str
    patient: str
    study_uid: str
    pseudonymous_study_uid: str
    patient_pseudonym: str


class Deliveries:
    def __init__(self, sessions: async_sessionmaker[AsyncSession]) -> None:
        self.sessions = sessions

    async def known(self, project_id: str) -> set[tuple[str, str]]:
        """(consent, study) of the project's deliveries that need nothing more."""
        query = select(ResearchDelivery.consent_id, ResearchDelivery.study_uid).where(
            ResearchDelivery.project_id == project_id,
            (ResearchDelivery.job_id.is_not(None)) | ResearchDelivery.status.not_in(UNFINISHED),
        )
        async with self.sessions() as session:
            return {(c, s) for c, s in (await session.execute(query)).all()}

    async def queue(self, planned: Planned, job: TransferJob) -> bool:
        """The delivery's row and its job, saved together; False when the study is
        delivered or queued already (by this replica or another)."""
        async with self.sessions() as session:
            session.add(_row(planned, status="queued", job_id=job.id))
            session.add(job)
            try:
                await session.commit()
                return True
            except IntegrityError:
                await session.rollback()
        # A row of an older gateway, never finished: the job takes it over.
        async with self.sessions() as session:
            adopted = await session.execute(
                update(ResearchDelivery)
                .where(
                    _same(planned),
                    ResearchDelivery.job_id.is_(None),
                    ResearchDelivery.status.in_(UNFINISHED),
                )
                .values(job_id=job.id, status="queued")
            )
            if getattr(adopted, "rowcount", 0) != 1:
                await session.rollback()
                return False
            session.add(job)
            await session.commit()
        return True

    async def packaged(self, planned: Planned, *, sent: int, excluded: int) -> bool:
        """A study that went in a download package; False when it was delivered before."""
        row = _row(planned, status="delivered")
        row.sent, row.excluded, row.delivered_at = sent, excluded, datetime.now(UTC)
        async with self.sessions() as session:
            session.add(row)
            try:
                await session.commit()
            except IntegrityError:
                await session.rollback()
                return False
        return True

    async def of_job(self, job_id: str) -> tuple[ResearchDelivery, ResearchConsent] | None:
        """The delivery a job carries, with its donation."""
        query = (
            select(ResearchDelivery, ResearchConsent)
            .join(ResearchConsent, ResearchConsent.id == ResearchDelivery.consent_id)
            .where(ResearchDelivery.job_id == job_id[:64])
        )
        async with self.sessions() as session:
            found = (await session.execute(query)).first()
        return (found[0], found[1]) if found else None

    async def of_project(self, project_id: str, *, withdrawn_only: bool = False) -> list[Delivered]:
        """The project's deliveries, oldest first; ``withdrawn_only``: those with copies
        delivered under a consent since withdrawn (for the project to delete)."""
        listed = await self._listed(ResearchDelivery.project_id == project_id)
        if withdrawn_only:
            return [d for d in listed if d.withdrawn_at is not None and d.went]
        return listed

    async def of_patient(self, patient: str) -> list[Delivered]:
        return await self._listed(ResearchDelivery.patient_fhir_id == patient)

    async def _listed(self, which: ColumnElement[bool]) -> list[Delivered]:
        query = (
            select(ResearchDelivery, ResearchConsent.withdrawn_at, TransferJob)
            .join(ResearchConsent, ResearchConsent.id == ResearchDelivery.consent_id)
            .outerjoin(TransferJob, TransferJob.id == ResearchDelivery.job_id)
            .where(which)
            .order_by(ResearchDelivery.created_at, ResearchDelivery.id)
        )
        async with self.sessions() as session:
            rows = (await session.execute(query)).all()
        return [_delivered(row, withdrawn, job) for row, withdrawn, job in rows]


def _same(planned: Planned) -> ColumnElement[bool]:
    return and_(
        ResearchDelivery.project_id == planned.project_id,
        ResearchDelivery.consent_id == planned.consent_id,
        ResearchDelivery.study_uid == planned.study_uid,
    )


def _row(planned: Planned, *, status: str, job_id: str | None = None) -> ResearchDelivery:
    return ResearchDelivery(
        project_id=planned.project_id,
        consent_id=planned.consent_id,
        patient_fhir_id=planned.patient,
        study_uid=planned.study_uid,
        pseudonymous_study_uid=planned.pseudonymous_study_uid,
        patient_pseudonym=planned.patient_pseudonym,
        job_id=job_id,
        status=status,
        sent=0,
        excluded=0,
        attempts=0,
        created_at=datetime.now(UTC),
    )


def _delivered(
    row: ResearchDelivery, withdrawn: datetime | None, job: TransferJob | None
) -> Delivered:
    if job is not None:
        status, sent, excluded, refused = FROM_JOB[job.status], job.sent, job.excluded, job.failed
        attempts, error = job.attempts, job.last_error or None
        at = job.finished_at if job.status in ("done", "partial") else None
    else:
        status, sent, excluded, refused = row.status, row.sent, row.excluded, 0
        attempts, error, at = row.attempts, row.error, row.delivered_at
    return Delivered(
        id=row.id,
        project_id=row.project_id,
        consent_id=row.consent_id,
        patient=row.patient_fhir_id,
        study_uid=row.study_uid,
        pseudonymous_study_uid=row.pseudonymous_study_uid,
        patient_pseudonym=row.patient_pseudonym,
        status=status,
        sent=sent,
        excluded=excluded,
        refused=refused,
        attempts=attempts,
        error=error,
        delivered_at=as_utc(at) if at else None,
        withdrawn_at=as_utc(withdrawn) if withdrawn else None,
        job_id=row.job_id,
    )
