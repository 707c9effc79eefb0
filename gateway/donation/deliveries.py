"""The ``research_delivery`` rows: what went (or goes) to which project, under which consent.

A row is claimed with one conditional ``UPDATE`` (pending or failed, attempts
left -> sending), so replicas never send one study twice at once. Statuses:
``pending``, ``sending``, ``delivered``, ``failed`` (retried while attempts are
left), ``stopped`` (withdrawn before it went).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import and_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from gateway.store.models import ResearchConsent, ResearchDelivery, as_utc


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
    attempts: int
    error: str | None
    delivered_at: datetime | None
    withdrawn_at: datetime | None

    def for_project(self) -> dict[str, object]:
        """What the project may be told: pseudonyms only."""
        return {
            "studyInstanceUID": self.pseudonymous_study_uid,
            "patientId": self.patient_pseudonym,
            "status": self.status,
            "instances": self.sent,
            "excluded": self.excluded,
            "attempts": self.attempts,
            "error": self.error,
            "delivered": self.delivered_at.isoformat(timespec="seconds")
            if self.delivered_at
            else None,
            "withdrawn": self.withdrawn_at.isoformat(timespec="seconds")
            if self.withdrawn_at
            else None,
        }


class Deliveries:
    def __init__(self, sessions: async_sessionmaker[AsyncSession]) -> None:
        self.sessions = sessions

    async def claim(
        self,
        *,
        project_id: str,
        consent_id: str,
        patient: str,
        study_uid: str,
        pseudonymous_study_uid: str,
        patient_pseudonym: str,
        max_attempts: int,
    ) -> int | None:
        """The row's id when this process is now the one to send it; else None
        (delivered, being sent elsewhere, stopped, or out of attempts)."""
        async with self.sessions() as session:
            session.add(
                ResearchDelivery(
                    project_id=project_id,
                    consent_id=consent_id,
                    patient_fhir_id=patient,
                    study_uid=study_uid,
                    pseudonymous_study_uid=pseudonymous_study_uid,
                    patient_pseudonym=patient_pseudonym,
                    status="pending",
                    created_at=datetime.now(UTC),
                )
            )
            try:
                await session.commit()
            except IntegrityError:
                await session.rollback()
        where = and_(
            ResearchDelivery.project_id == project_id,
            ResearchDelivery.consent_id == consent_id,
            ResearchDelivery.study_uid == study_uid,
            ResearchDelivery.status.in_(("pending", "failed")),
            ResearchDelivery.attempts < max_attempts,
        )
        async with self.sessions() as session:
            found = (await session.scalars(select(ResearchDelivery.id).where(where))).first()
            if found is None:
                return None
            changed = await session.execute(
                update(ResearchDelivery)
                .where(where, ResearchDelivery.id == found)
                .values(status="sending", attempts=ResearchDelivery.attempts + 1)
            )
            await session.commit()
        return int(found) if getattr(changed, "rowcount", 0) == 1 else None

    async def finish(
        self,
        row_id: int,
        *,
        status: str,
        sent: int,
        excluded: int,
        error: str | None = None,
        pseudonymous_study_uid: str | None = None,
    ) -> None:
        values: dict[str, object] = {"status": status, "sent": sent, "excluded": excluded}
        values["error"] = error[:2000] if error else None
        if status == "delivered":
            values["delivered_at"] = datetime.now(UTC)
        if pseudonymous_study_uid:
            values["pseudonymous_study_uid"] = pseudonymous_study_uid
        async with self.sessions() as session:
            await session.execute(
                update(ResearchDelivery)
                .where(ResearchDelivery.id == row_id, ResearchDelivery.status == "sending")
                .values(**values)
            )
            await session.commit()

    async def of_project(self, project_id: str, *, withdrawn_only: bool = False) -> list[Delivered]:
        """The project's deliveries, oldest first; ``withdrawn_only``: those delivered under a
        consent since withdrawn (for the project to delete)."""
        query = (
            select(ResearchDelivery, ResearchConsent.withdrawn_at)
            .join(ResearchConsent, ResearchConsent.id == ResearchDelivery.consent_id)
            .where(ResearchDelivery.project_id == project_id)
            .order_by(ResearchDelivery.created_at, ResearchDelivery.id)
        )
        if withdrawn_only:
            query = query.where(
                ResearchConsent.withdrawn_at.is_not(None), ResearchDelivery.status == "delivered"
            )
        async with self.sessions() as session:
            rows = (await session.execute(query)).all()
        return [_delivered(row, withdrawn) for row, withdrawn in rows]

    async def of_patient(self, patient: str) -> list[Delivered]:
        query = (
            select(ResearchDelivery, ResearchConsent.withdrawn_at)
            .join(ResearchConsent, ResearchConsent.id == ResearchDelivery.consent_id)
            .where(ResearchDelivery.patient_fhir_id == patient)
            .order_by(ResearchDelivery.created_at, ResearchDelivery.id)
        )
        async with self.sessions() as session:
            rows = (await session.execute(query)).all()
        return [_delivered(row, withdrawn) for row, withdrawn in rows]


def _delivered(row: ResearchDelivery, withdrawn: datetime | None) -> Delivered:
    return Delivered(
        id=row.id,
        project_id=row.project_id,
        consent_id=row.consent_id,
        patient=row.patient_fhir_id,
        study_uid=row.study_uid,
        pseudonymous_study_uid=row.pseudonymous_study_uid,
        patient_pseudonym=row.patient_pseudonym,
        status=row.status,
        sent=row.sent,
        excluded=row.excluded,
        attempts=row.attempts,
        error=row.error,
        delivered_at=as_utc(row.delivered_at) if row.delivered_at else None,
        withdrawn_at=as_utc(withdrawn) if withdrawn else None,
    )
