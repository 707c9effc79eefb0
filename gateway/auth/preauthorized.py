"""What a backend client may see: its pre-authorized access (SMART Imaging Access, Backend
Services mode).

``system/ImagingStudy.rs`` permits search and retrieval only within the client's
pre-authorized access; it does not reach every patient. A backend client sees:

- the patients and studies given to it (``gateway clients access add``), and
- what was shared with its organization (``OrganizationGrants``: for now a table
  of rows held by the organization; issue 14 answers it from the Consents a
  patient gives to an organization),

unless it is registered as an operator (``gateway clients add --operator``),
whose ``system/`` scopes reach every patient. The decision itself is made in
``gateway.authorization``; this module only says what was given.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

from sqlalchemy import and_, delete, or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from gateway.store.database import autocommit
from gateway.store.models import OAuthClient, PreauthorizedAccess

CLIENT = "client"
ORGANIZATION = "organization"
_ACCESS, _CLIENT = PreauthorizedAccess.__table__, OAuthClient.__table__


@dataclass(frozen=True, order=True)
class Entry:
    """One patient (``study`` empty: all their studies) or one study of a patient."""

    patient: str  # the patient's FHIR id here
    issuer: str  # IssuerOfPatientID
    patient_id: str  # PatientID
    study: str = ""

    @property
    def key(self) -> tuple[str, str]:
        return (self.issuer, self.patient_id)


@dataclass(frozen=True)
class Preauthorized:
    """A backend client's access: everything (an operator), or these entries."""

    operator: bool
    entries: frozenset[Entry] = frozenset()

    @property
    def patients(self) -> frozenset[str]:
        """The FHIR ids of every patient the client may see something of."""
        return frozenset(entry.patient for entry in self.entries)


class OrganizationGrants(Protocol):
    """Which patients and studies an organization has been granted (the hook issue 14 fills)."""

    async def granted(self, organization_id: str) -> Sequence[Entry]: ...


def _entry(row: object) -> Entry:
    return Entry(
        patient=str(row.patient_fhir_id),  # type: ignore[attr-defined]
        issuer=str(row.issuer or ""),  # type: ignore[attr-defined]
        patient_id=str(row.patient_id),  # type: ignore[attr-defined]
        study=str(row.study_uid or ""),  # type: ignore[attr-defined]
    )


class AccessTable:
    """The ``preauthorized_access`` rows: given to a client or to an organization."""

    def __init__(self, sessions: async_sessionmaker[AsyncSession]) -> None:
        self.sessions = sessions
        engine = sessions.kw.get("bind")
        assert isinstance(engine, AsyncEngine), "sessions must be bound to an engine"
        self.engine: AsyncEngine = engine
        # Every request of a backend client reads here: single statements, no transaction.
        self.reads = autocommit(engine)

    async def held_by(self, kind: str, holder: str) -> list[Entry]:
        query = (
            select(_ACCESS)
            .where(_ACCESS.c.holder_kind == kind, _ACCESS.c.holder_id == holder)
            .order_by(_ACCESS.c.patient_id, _ACCESS.c.issuer, _ACCESS.c.study_uid)
        )
        async with self.reads.connect() as connection:
            return [_entry(row) for row in (await connection.execute(query)).all()]

    async def give(self, kind: str, holder: str, entries: Iterable[Entry]) -> int:
        """Add entries (those already there stay once); how many were new."""
        added = 0
        for entry in entries:
            async with self.sessions() as session:
                session.add(
                    PreauthorizedAccess(
                        holder_kind=kind,
                        holder_id=holder,
                        patient_fhir_id=entry.patient,
                        issuer=entry.issuer,
                        patient_id=entry.patient_id,
                        study_uid=entry.study,
                    )
                )
                try:
                    await session.commit()
                    added += 1
                except IntegrityError:
                    await session.rollback()
        return added

    async def take_back(self, kind: str, holder: str, entries: Iterable[Entry] | None) -> int:
        """Remove these entries (None: all of the holder's); how many were removed."""
        statement = delete(PreauthorizedAccess).where(
            PreauthorizedAccess.holder_kind == kind, PreauthorizedAccess.holder_id == holder
        )
        if entries is not None:
            wanted = list(entries)
            if not wanted:
                return 0
            statement = statement.where(
                or_(
                    *(
                        and_(
                            PreauthorizedAccess.issuer == e.issuer,
                            PreauthorizedAccess.patient_id == e.patient_id,
                            PreauthorizedAccess.study_uid == e.study,
                        )
                        for e in wanted
                    )
                )
            )
        async with self.sessions() as session:
            result = await session.execute(statement)
            await session.commit()
        return int(getattr(result, "rowcount", 0) or 0)


class TableOrganizationGrants:
    """Organization grants kept in ``preauthorized_access`` (until issue 14's Consents)."""

    def __init__(self, table: AccessTable) -> None:
        self.table = table

    async def granted(self, organization_id: str) -> Sequence[Entry]:
        return await self.table.held_by(ORGANIZATION, organization_id)


class BackendAccess:
    """A backend client's pre-authorized access, read per request (two indexed reads)."""

    def __init__(self, table: AccessTable, organizations: OrganizationGrants) -> None:
        self.table = table
        self.organizations = organizations

    async def of(self, client_id: str, *, local: bool = True) -> Preauthorized:
        """``local``: the client is registered here (its operator flag and organization
        count); a client of an external authorization server is never an operator."""
        operator, organization = False, None
        if local:
            query = select(_CLIENT.c.operator, _CLIENT.c.organization_id).where(
                _CLIENT.c.client_id == client_id
            )
            async with self.table.reads.connect() as connection:
                row = (await connection.execute(query)).first()
            if row is not None:
                operator, organization = bool(row.operator), row.organization_id
        if operator:
            return Preauthorized(operator=True)
        entries = set(await self.table.held_by(CLIENT, client_id))
        if organization:
            entries.update(await self.organizations.granted(organization))
        return Preauthorized(operator=False, entries=frozenset(entries))
