"""The study index's rows: what the PACS last said of each patient's studies.

The records layer decides when to ask the PACS again and what the rows mean;
this module only reads and writes them, the same way on SQLite and
PostgreSQL, so that every replica on one database sees one index. DICOM JSON
is stored as orjson text: it is read on every search, and orjson parses it
several times faster than the standard library.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Generic, TypeVar

import orjson
from sqlalchemy import and_, bindparam, delete, or_, select, tuple_, update
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from gateway.store.database import autocommit
from gateway.store.models import (
    IndexedPatient,
    IndexedStudy,
    IndexFeed,
    StudyDetailRecord,
    as_utc,
)

T = TypeVar("T")
PatientKey = tuple[str, str]
DicomJson = dict[str, Any]
# Bounded IN lists keep within SQLite's parameter limit.
CHUNK = 400
# Parsed rows kept per process, keyed by their stored text (see ParsedMemo).
MEMO_ENTRIES = 4096
# ... and at most this much stored JSON text behind them (parsed, several times that).
MEMO_CHARS = 16_000_000


class ParsedMemo(Generic[T]):
    """Stored JSON text -> what it parses to, kept per process.

    Keyed by the text itself, so it cannot go stale: a row another replica
    rewrote is new text, parsed anew. A hit returns the very object returned
    before, which callers treat as read-only (and the records layer may key
    its own memos on). Bounded in entries and in text (a study's details can
    hold thousands of instances): emptied when full, the simplest eviction; a
    cold entry costs one parse.
    """

    def __init__(
        self,
        parse: Callable[[tuple[str, ...]], T],
        entries: int = MEMO_ENTRIES,
        chars: int = MEMO_CHARS,
    ) -> None:
        self._parse = parse
        self._entries = entries
        self._chars = chars
        self._held = 0  # characters of stored text behind the entries
        self._parsed: dict[tuple[str, ...], T] = {}

    def get(self, key: tuple[str, ...]) -> T:
        found = self._parsed.get(key)
        if found is None:
            size = sum(len(part) for part in key)
            if len(self._parsed) >= self._entries or self._held + size > self._chars:
                self._parsed.clear()
                self._held = 0
            found = self._parse(key)
            if size <= self._chars:
                self._parsed[key] = found
                self._held += size
        return found


@dataclass(frozen=True)
class IndexedStudyRow:
    uid: str
    record: DicomJson
    reports: list[DicomJson]
    # When this row's text was last written: the revalidation that found the study new
    # or changed (its ImagingStudy's meta.lastUpdated). None: not written yet.
    indexed_at: datetime | None = None


@dataclass(frozen=True)
class PatientStudies:
    """A patient's indexed studies; ``revalidated_at`` None: never read, or marked stale."""

    revalidated_at: datetime | None
    generation: int
    studies: list[IndexedStudyRow]


@dataclass(frozen=True)
class StoredDetail:
    series_count: int
    instance_count: int
    instances: list[DicomJson]
    stored_at: datetime


def _insert(session: AsyncSession):  # type: ignore[no-untyped-def]
    return _dialect_insert(session.get_bind().dialect.name)


def _dialect_insert(dialect: str):  # type: ignore[no-untyped-def]
    return postgresql_insert if dialect == "postgresql" else sqlite_insert


def _of(key: PatientKey) -> Any:
    return and_(IndexedStudy.issuer == key[0], IndexedStudy.patient_id == key[1])


# The reads every patient request makes, in SQLAlchemy Core on a plain connection (as
# the token check): building ORM sessions cost more than these queries themselves.
_PATIENT = IndexedPatient.__table__
_STUDY = IndexedStudy.__table__
_DETAIL = StudyDetailRecord.__table__
_READ = (
    select(
        _PATIENT.c.revalidated_at,
        _PATIENT.c.generation,
        _STUDY.c.study_uid,
        _STUDY.c.record,
        _STUDY.c.reports,
        _STUDY.c.indexed_at,
    )
    .select_from(
        _PATIENT.outerjoin(
            _STUDY,
            and_(
                _STUDY.c.issuer == _PATIENT.c.issuer,
                _STUDY.c.patient_id == _PATIENT.c.patient_id,
            ),
        )
    )
    .where(
        _PATIENT.c.issuer == bindparam("issuer"), _PATIENT.c.patient_id == bindparam("patient_id")
    )
)
_DETAILS = select(
    _DETAIL.c.study_uid,
    _DETAIL.c.series_count,
    _DETAIL.c.instance_count,
    _DETAIL.c.instances,
    _DETAIL.c.stored_at,
).where(_DETAIL.c.study_uid.in_(bindparam("uids", expanding=True)))


class StudyIndex:
    def __init__(self, sessions: async_sessionmaker[AsyncSession]) -> None:
        self._sessions = sessions
        engine = sessions.kw.get("bind")
        assert isinstance(engine, AsyncEngine), "sessions must be bound to an engine"
        self._engine: AsyncEngine = engine
        self._reads = autocommit(engine)  # single reads, on every patient request
        self._rows = ParsedMemo(
            lambda k: IndexedStudyRow(
                k[0], orjson.loads(k[1]), orjson.loads(k[2]), as_utc(datetime.fromisoformat(k[3]))
            )
        )
        self._details: ParsedMemo[list[DicomJson]] = ParsedMemo(lambda k: orjson.loads(k[0]))

    # -- a patient's studies ----------------------------------------------

    async def read(self, key: PatientKey) -> PatientStudies:
        """One query: the patient's state and studies (read on every patient request)."""
        async with self._reads.connect() as connection:
            rows = (await connection.execute(_READ, {"issuer": key[0], "patient_id": key[1]})).all()
        if not rows:
            return PatientStudies(None, 0, [])
        revalidated, generation = rows[0][0], rows[0][1]
        studies = [
            self._rows.get((uid, record, reports, indexed_at.isoformat()))
            for _, _, uid, record, reports, indexed_at in rows
            if uid is not None
        ]
        return PatientStudies(
            as_utc(revalidated) if revalidated is not None else None, generation, studies
        )

    async def replace(
        self,
        key: PatientKey,
        studies: Sequence[IndexedStudyRow],
        at: datetime,
        generation: int,
        unchanged: Iterable[str] = (),
        gone: Iterable[str] = (),
    ) -> bool:
        """Make the patient's rows these studies, read from the PACS at ``at``:
        ``unchanged`` rows already say exactly this and are not rewritten; ``gone``
        rows are deleted (studies the PACS no longer lists).

        The patient is marked fresh only if nothing marked it stale since its
        ``generation`` was read; returns whether it was.
        """
        same = set(unchanged)
        removed = sorted(set(gone))
        # Core in one transaction: a revalidation writes this on the request's path.
        async with self._engine.begin() as connection:
            for start in range(0, len(removed), CHUNK):
                await connection.execute(
                    delete(IndexedStudy).where(
                        _of(key), IndexedStudy.study_uid.in_(removed[start : start + CHUNK])
                    )
                )
            insert = _dialect_insert(connection.dialect.name)
            rows = [
                {
                    "issuer": key[0],
                    "patient_id": key[1],
                    "study_uid": s.uid,
                    "record": orjson.dumps(s.record).decode(),
                    "reports": orjson.dumps(s.reports).decode(),
                    "indexed_at": at,
                }
                for s in studies
                if s.uid not in same
            ]
            for start in range(0, len(rows), CHUNK // 8):
                statement = insert(IndexedStudy).values(rows[start : start + CHUNK // 8])
                await connection.execute(
                    statement.on_conflict_do_update(
                        index_elements=["issuer", "patient_id", "study_uid"],
                        set_={
                            "record": statement.excluded.record,
                            "reports": statement.excluded.reports,
                            "indexed_at": statement.excluded.indexed_at,
                        },
                    )
                )
            mark = insert(IndexedPatient).values(
                issuer=key[0], patient_id=key[1], revalidated_at=at, generation=generation
            )
            result = await connection.execute(
                mark.on_conflict_do_update(
                    index_elements=["issuer", "patient_id"],
                    set_={"revalidated_at": at},
                    where=IndexedPatient.generation == generation,
                )
            )
        return bool(result.rowcount)

    async def stale(self, keys: Iterable[PatientKey]) -> None:
        """These patients' studies changed: the next request reads them from the PACS."""
        wanted = sorted({(issuer or "", patient_id) for issuer, patient_id in keys if patient_id})
        if not wanted:
            return
        async with self._sessions() as session:
            insert = _insert(session)
            statement = insert(IndexedPatient).values(
                [
                    {"issuer": i, "patient_id": p, "revalidated_at": None, "generation": 1}
                    for i, p in wanted
                ]
            )
            await session.execute(
                statement.on_conflict_do_update(
                    index_elements=["issuer", "patient_id"],
                    set_={"revalidated_at": None, "generation": IndexedPatient.generation + 1},
                )
            )
            await session.commit()

    async def stale_by_mrn(self, patient_ids: Iterable[str], study_uids: Iterable[str]) -> int:
        """Mark stale every indexed patient with one of these PatientIDs (whatever the
        issuer), or holding one of these studies; how many were marked."""
        mrns, uids = sorted(set(patient_ids)), sorted(set(study_uids))
        if not mrns and not uids:
            return 0
        async with self._sessions() as session:
            holders: set[PatientKey] = set()
            for start in range(0, len(uids), CHUNK):
                found = await session.execute(
                    select(IndexedStudy.issuer, IndexedStudy.patient_id).where(
                        IndexedStudy.study_uid.in_(uids[start : start + CHUNK])
                    )
                )
                holders.update((issuer, pid) for issuer, pid in found)
            conditions = []
            if mrns:
                conditions.append(IndexedPatient.patient_id.in_(mrns))
            if holders:
                conditions.append(
                    tuple_(IndexedPatient.issuer, IndexedPatient.patient_id).in_(sorted(holders))
                )
            result = await session.execute(
                update(IndexedPatient)
                .where(or_(*conditions))
                .values(revalidated_at=None, generation=IndexedPatient.generation + 1)
            )
            await session.commit()
        return int(result.rowcount)  # type: ignore[attr-defined]

    # -- study detail -------------------------------------------------------

    async def indexed_at(self, uids: Iterable[str]) -> dict[tuple[PatientKey, str], datetime]:
        """When each of these studies' rows was last written, by (patient, study UID)."""
        wanted = sorted(set(uids))
        found: dict[tuple[PatientKey, str], datetime] = {}
        async with self._engine.connect() as connection:
            for start in range(0, len(wanted), CHUNK):
                rows = await connection.execute(
                    select(
                        _STUDY.c.issuer,
                        _STUDY.c.patient_id,
                        _STUDY.c.study_uid,
                        _STUDY.c.indexed_at,
                    ).where(_STUDY.c.study_uid.in_(wanted[start : start + CHUNK]))
                )
                for issuer, patient_id, uid, at in rows:
                    found[((issuer, patient_id), uid)] = as_utc(at)
        return found

    async def details(self, uids: Iterable[str]) -> dict[str, StoredDetail]:
        ordered = sorted(set(uids))
        found: dict[str, StoredDetail] = {}
        if not ordered:
            return found
        async with self._reads.connect() as connection:
            for start in range(0, len(ordered), CHUNK):
                rows = await connection.execute(_DETAILS, {"uids": ordered[start : start + CHUNK]})
                for uid, series, count, body, stored_at in rows:
                    instances = self._details.get((body,))
                    found[uid] = StoredDetail(series, count, instances, as_utc(stored_at))
        return found

    async def put_details(
        self, details: dict[str, tuple[int, int, list[DicomJson]]], at: datetime, keep: int
    ) -> None:
        """Store details (series count, instance count, instances); keep the newest ``keep``."""
        if not details:
            return
        async with self._sessions() as session:
            insert = _insert(session)
            for uid, (series, count, instances) in sorted(details.items()):
                statement = insert(StudyDetailRecord).values(
                    study_uid=uid,
                    series_count=series,
                    instance_count=count,
                    instances=orjson.dumps(instances).decode(),
                    stored_at=at,
                )
                await session.execute(
                    statement.on_conflict_do_update(
                        index_elements=["study_uid"],
                        set_={
                            "series_count": statement.excluded.series_count,
                            "instance_count": statement.excluded.instance_count,
                            "instances": statement.excluded.instances,
                            "stored_at": statement.excluded.stored_at,
                        },
                    )
                )
            newest = (
                select(StudyDetailRecord.study_uid)
                .order_by(StudyDetailRecord.stored_at.desc())
                .limit(keep)
            )
            await session.execute(
                delete(StudyDetailRecord).where(StudyDetailRecord.study_uid.not_in(newest))
            )
            await session.commit()

    # -- a change feed's cursor and lease ---------------------------------------

    async def hold_lease(self, feed: str, holder: str, now: datetime, seconds: float) -> bool:
        """Take or extend the lease to poll ``feed``; False while another replica holds it."""
        until = now + timedelta(seconds=seconds)
        async with self._sessions() as session:
            insert = _insert(session)
            await session.execute(
                insert(IndexFeed)
                .values(name=feed, cursor=None, holder=None, lease_until=None)
                .on_conflict_do_nothing(index_elements=["name"])
            )
            result = await session.execute(
                update(IndexFeed)
                .where(
                    IndexFeed.name == feed,
                    or_(
                        IndexFeed.holder.is_(None),
                        IndexFeed.holder == holder,
                        IndexFeed.lease_until.is_(None),
                        IndexFeed.lease_until < now,
                    ),
                )
                .values(holder=holder, lease_until=until)
            )
            await session.commit()
        return bool(result.rowcount)  # type: ignore[attr-defined]

    async def cursor(self, feed: str) -> int | None:
        async with self._sessions() as session:
            row = await session.get(IndexFeed, feed)
            return row.cursor if row else None

    async def advance(self, feed: str, holder: str, cursor: int) -> bool:
        """Move the cursor, only while ``holder`` still holds the lease."""
        async with self._sessions() as session:
            result = await session.execute(
                update(IndexFeed)
                .where(IndexFeed.name == feed, IndexFeed.holder == holder)
                .values(cursor=cursor)
            )
            await session.commit()
        return bool(result.rowcount)  # type: ignore[attr-defined]
