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

from collections.abc import Callable, Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta

from sqlalchemy import bindparam, literal, select, union_all
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from gateway.records.summaries import StudySummary
from gateway.settings import Settings
from gateway.store.database import autocommit
from gateway.store.models import DelayWaiver, StudyRelease

Clock = Callable[[], datetime]
_WAIVED = select(DelayWaiver.__table__.c.patient_fhir_id).where(
    DelayWaiver.__table__.c.patient_fhir_id == bindparam("patient")
)
_RELEASED = select(StudyRelease.__table__.c.study_uid).where(
    StudyRelease.__table__.c.study_uid.in_(bindparam("uids", expanding=True))
)
# Both facts in one round trip: the waiver as a row whose first column is "w".
_WAIVED_OR_RELEASED = union_all(
    select(literal("w"), DelayWaiver.__table__.c.patient_fhir_id).where(
        DelayWaiver.__table__.c.patient_fhir_id == bindparam("patient")
    ),
    select(literal("r"), StudyRelease.__table__.c.study_uid).where(
        StudyRelease.__table__.c.study_uid.in_(bindparam("uids", expanding=True))
    ),
)
# Released early, or waived: available since always.
ALWAYS = datetime.min.replace(tzinfo=UTC)


def utc_now() -> datetime:
    return datetime.now(UTC)


def parse_overrides(text: str) -> dict[str, timedelta]:
    """``"MG=168 XA=0"``: hours per modality code."""
    overrides = {}
    for item in text.split():
        code, _, hours = item.partition("=")
        overrides[code.strip().upper()] = timedelta(hours=float(hours))
    return overrides


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
        engine = sessions.kw.get("bind")
        assert isinstance(engine, AsyncEngine), "sessions must be bound to an engine"
        self.engine: AsyncEngine = engine
        self._reads = autocommit(engine)
        self.clock = clock

    def delay_for(self, modalities: list[str]) -> timedelta:
        """The longest delay among the study's modalities (the cautious reading)."""
        delays = [self.overrides[m] for m in modalities if m in self.overrides]
        return max(delays) if delays else self.default

    def available_at(
        self, started: datetime | None, modalities: list[str], verified: datetime | None
    ) -> datetime:
        base = verified or started or datetime.min.replace(tzinfo=UTC)
        return base + self.delay_for(modalities)

    async def release(self, study_uid: str, by: str) -> bool:
        try:
            async with self.sessions() as session:
                session.add(StudyRelease(study_uid=study_uid, released_by=by[:128]))
                await session.commit()
        except IntegrityError:
            return False
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
        return True

    async def has_waived(self, patient_fhir_id: str) -> bool:
        async with self.sessions() as session:
            return await session.get(DelayWaiver, patient_fhir_id) is not None

    async def apply(
        self, patient_fhir_id: str, studies: Sequence[StudySummary]
    ) -> list[StudySummary]:
        """The patient's studies with the moment each becomes available to them."""
        uids = [s.uid for s in studies]
        # Core, one statement, no transaction around it: this runs on every request of a
        # patient.
        async with self._reads.connect() as connection:
            if uids:
                rows = await connection.execute(
                    _WAIVED_OR_RELEASED, {"patient": patient_fhir_id, "uids": uids}
                )
                found = rows.all()
                waived = any(kind == "w" for kind, _ in found)
                early = {uid for kind, uid in found if kind == "r"}
            else:
                waived = (
                    await connection.execute(_WAIVED, {"patient": patient_fhir_id})
                ).first() is not None
                early = set()
        waived = waived and self.waiver_allowed
        return [
            replace(
                study,
                available_at=ALWAYS
                if waived or study.uid in early
                else self.available_at(study.started, list(study.modalities), study.verified_at),
            )
            for study in studies
        ]
