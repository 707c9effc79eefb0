"""A patient's donation consents: per project, one study or all (future ones included)."""

from __future__ import annotations

import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from gateway.store.models import ResearchConsent, ResearchDelivery, as_utc

ALL = ""  # study_uid of a donation of all the patient's studies, future ones included


@dataclass(frozen=True)
class Donor:
    """Who donates: the patient's FHIR id here and their DICOM key."""

    patient: str
    issuer: str
    patient_id: str


class Consents:
    def __init__(self, sessions: async_sessionmaker[AsyncSession]) -> None:
        self.sessions = sessions

    async def donate(self, project_id: str, donor: Donor, studies: Iterable[str]) -> list[str]:
        """Record donations (``ALL`` among ``studies``: all, future included); one already
        active is not made twice. Answers the ids of the consents now active for them."""
        made: list[str] = []
        async with self.sessions() as session:
            active = {
                c.study_uid: c.id
                for c in await session.scalars(
                    select(ResearchConsent).where(
                        ResearchConsent.project_id == project_id,
                        ResearchConsent.patient_fhir_id == donor.patient,
                        ResearchConsent.withdrawn_at.is_(None),
                    )
                )
            }
            for study in dict.fromkeys(studies):
                if study in active:
                    made.append(active[study])
                    continue
                row = ResearchConsent(
                    id=secrets.token_hex(12),
                    project_id=project_id,
                    patient_fhir_id=donor.patient,
                    issuer=donor.issuer,
                    patient_id=donor.patient_id,
                    study_uid=study,
                    created_at=datetime.now(UTC),
                )
                session.add(row)
                made.append(row.id)
            await session.commit()
        return made

    async def withdraw(
        self, consent_id: str, patient: str | None, by: str
    ) -> ResearchConsent | None:
        """Withdraw one active consent (of ``patient``, when given). Deliveries not yet sent
        stop; what was delivered stays listed for the project to delete."""
        now = datetime.now(UTC)
        async with self.sessions() as session:
            query = select(ResearchConsent).where(
                ResearchConsent.id == consent_id[:64], ResearchConsent.withdrawn_at.is_(None)
            )
            if patient is not None:
                query = query.where(ResearchConsent.patient_fhir_id == patient)
            row = (await session.scalars(query)).first()
            if row is None:
                return None
            changed = await session.execute(
                update(ResearchConsent)
                .where(ResearchConsent.id == row.id, ResearchConsent.withdrawn_at.is_(None))
                .values(withdrawn_at=now, withdrawn_by=by[:200])
            )
            if not getattr(changed, "rowcount", 0):
                await session.rollback()
                return None
            await session.execute(
                update(ResearchDelivery)
                .where(
                    ResearchDelivery.consent_id == row.id,
                    ResearchDelivery.status.in_(("pending", "failed")),
                )
                .values(status="stopped", error="the donation was withdrawn")
            )
            await session.commit()
            await session.refresh(row)
        return row

    async def of_patient(self, patient: str) -> list[ResearchConsent]:
        """Every donation of the patient, withdrawn ones too, newest first."""
        query = (
            select(ResearchConsent)
            .where(ResearchConsent.patient_fhir_id == patient)
            .order_by(ResearchConsent.created_at.desc())
        )
        async with self.sessions() as session:
            return list(await session.scalars(query))

    async def active(self, project_id: str | None = None) -> list[ResearchConsent]:
        """Active donations (of one project), oldest first."""
        query = select(ResearchConsent).where(ResearchConsent.withdrawn_at.is_(None))
        if project_id is not None:
            query = query.where(ResearchConsent.project_id == project_id)
        query = query.order_by(ResearchConsent.created_at, ResearchConsent.id)
        async with self.sessions() as session:
            return list(await session.scalars(query))

    async def is_active(self, consent_id: str) -> bool:
        query = select(ResearchConsent.id).where(
            ResearchConsent.id == consent_id, ResearchConsent.withdrawn_at.is_(None)
        )
        async with self.sessions() as session:
            return (await session.scalars(query)).first() is not None


def withdrawn_at(consent: ResearchConsent) -> datetime | None:
    return as_utc(consent.withdrawn_at) if consent.withdrawn_at else None
