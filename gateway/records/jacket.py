"""A patient's jacket: all their studies, with their reports and when each reaches them.

The jacket is read from the study index in the gateway's database, which
every replica shares. Inside the freshness bound
(``GATEWAY_INDEX_FRESHNESS_SECONDS``) it is answered from the index alone.
Past it, or once a write through the gateway (STOW) or the PACS's change feed
has marked the patient stale, the next request revalidates: one study-level
QIDO by PatientID, and, only when a study is new or its counts of series and
instances changed, one instance-level QIDO for the patient's reports (SR and
PDF, by SOP Class UID list matching) with the flags and dates that say when
each was verified. A patient never indexed before gets both at once. Both are
checked against the patient's issuer, so a namesake MRN at another issuer
never joins the jacket. The release policy then sets each study's
``available_at``, from the database at every request, so a release or a
waiver made on any replica is seen at once.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

from gateway.dicomweb import dicomjson as dj
from gateway.dicomweb.dicomjson import STUDY_FIELDS, DicomJson
from gateway.dicomweb.upstream import Upstream
from gateway.records.access import PatientKey, patient_key
from gateway.records.release import ReleasePolicy
from gateway.records.study_cache import validator_of
from gateway.records.summaries import (
    REPORT_CLASSES,
    REPORT_FIELDS,
    StudySummary,
    newest_first,
    report_of,
    summarize,
)
from gateway.store.patients import PatientIndex
from gateway.store.study_index import IndexedStudyRow, PatientStudies, StudyIndex

MAX_STUDIES = 1000
MAX_REPORTS = MAX_STUDIES * 4
FRESHNESS_SECONDS = 60.0
MEMO_ENTRIES = 4096


@dataclass(frozen=True)
class Jacket:
    """One patient's studies at one moment, newest first, ``available_at`` set on each."""

    patient: str  # the FHIR Patient id
    key: PatientKey | None  # None: the id is not known here
    studies: tuple[StudySummary, ...]
    now: datetime

    @property
    def released(self) -> frozenset[str]:
        return frozenset(
            s.uid for s in self.studies if s.available_at is None or s.available_at <= self.now
        )

    @property
    def held(self) -> dict[str, datetime]:
        return {
            s.uid: s.available_at
            for s in self.studies
            if s.available_at is not None and s.available_at > self.now
        }

    def study(self, uid: str) -> StudySummary | None:
        return next((s for s in self.studies if s.uid == uid), None)


class Jackets:
    def __init__(
        self,
        upstream: Upstream,
        index: PatientIndex,
        studies: StudyIndex,
        release: ReleasePolicy,
        local_zone: ZoneInfo | None,
        freshness_seconds: float = FRESHNESS_SECONDS,
    ) -> None:
        self.upstream = upstream
        self.index = index
        self.studies = studies
        self.release = release
        self.local_zone = local_zone
        self.freshness = timedelta(seconds=freshness_seconds)
        # Only to spare the PACS concurrent revalidations of one patient from this
        # process; replicas may revalidate side by side, and the last write wins.
        self._revalidating: dict[PatientKey, asyncio.Lock] = {}
        # Each indexed row's summary, made once per process: the index hands out the
        # same row object for the same stored text (a rewritten row is a new object),
        # and the row is kept beside its summary so that its id is not reused.
        self._summarized: dict[int, tuple[IndexedStudyRow, StudySummary | None]] = {}

    @property
    def clock(self) -> Callable[[], datetime]:
        return self.release.clock

    async def of(self, patient_fhir_id: str) -> Jacket:
        now = self.clock()
        key = await self.index.key_for(patient_fhir_id)
        if key is None:
            return Jacket(patient_fhir_id, None, (), now)
        summaries = await self.summaries(key, now)
        applied = await self.release.apply(patient_fhir_id, newest_first(summaries))
        return Jacket(patient_fhir_id, key, tuple(applied), now)

    async def summaries(self, key: PatientKey, now: datetime | None = None) -> list[StudySummary]:
        """The patient's studies (release delay not applied), revalidated when stale."""
        now = now or self.clock()
        indexed = await self.studies.read(key)
        if self._fresh(indexed, now):
            return self._summaries(key, indexed.studies)
        lock = self._revalidating.setdefault(key, asyncio.Lock())
        waited = lock.locked()
        try:
            async with lock:
                if waited:  # another request of this process may have just revalidated
                    indexed = await self.studies.read(key)
                    if self._fresh(indexed, now):
                        return self._summaries(key, indexed.studies)
                return self._summaries(key, await self._revalidate(key, indexed, now))
        finally:
            if not lock.locked():
                self._revalidating.pop(key, None)

    async def stale(self, patient_fhir_id: str) -> None:
        """Read the patient's studies from the PACS again at the next request (after the
        gateway wrote to the PACS by another way than STOW-RS)."""
        key = await self.index.key_for(patient_fhir_id)
        if key is not None:
            await self.studies.stale([key])

    async def release_early(self, study_uid: str, by: str) -> bool:
        return await self.release.release(study_uid, by)

    async def waive(self, patient_fhir_id: str) -> bool:
        return await self.release.waive(patient_fhir_id)

    def _fresh(self, indexed: PatientStudies, now: datetime) -> bool:
        if indexed.revalidated_at is None:
            return False
        # A clock set back (tests, or a corrected system clock) counts as stale.
        return timedelta(0) <= now - indexed.revalidated_at < self.freshness

    def _summaries(self, key: PatientKey, rows: Sequence[IndexedStudyRow]) -> list[StudySummary]:
        summaries = []
        for row in rows:
            summary = self._summary(row)
            if summary is not None and summary.patient == key:
                summaries.append(summary)
        return summaries

    def _summary(self, row: IndexedStudyRow) -> StudySummary | None:
        memo = self._summarized.get(id(row))
        if memo is not None and memo[0] is row:
            return memo[1]
        summary = summarize(row.record, self.local_zone, updated=row.indexed_at)
        if summary is not None:
            reports = [r for found in row.reports if (r := report_of(found, self.local_zone))]
            summary = summary.with_reports(reports)
        if len(self._summarized) >= MEMO_ENTRIES:
            self._summarized.clear()
        self._summarized[id(row)] = (row, summary)
        return summary

    async def _revalidate(
        self, key: PatientKey, indexed: PatientStudies, now: datetime
    ) -> list[IndexedStudyRow]:
        studies = self.upstream.search_studies(
            {"PatientID": key[1]}, STUDY_FIELDS, limit=MAX_STUDIES
        )
        reports: list[DicomJson] | None = None
        if indexed.revalidated_at is None and not indexed.studies:
            found, reports = await asyncio.gather(studies, self._reports(key))
        else:
            found = await studies
        records: dict[str, DicomJson] = {}
        for study in found:
            uid = dj.text(study, "StudyInstanceUID")
            if uid and uid not in records and patient_key(study) == key:
                records[uid] = study
        previous = {row.uid: row for row in indexed.studies}
        if reports is None and any(
            _changed(previous.get(uid), record) for uid, record in records.items()
        ):
            reports = await self._reports(key)
        rows = [
            IndexedStudyRow(
                uid,
                record,
                [r for r in reports if dj.text(r, "StudyInstanceUID") == uid]
                if reports is not None
                else previous[uid].reports,
                now,
            )
            for uid, record in records.items()
        ]
        unchanged = [
            row.uid
            for row in rows
            if (before := previous.get(row.uid)) is not None
            and before.record == row.record
            and before.reports == row.reports
        ]
        gone = previous.keys() - records.keys()
        await self.studies.replace(key, rows, now, indexed.generation, unchanged, gone)
        # The rows already held, where nothing changed: their summaries (and mapped
        # resources) are made already.
        same = set(unchanged)
        return [previous[row.uid] if row.uid in same else row for row in rows]

    async def _reports(self, key: PatientKey) -> list[DicomJson]:
        found = await self.upstream.search_instances(
            {"PatientID": key[1], "SOPClassUID": ",".join(sorted(REPORT_CLASSES))},
            REPORT_FIELDS,
            limit=MAX_REPORTS,
        )
        return [row for row in found if patient_key(row) == key and report_of(row, None)]


def _changed(before: IndexedStudyRow | None, record: DicomJson) -> bool:
    """Might the study's reports differ from what the index holds? A new study, one
    whose counts moved, or one whose PACS gives no counts to compare."""
    if before is None:
        return True
    counts = validator_of(record)
    return None in counts or validator_of(before.record) != counts
