"""The release delay: new results reach the patient only after their physician has seen them.

A study becomes available to patient-facing access (``patient/`` tokens and
the portal) a configured time after the study was performed, or after its
report was verified when there is one: 72 hours by default, with per-modality
overrides. Providers and backend clients are never delayed. Staff may release
a study early; a patient may waive the delay for themselves where the policy
allows. The clock is injected, so the rule can be tested at any moment.

The delay is configurable because the law differs by place: some US states
require a delay for certain results, while the 21st Century Cures Act's
information-blocking rule limits delays that a provider imposes on its own.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from gateway.access import Visibility
from gateway.fhir.dates import parse_fhir_datetime
from gateway.fhir.documents import DocumentCriteria
from gateway.fhir.studies import StudyCriteria
from gateway.settings import Settings
from gateway.store.models import DelayWaiver, StudyRelease

Clock = Callable[[], datetime]
MAX_STUDIES = 1000
CACHE_SECONDS = 15.0


def utc_now() -> datetime:
    return datetime.now(UTC)


def parse_overrides(text: str) -> dict[str, timedelta]:
    """``"MG=168 XA=0"``: hours per modality code."""
    overrides = {}
    for item in text.split():
        code, _, hours = item.partition("=")
        overrides[code.strip().upper()] = timedelta(hours=float(hours))
    return overrides


@dataclass(frozen=True)
class Hold:
    study_uid: str
    available_at: datetime


@dataclass
class PatientReleases:
    """For one patient at one moment: what they may see, and what is held until when."""

    released: frozenset[str]
    held: dict[str, datetime]


class ReleasePolicy:
    def __init__(
        self,
        settings: Settings,
        sessions: async_sessionmaker[AsyncSession],
        clock: Clock = utc_now,
    ) -> None:
        self.default = timedelta(hours=settings.release_delay_hours)
        self.overrides = parse_overrides(settings.release_delay_by_modality)
        self.waiver_allowed = settings.release_waiver_allowed
        self.sessions = sessions
        self.clock = clock
        self._cache: dict[str, tuple[float, PatientReleases]] = {}

    def delay_for(self, modalities: list[str]) -> timedelta:
        """The longest delay among the study's modalities (the cautious reading)."""
        delays = [self.overrides[m] for m in modalities if m in self.overrides]
        return max(delays) if delays else self.default

    def available_at(
        self, started: datetime | None, modalities: list[str], verified: datetime | None
    ) -> datetime:
        base = verified or started or datetime.min.replace(tzinfo=UTC)
        return base + self.delay_for(modalities)

    def forget(self) -> None:
        """Drop what was computed (after a change of the clock, in tests)."""
        self._cache.clear()

    async def release(self, study_uid: str, by: str) -> bool:
        try:
            async with self.sessions() as session:
                session.add(StudyRelease(study_uid=study_uid, released_by=by[:128]))
                await session.commit()
        except IntegrityError:
            return False
        self._cache.clear()
        return True

    async def waive(self, patient_fhir_id: str) -> bool:
        if not self.waiver_allowed:
            return False
        try:
            async with self.sessions() as session:
                session.add(DelayWaiver(patient_fhir_id=patient_fhir_id))
                await session.commit()
        except IntegrityError:
            pass
        self._cache.pop(patient_fhir_id, None)
        return True

    async def has_waived(self, patient_fhir_id: str) -> bool:
        async with self.sessions() as session:
            return await session.get(DelayWaiver, patient_fhir_id) is not None

    async def visibility(
        self, services: Any, patient_fhir_id: str, chosen: Iterable[str] | None = None
    ) -> Visibility:
        """What patient-facing access sees: the patient's released studies (of ``chosen``)."""
        key = await services.patient_index.key_for(patient_fhir_id)
        if key is None:
            return Visibility(patients=frozenset(), studies=frozenset())
        studies = set((await self.for_patient(services, patient_fhir_id)).released)
        if chosen is not None:
            studies &= {str(uid) for uid in chosen}
        return Visibility(patients=frozenset({key}), studies=frozenset(studies))

    async def for_patient(self, services: Any, patient_fhir_id: str) -> PatientReleases:
        """The patient's released and held studies (briefly cached: new studies stay hidden)."""
        cached = self._cache.get(patient_fhir_id)
        if cached and cached[0] > time.monotonic():
            return cached[1]
        computed = await self._compute(services, patient_fhir_id)
        self._cache[patient_fhir_id] = (time.monotonic() + CACHE_SECONDS, computed)
        return computed

    async def _compute(self, services: Any, patient_fhir_id: str) -> PatientReleases:
        key = await services.patient_index.key_for(patient_fhir_id)
        if key is None:
            return PatientReleases(frozenset(), {})
        visibility = Visibility(patients=frozenset({key}))
        page = await services.studies.search(
            StudyCriteria(patients=[key]), 0, MAX_STUDIES, visibility
        )
        waived = self.waiver_allowed and await self.has_waived(patient_fhir_id)
        uids = [r["id"] for r in page.resources]
        async with self.sessions() as session:
            early = set(
                await session.scalars(
                    select(StudyRelease.study_uid).where(StudyRelease.study_uid.in_(uids))
                )
            )
        verified = await self._verified(services, key, visibility) if not waived else {}
        now = self.clock()
        released, held = set(), {}
        for resource in page.resources:
            uid = resource["id"]
            if waived or uid in early:
                released.add(uid)
                continue
            started = _instant(resource.get("started"))
            modalities = [m["code"] for m in resource.get("modality", [])]
            at = self.available_at(started, modalities, verified.get(uid))
            if at <= now:
                released.add(uid)
            else:
                held[uid] = at
        return PatientReleases(frozenset(released), held)

    async def _verified(
        self, services: Any, key: tuple[str, str], visibility: Visibility
    ) -> dict[str, datetime]:
        """When each study's report was made final (its DocumentReference date)."""
        documents = await services.documents.search(
            DocumentCriteria(patients=[key]), 0, MAX_STUDIES * 4, visibility
        )
        verified: dict[str, datetime] = {}
        for document in documents.resources:
            if document.get("docStatus") not in ("final", "amended"):
                continue
            attachment = document["content"][0]["attachment"]
            when = _instant(document.get("date") or attachment.get("creation"))
            for related in document.get("context", {}).get("related", []):
                uid = related["reference"].removeprefix("ImagingStudy/")
                if when and (uid not in verified or when > verified[uid]):
                    verified[uid] = when
        return verified


def _instant(text: Any) -> datetime | None:
    if not text:
        return None
    try:
        moment = parse_fhir_datetime(str(text))
    except ValueError:
        return None
    return moment.aware(UTC)[0]
