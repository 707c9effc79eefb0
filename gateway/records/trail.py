"""The gateway's own records about patients, within a caller's access: the audit trail,
and the consents (app grants and share links) patients gave.

A caller confined to patients (a patient token, the portal, a share) sees
only those patients' entries, whatever it asks for.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from gateway.audit import Auditor
from gateway.errors import NotFound
from gateway.records.access import Access
from gateway.store.models import (
    Account,
    AuditRecord,
    Grant,
    OAuthClient,
    Organization,
    OrganizationSend,
    ResearchConsent,
    ResearchProject,
    ShareLink,
)

MAX_CONSENTS = 500
SHARE_PREFIX = "share-"
RESEARCH_PREFIX = "research-"
SEND_PREFIX = "org-"


@dataclass(frozen=True)
class GrantConsent:
    """A patient's grant to an app."""

    grant: Grant
    app: str
    patient: str


@dataclass(frozen=True)
class SendConsent:
    """Studies a patient (or staff for them) sent to an organization."""

    send: OrganizationSend
    organization: str  # its name


@dataclass(frozen=True)
class Consents:
    grants: list[GrantConsent]
    shares: list[ShareLink]
    sends: list[SendConsent] = field(default_factory=list)
    # Donations to research projects, with the project's name.
    donations: list[tuple[ResearchConsent, str]] = field(default_factory=list)


def _within(access: Access, patient: str | None) -> frozenset[str] | None:
    """The patients to look at: the one asked for, within what the caller is confined to."""
    if access.patients is None:
        return None if patient is None else frozenset({patient})
    if patient is None:
        return access.patients
    return access.patients & {patient}


class TrailRecords:
    def __init__(self, auditor: Auditor, sessions: async_sessionmaker[AsyncSession]) -> None:
        self.auditor = auditor
        self.sessions = sessions

    async def events(
        self,
        access: Access,
        *,
        patient: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        agent: str | None = None,
        study: str | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> tuple[list[AuditRecord], int]:
        """Audit records, newest first, and how many match in all."""
        patients = _within(access, patient)
        if patients is not None and not patients:
            return [], 0
        return await self.auditor.search(
            patients=patients,
            since=since,
            until=until,
            agent=agent,
            study=study,
            limit=limit,
            offset=offset,
        )

    async def event(self, access: Access, record_id: str) -> AuditRecord:
        record = await self.auditor.get(record_id[:64])
        if record is None or (
            access.patients is not None and record.patient not in access.patients
        ):
            raise NotFound(f"AuditEvent/{record_id[:64]} is not known.")
        return record

    async def consents(
        self, access: Access, *, patient: str | None = None, consent_id: str | None = None
    ) -> Consents:
        """Patients' grants, share links and research donations (of one patient, or one),
        newest first."""
        patients = _within(access, patient)
        if patients is not None and not patients:
            return Consents([], [], [])
        grants: list[GrantConsent] = []
        shares: list[ShareLink] = []
        sends: list[SendConsent] = []
        donations: list[tuple[ResearchConsent, str]] = []
        kind = (
            None
            if consent_id is None
            else "share"
            if consent_id.startswith(SHARE_PREFIX)
            else "send"
            if consent_id.startswith(SEND_PREFIX)
            else "research"
            if consent_id.startswith(RESEARCH_PREFIX)
            else "grant"
        )
        async with self.sessions() as session:
            if kind in (None, "research"):
                donated = (
                    select(ResearchConsent, ResearchProject.name)
                    .join(ResearchProject, ResearchProject.id == ResearchConsent.project_id)
                    .order_by(ResearchConsent.created_at.desc())
                    .limit(MAX_CONSENTS)
                )
                if patients is not None:
                    donated = donated.where(ResearchConsent.patient_fhir_id.in_(sorted(patients)))
                if consent_id is not None:
                    donated = donated.where(
                        ResearchConsent.id == consent_id.removeprefix(RESEARCH_PREFIX)
                    )
                donations.extend(
                    (row, name) for row, name in (await session.execute(donated)).all()
                )
            if kind in (None, "grant"):
                query = (
                    select(Grant, OAuthClient.name, Account.patient_fhir_id)
                    .join(Account, Account.id == Grant.account_id)
                    .join(OAuthClient, OAuthClient.client_id == Grant.client_id)
                    .where(Account.kind == "patient")
                    .order_by(Grant.created_at.desc())
                    .limit(MAX_CONSENTS)
                )
                if patients is not None:
                    query = query.where(Account.patient_fhir_id.in_(sorted(patients)))
                if consent_id is not None:
                    query = query.where(Grant.id == consent_id)
                for grant, app, owner in (await session.execute(query)).all():
                    grants.append(GrantConsent(grant, app, owner or ""))
            if kind in (None, "share"):
                links = select(ShareLink).order_by(ShareLink.created_at.desc()).limit(MAX_CONSENTS)
                if patients is not None:
                    links = links.where(ShareLink.patient_fhir_id.in_(sorted(patients)))
                if consent_id is not None:
                    links = links.where(ShareLink.id == consent_id.removeprefix(SHARE_PREFIX))
                shares.extend(await session.scalars(links))
            if kind in (None, "send"):
                sent = (
                    select(OrganizationSend, Organization.name)
                    .outerjoin(Organization, Organization.id == OrganizationSend.organization_id)
                    .order_by(OrganizationSend.created_at.desc())
                    .limit(MAX_CONSENTS)
                )
                if patients is not None:
                    sent = sent.where(OrganizationSend.patient_fhir_id.in_(sorted(patients)))
                if consent_id is not None:
                    sent = sent.where(OrganizationSend.id == consent_id.removeprefix(SEND_PREFIX))
                for send, name in (await session.execute(sent)).all():
                    sends.append(SendConsent(send, name or send.organization_id))
        return Consents(grants, shares, sends, donations)
