"""Series and instances of recently mapped studies, kept in the database, so a search
of studies already seen asks the PACS for nothing more than its study list (and,
inside the study index's freshness bound, not even that).

An entry is used only while the study-level record, which every search holds,
still reports the same numbers of series and instances (a study that gains,
loses or replaces objects changes them), and only for ``ttl`` seconds. Access
decisions are made per request on the study list before this cache is
consulted, so it never widens what a request sees. It lives in the database so
that every replica on it shares one copy; at most ``max_entries`` studies are
kept, the most recently stored.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from gateway.dicomweb import dicomjson as dj
from gateway.dicomweb.dicomjson import DicomJson
from gateway.store.study_index import StudyIndex

Validator = tuple[int | None, int | None]


@dataclass(frozen=True)
class CachedDetail:
    instances: list[DicomJson]


def validator_of(study: DicomJson) -> Validator:
    return (
        dj.integer(study, "NumberOfStudyRelatedSeries"),
        dj.integer(study, "NumberOfStudyRelatedInstances"),
    )


class StudyDetailCache:
    def __init__(
        self,
        index: StudyIndex,
        ttl: float,
        max_entries: int,
        clock: Callable[[], datetime],
    ) -> None:
        self.index = index
        self.ttl = timedelta(seconds=ttl)
        self.max_entries = max_entries
        self.clock = clock

    @property
    def enabled(self) -> bool:
        return self.ttl > timedelta(0) and self.max_entries > 0

    async def get_many(self, studies: Sequence[DicomJson]) -> dict[str, CachedDetail]:
        """The cached instances of those studies whose entry is still valid."""
        wanted = {
            uid: validator
            for study in studies
            if (uid := dj.text(study, "StudyInstanceUID"))
            # Without counts from the PACS there is nothing to validate against.
            and None not in (validator := validator_of(study))
        }
        if not self.enabled or not wanted:
            return {}
        now = self.clock()
        return {
            uid: CachedDetail(entry.instances)
            for uid, entry in (await self.index.details(wanted)).items()
            if (entry.series_count, entry.instance_count) == wanted[uid]
            and timedelta(0) <= now - entry.stored_at < self.ttl
        }

    async def put_many(self, entries: Sequence[tuple[DicomJson, list[DicomJson]]]) -> None:
        """Keep each study's instances, under the counts its study-level record gave."""
        if not self.enabled:
            return
        details = {}
        for study, instances in entries:
            uid = dj.text(study, "StudyInstanceUID")
            series, count = validator_of(study)
            if uid and series is not None and count is not None:
                details[uid] = (series, count, instances)
        await self.index.put_details(details, self.clock(), self.max_entries)
