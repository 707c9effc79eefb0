"""Series and instances of recently mapped studies, so a repeated search costs one QIDO.

An entry is used only while the study-level QIDO, which every search makes
anyway, still reports the same numbers of series and instances (a study
that gains, loses or replaces objects changes them), and only for
``ttl`` seconds. Access decisions are made per request on the study list
before this cache is consulted, so it never widens what a request sees.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass

from gateway.dicomweb import dicomjson as dj
from gateway.dicomweb.dicomjson import DicomJson

Validator = tuple[int | None, int | None]


@dataclass(frozen=True)
class StudyDetail:
    validator: Validator
    series: list[DicomJson]
    instances: list[DicomJson]
    stored_at: float


def validator_of(study: DicomJson) -> Validator:
    return (
        dj.integer(study, "NumberOfStudyRelatedSeries"),
        dj.integer(study, "NumberOfStudyRelatedInstances"),
    )


class StudyDetailCache:
    def __init__(self, ttl: float, max_entries: int) -> None:
        self.ttl = ttl
        self.max_entries = max_entries
        self._entries: OrderedDict[str, StudyDetail] = OrderedDict()

    @property
    def enabled(self) -> bool:
        return self.ttl > 0 and self.max_entries > 0

    def get(self, study: DicomJson) -> StudyDetail | None:
        uid = dj.text(study, "StudyInstanceUID")
        if not self.enabled or not uid:
            return None
        entry = self._entries.get(uid)
        if entry is None:
            return None
        validator = validator_of(study)
        fresh = time.monotonic() - entry.stored_at < self.ttl
        # Without counts from the PACS there is nothing to validate against.
        if not fresh or None in validator or entry.validator != validator:
            del self._entries[uid]
            return None
        self._entries.move_to_end(uid)
        return entry

    def put(self, study: DicomJson, series: list[DicomJson], instances: list[DicomJson]) -> None:
        uid = dj.text(study, "StudyInstanceUID")
        validator = validator_of(study)
        if not self.enabled or not uid or None in validator:
            return
        self._entries[uid] = StudyDetail(validator, series, instances, time.monotonic())
        self._entries.move_to_end(uid)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)
