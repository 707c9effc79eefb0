"""A patient's jacket: all their studies, with their reports and when each reaches them.

Two upstream calls make it, whatever the number of studies: one study-level
QIDO by PatientID, and one instance-level QIDO for the patient's reports (SR
and PDF, by SOP Class UID list matching) with the flags and dates that say
when each was verified. Both are checked against the patient's issuer, so a
namesake MRN at another issuer never joins the jacket. The release policy
then sets each study's ``available_at``.

A jacket is kept for a few seconds per patient: every request of a
patient-facing caller needs it to decide what the caller sees, and a viewer
makes hundreds of requests for one study. A study that arrives at the PACS is
therefore seen within that time; a release or waiver made here is seen at once.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime
from zoneinfo import ZoneInfo

from gateway.dicomweb.dicomjson import STUDY_FIELDS
from gateway.dicomweb.upstream import Upstream
from gateway.records.access import PatientKey, patient_key
from gateway.records.release import ReleasePolicy
from gateway.records.summaries import (
    REPORT_CLASSES,
    REPORT_FIELDS,
    StudySummary,
    newest_first,
    report_of,
    summarize,
)
from gateway.store.patients import PatientIndex

MAX_STUDIES = 1000
MAX_REPORTS = MAX_STUDIES * 4
CACHE_SECONDS = 15.0


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
        release: ReleasePolicy,
        local_zone: ZoneInfo | None,
        cache_seconds: float = CACHE_SECONDS,
    ) -> None:
        self.upstream = upstream
        self.index = index
        self.release = release
        self.local_zone = local_zone
        self.cache_seconds = cache_seconds
        self._cache: dict[str, tuple[float, Jacket]] = {}

    @property
    def clock(self) -> Callable[[], datetime]:
        return self.release.clock

    async def of(self, patient_fhir_id: str) -> Jacket:
        cached = self._cache.get(patient_fhir_id)
        if cached and cached[0] > time.monotonic():
            return replace(cached[1], now=self.clock())  # held studies fall due on time
        jacket = await self._build(patient_fhir_id)
        self._cache[patient_fhir_id] = (time.monotonic() + self.cache_seconds, jacket)
        return jacket

    def forget(self, patient_fhir_id: str | None = None) -> None:
        """Build again at the next request (after a release, a waiver or a change of clock)."""
        if patient_fhir_id is None:
            self._cache.clear()
        else:
            self._cache.pop(patient_fhir_id, None)

    async def release_early(self, study_uid: str, by: str) -> bool:
        done = await self.release.release(study_uid, by)
        self.forget()
        return done

    async def waive(self, patient_fhir_id: str) -> bool:
        done = await self.release.waive(patient_fhir_id)
        self.forget(patient_fhir_id)
        return done

    async def _build(self, patient_fhir_id: str) -> Jacket:
        now = self.clock()
        key = await self.index.key_for(patient_fhir_id)
        if key is None:
            return Jacket(patient_fhir_id, None, (), now)
        studies_found, reports_found = await asyncio.gather(
            self.upstream.search_studies({"PatientID": key[1]}, STUDY_FIELDS, limit=MAX_STUDIES),
            self.upstream.search_instances(
                {"PatientID": key[1], "SOPClassUID": ",".join(sorted(REPORT_CLASSES))},
                REPORT_FIELDS,
                limit=MAX_REPORTS,
            ),
        )
        reports = [
            report
            for row in reports_found
            if patient_key(row) == key and (report := report_of(row, self.local_zone))
        ]
        summaries = []
        seen: set[str] = set()
        for found in studies_found:
            summary = summarize(found, self.local_zone)
            if summary is None or summary.patient != key or summary.uid in seen:
                continue
            seen.add(summary.uid)
            summaries.append(summary.with_reports(reports))
        applied = await self.release.apply(patient_fhir_id, newest_first(summaries))
        return Jacket(patient_fhir_id, key, tuple(applied), now)
