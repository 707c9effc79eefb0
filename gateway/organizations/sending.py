"""Studies sent to an organization: a patient's consent, revocable, read on every request.

Each send is a FHIR Consent (``org-{id}``). While it is active (not withdrawn, not
expired) the organization's backend clients see exactly its studies over FHIR and
DICOMweb (:class:`ConsentGrants`, the organization hook of the backend clients'
pre-authorized access); withdrawn, they are refused at their next request. A send to
an organization with a STOW-RS endpoint also queues a push (:mod:`gateway.transfers`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from enum import StrEnum

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from gateway.auth.preauthorized import AccessTable, Entry, TableOrganizationGrants
from gateway.auth.secrets import new_id
from gateway.store.models import OrganizationSend, as_utc, utcnow

MAX_STUDIES = 200
MAX_REASON = 500


class SendState(StrEnum):
    active = "active"
    expired = "expired"
    revoked = "revoked"


class SendError(ValueError):
    """A send cannot be made as asked; the message is for the person asking."""


def state_of(send: OrganizationSend, now: datetime) -> SendState:
    if send.revoked_at is not None:
        return SendState.revoked
    if as_utc(send.expires_at) <= now:
        return SendState.expired
    return SendState.active


class Sends:
    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        *,
        max_days: int,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.sessions = sessions
        self.max_days = max_days
        self.clock = clock

    async def create(
        self,
        *,
        organization_id: str,
        patient_fhir_id: str,
        patient_key: tuple[str, str],
        studies: Sequence[str],
        days: int,
        account_id: str | None = None,
        sent_by: str = "",
        reason: str = "",
    ) -> OrganizationSend:
        """A new send of ``studies`` (already checked to be the patient's own)."""
        chosen = list(dict.fromkeys(studies))
        if not chosen:
            raise SendError("Choose at least one study to send.")
        if len(chosen) > MAX_STUDIES:
            raise SendError(f"A send holds at most {MAX_STUDIES} studies.")
        if not 1 <= days <= self.max_days:
            raise SendError(f"Access lasts from 1 to {self.max_days} days.")
        reason = " ".join(reason.split())
        if len(reason) > MAX_REASON:
            raise SendError(f"The reason is at most {MAX_REASON} characters.")
        if sent_by and not reason:
            raise SendError("Staff sending on a patient's behalf must give the reason.")
        now = self.clock()
        send = OrganizationSend(
            id=new_id(),
            organization_id=organization_id,
            patient_fhir_id=patient_fhir_id,
            issuer=patient_key[0],
            patient_id=patient_key[1],
            account_id=account_id,
            studies=chosen,
            sent_by=sent_by,
            reason=reason,
            created_at=now,
            expires_at=now + timedelta(days=days),
        )
        async with self.sessions() as session:
            session.add(send)
            await session.commit()
        return send

    async def get(self, send_id: str) -> OrganizationSend | None:
        async with self.sessions() as session:
            return await session.get(OrganizationSend, send_id[:64])

    async def of_patient(self, patient_fhir_id: str) -> list[OrganizationSend]:
        async with self.sessions() as session:
            found = await session.scalars(
                select(OrganizationSend)
                .where(OrganizationSend.patient_fhir_id == patient_fhir_id)
                .order_by(OrganizationSend.created_at.desc())
            )
            return list(found)

    async def recent(self, limit: int = 500) -> list[OrganizationSend]:
        async with self.sessions() as session:
            found = await session.scalars(
                select(OrganizationSend).order_by(OrganizationSend.created_at.desc()).limit(limit)
            )
            return list(found)

    async def revoke(self, send_id: str, *, patient_fhir_id: str | None = None) -> bool:
        """Withdraw a send (only the patient's own when ``patient_fhir_id`` is given)."""
        statement = update(OrganizationSend).where(
            OrganizationSend.id == send_id[:64], OrganizationSend.revoked_at.is_(None)
        )
        if patient_fhir_id is not None:
            statement = statement.where(OrganizationSend.patient_fhir_id == patient_fhir_id)
        async with self.sessions() as session:
            revoked = await session.execute(statement.values(revoked_at=self.clock()))
            await session.commit()
        return bool(revoked.rowcount)  # type: ignore[attr-defined]

    async def revoke_organization(self, organization_id: str) -> list[OrganizationSend]:
        """Withdraw every send to the organization not withdrawn yet (it is being removed);
        answers them."""
        now = self.clock()
        async with self.sessions() as session:
            found = list(
                await session.scalars(
                    select(OrganizationSend).where(
                        OrganizationSend.organization_id == organization_id,
                        OrganizationSend.revoked_at.is_(None),
                    )
                )
            )
            for send in found:
                send.revoked_at = now
            await session.commit()
        return found

    async def granted(self, organization_id: str) -> list[Entry]:
        """The studies of the organization's active sends, as pre-authorized entries."""
        now = self.clock()
        async with self.sessions() as session:
            found = await session.scalars(
                select(OrganizationSend).where(
                    OrganizationSend.organization_id == organization_id,
                    OrganizationSend.revoked_at.is_(None),
                    OrganizationSend.expires_at > now,
                )
            )
            return [
                Entry(send.patient_fhir_id, send.issuer, send.patient_id, str(uid))
                for send in found
                for uid in send.studies or []
            ]


class ConsentGrants:
    """The organization hook: rows given by hand (``clients access add --organization``)
    and the studies of the organization's active sends."""

    def __init__(self, table: AccessTable, sends: Sends) -> None:
        self.by_hand = TableOrganizationGrants(table)
        self.sends = sends

    async def granted(self, organization_id: str) -> Sequence[Entry]:
        return [
            *await self.by_hand.granted(organization_id),
            *await self.sends.granted(organization_id),
        ]
