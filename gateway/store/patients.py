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
    def __init__(self, sessions: async_sessionmaker[AsyncSession]) -> None:
        self._sessions = sessions

    async def ids_for(self, keys: Iterable[PatientKey]) -> dict[PatientKey, str]:
        """The FHIR id of each key, creating the missing ones; safe under concurrency."""
        wanted = {(issuer or "", patient_id) for issuer, patient_id in keys if patient_id}
        if not wanted:
            return {}
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
        async with self._sessions() as session:
            record = await session.get(PatientRecord, fhir_id)
            return (record.issuer, record.patient_id) if record else None

    async def keys_for(self, fhir_ids: Iterable[str]) -> dict[str, PatientKey]:
        ids = set(fhir_ids)
        if not ids:
            return {}
        async with self._sessions() as session:
            rows = await session.scalars(select(PatientRecord).where(PatientRecord.id.in_(ids)))
            return {row.id: (row.issuer, row.patient_id) for row in rows}

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
