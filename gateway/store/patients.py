"""The patient index: (issuer, PatientID) <-> opaque FHIR Patient id."""

from __future__ import annotations

import secrets
from collections.abc import Iterable

from sqlalchemy import select, tuple_
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from gateway.store.models import PatientRecord

PatientKey = tuple[str, str]


def new_patient_id() -> str:
    # 128 random bits; FHIR ids allow [A-Za-z0-9-.]{1,64}.
    return secrets.token_hex(16)


class PatientIndex:
    """Rows are never updated or deleted, so each process may remember what it has read."""

    def __init__(
        self, sessions: async_sessionmaker[AsyncSession], memo_size: int = 100_000
    ) -> None:
        self._sessions = sessions
        self._ids: dict[PatientKey, str] = {}
        self._keys: dict[str, PatientKey] = {}
        self._memo_size = memo_size

    def _remember(self, found: dict[PatientKey, str]) -> None:
        if len(self._ids) + len(found) > self._memo_size:
            self._ids.clear()
            self._keys.clear()
        self._ids.update(found)
        self._keys.update({fhir_id: key for key, fhir_id in found.items()})

    async def ids_for(self, keys: Iterable[PatientKey]) -> dict[PatientKey, str]:
        """The FHIR id of each key, creating the missing ones; safe under concurrency."""
        wanted = {(issuer or "", patient_id) for issuer, patient_id in keys if patient_id}
        known = {key: self._ids[key] for key in wanted if key in self._ids}
        if len(known) == len(wanted):
            return known
        found = await self._load_or_create(wanted - known.keys())
        self._remember(found)
        return {**known, **found}

    async def _load_or_create(self, wanted: set[PatientKey]) -> dict[PatientKey, str]:
        async with self._sessions() as session:
            found = await self._select(session, wanted)
            missing = wanted - found.keys()
            if missing:
                dialect = session.get_bind().dialect.name
                insert = postgresql_insert if dialect == "postgresql" else sqlite_insert
                rows = [
                    {"id": new_patient_id(), "issuer": issuer, "patient_id": patient_id}
                    for issuer, patient_id in sorted(missing)
                ]
                # Another replica may insert the same key meanwhile; its id wins.
                await session.execute(
                    insert(PatientRecord)
                    .values(rows)
                    .on_conflict_do_nothing(index_elements=["issuer", "patient_id"])
                )
                await session.commit()
                found.update(await self._select(session, missing))
            return found

    async def key_for(self, fhir_id: str) -> PatientKey | None:
        return (await self.keys_for([fhir_id])).get(fhir_id)

    async def keys_for(self, fhir_ids: Iterable[str]) -> dict[str, PatientKey]:
        ids = set(fhir_ids)
        known = {i: self._keys[i] for i in ids if i in self._keys}
        unknown = ids - known.keys()
        if not unknown:
            return known
        async with self._sessions() as session:
            rows = await session.scalars(
                select(PatientRecord).where(PatientRecord.id.in_(sorted(unknown)))
            )
            found = {row.id: (row.issuer, row.patient_id) for row in rows}
        self._remember({key: fhir_id for fhir_id, key in found.items()})
        return {**known, **found}

    @staticmethod
    async def _select(session: AsyncSession, keys: set[PatientKey]) -> dict[PatientKey, str]:
        found: dict[PatientKey, str] = {}
        ordered = sorted(keys)
        # Bounded IN lists keep within SQLite's parameter limit.
        for start in range(0, len(ordered), 400):
            chunk = ordered[start : start + 400]
            rows = await session.execute(
                select(PatientRecord.issuer, PatientRecord.patient_id, PatientRecord.id).where(
                    tuple_(PatientRecord.issuer, PatientRecord.patient_id).in_(chunk)
                )
            )
            for issuer, patient_id, fhir_id in rows:
                found[(issuer, patient_id)] = fhir_id
        return found
