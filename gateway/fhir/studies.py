"""ImagingStudy read and search over QIDO-RS.

A search costs a bounded number of upstream calls whatever the page holds:
one study-level QIDO with the narrowest filter the PACS can apply, then one
series-level and one instance-level QIDO for the page's studies that the
study detail cache cannot answer (UID list matching, in chunks). Every
criterion is re-checked exactly here, because PACSes differ in how loosely
they match.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta

from gateway.access import EVERYTHING, Visibility
from gateway.dicomweb import dicomjson as dj
from gateway.dicomweb.dicomjson import (
    INSTANCE_FIELDS,
    SERIES_FIELDS,
    STUDY_FIELDS,
    DicomJson,
    is_uid,
)
from gateway.dicomweb.upstream import Upstream
from gateway.errors import BadRequest, NotFound
from gateway.fhir import mapping, params, terminology
from gateway.fhir.dates import Moment, dicom_moment
from gateway.fhir.mapping import MappingContext, Resource
from gateway.fhir.params import DateFilter, SearchRequest, Token
from gateway.fhir.study_cache import StudyDetailCache
from gateway.store.patients import PatientIndex, PatientKey

SEARCH_PARAMETERS: dict[str, tuple[str, str]] = {
    "_id": ("token", "The StudyInstanceUID"),
    "identifier": ("token", "Study UID (urn:oid:...) or accession number"),
    "patient": ("reference", "Who the study is about"),
    "subject": ("reference", "Who the study is about"),
    "started": ("date", "When the study started"),
    "modality": ("token", "A modality in the study (DICOM code)"),
    "series": ("token", "A SeriesInstanceUID in the study"),
    "status": ("token", "registered | available | cancelled | entered-in-error | unknown"),
}
INCLUDES = ("ImagingStudy:subject", "ImagingStudy:endpoint")
UID_CHUNK = 50
STATUS_SYSTEM = "http://hl7.org/fhir/imagingstudy-status"


@dataclass
class StudyCriteria:
    """A search, parsed: what to ask the PACS and what to re-check."""

    study_uids: set[str] | None = None
    # Each group is one ``identifier`` value: its alternatives are ORed, groups ANDed.
    identifiers: list[tuple[set[str], list[Token]]] = field(default_factory=list)
    patients: list[PatientKey] | None = None
    dates: list[DateFilter] = field(default_factory=list)
    modalities: list[list[Token]] = field(default_factory=list)
    status_ok: bool = True
    sort_descending: bool = True

    def empty(self) -> bool:
        return (
            not self.status_ok
            or (self.study_uids is not None and not self.study_uids)
            or (self.patients is not None and not self.patients)
        )


@dataclass
class StudyPage:
    total: int
    resources: list[Resource]
    studies: list[DicomJson]
    patient_ids: dict[PatientKey, str]
    # The PACS returned as many studies as the gateway may ask for: more may match.
    truncated: bool = False


class ImagingStudyService:
    def __init__(
        self,
        upstream: Upstream,
        patients: PatientIndex,
        context: MappingContext,
        base_url: str,
        max_candidates: int = 5000,
        cache: StudyDetailCache | None = None,
    ) -> None:
        self.upstream = upstream
        self.patients = patients
        self.context = context
        self.base_url = base_url
        self.fallback_zone = context.local_zone or UTC
        self.max_candidates = max_candidates
        self.cache = cache or StudyDetailCache(ttl=0, max_entries=0)

    # -- read --------------------------------------------------------------

    async def read(self, study_uid: str, visibility: Visibility = EVERYTHING) -> Resource:
        if not is_uid(study_uid):
            raise NotFound(f"ImagingStudy/{study_uid} is not known.")
        studies = await self.upstream.search_studies(
            {"StudyInstanceUID": study_uid}, STUDY_FIELDS, limit=2
        )
        # Not visible reads as unknown: a refusal must not confirm the study exists.
        studies = [
            s
            for s in studies
            if dj.text(s, "StudyInstanceUID") == study_uid and visibility.permits(s)
        ]
        if not studies:
            raise NotFound(f"ImagingStudy/{study_uid} is not known.")
        page = await self._expand(studies[:1])
        return page.resources[0]

    # -- search ------------------------------------------------------------

    async def parse(self, request: SearchRequest) -> StudyCriteria:
        criteria = StudyCriteria()
        uid_sets: list[set[str]] = []
        for value in request.all("_id"):
            uid_sets.append({v for v in params.ids("_id", value) if is_uid(v)})
        for value in request.all("identifier"):
            uids, accessions = _identifier_tokens(params.tokens("identifier", value))
            if accessions:
                criteria.identifiers.append((uids, accessions))
            else:
                uid_sets.append(uids)
        for value in request.all("series"):
            series_uids = [t.code for t in params.tokens("series", value)]
            uid_sets.append(await self._studies_of_series(series_uids))
        if uid_sets:
            criteria.study_uids = set.intersection(*uid_sets)
        for name in ("patient", "subject"):
            for value in request.all(name):
                ids = params.references(name, value, "Patient", self.base_url)
                keys = set((await self.patients.keys_for(ids)).values())
                known = criteria.patients
                criteria.patients = list(keys) if known is None else [k for k in known if k in keys]
        for value in request.all("started"):
            criteria.dates.append(params.date_filter("started", value))
        for value in request.all("modality"):
            criteria.modalities.append(params.tokens("modality", value))
        for value in request.all("status"):
            criteria.status_ok = criteria.status_ok and any(
                t.code == "available" and t.system in (None, "", STATUS_SYSTEM)
                for t in params.tokens("status", value)
            )
        sorts = request.all("_sort")
        if sorts:
            if sorts[-1] not in ("started", "-started"):
                raise BadRequest("Parameter '_sort': only 'started' and '-started' are supported.")
            criteria.sort_descending = sorts[-1].startswith("-")
        return criteria

    async def search(
        self,
        criteria: StudyCriteria,
        offset: int,
        count: int,
        visibility: Visibility = EVERYTHING,
    ) -> StudyPage:
        criteria = restrict(criteria, visibility)
        if criteria.empty():
            return StudyPage(0, [], [], {})
        candidates, truncated = await self._candidates(criteria)
        matching = [s for s in candidates if self._accepts(s, criteria) and visibility.permits(s)]
        matching.sort(key=self._sort_key, reverse=criteria.sort_descending)
        page = matching[offset : offset + count] if count else []
        expanded = await self._expand(page) if page else StudyPage(0, [], [], {})
        expanded.total = len(matching)
        expanded.truncated = truncated
        return expanded

    async def _candidates(self, criteria: StudyCriteria) -> tuple[list[DicomJson], bool]:
        """One study-level QIDO per alternative of the most selective filter."""
        base: dict[str, str] = {}
        for uids, accessions in criteria.identifiers:
            if not uids and len(accessions) == 1:
                base["AccessionNumber"] = accessions[0].code
        if len(criteria.modalities) == 1 and len(criteria.modalities[0]) == 1:
            base["ModalitiesInStudy"] = criteria.modalities[0][0].code
        date_range = _qido_date_range(criteria.dates)
        if date_range:
            base["StudyDate"] = date_range
        queries: list[dict[str, str]]
        if criteria.study_uids is not None:
            wanted = sorted(criteria.study_uids)
            queries = [
                {"StudyInstanceUID": ",".join(wanted[i : i + UID_CHUNK])}
                for i in range(0, len(wanted), UID_CHUNK)
            ]
        elif criteria.patients is not None:
            queries = [
                {**base, "PatientID": pid} for pid in sorted({p for _, p in criteria.patients})
            ]
        else:
            queries = [base]
        results = await asyncio.gather(
            *(
                self.upstream.search_studies(q, STUDY_FIELDS, limit=self.max_candidates)
                for q in queries
            )
        )
        seen: dict[str, DicomJson] = {}
        for study in (s for batch in results for s in batch):
            uid = dj.text(study, "StudyInstanceUID")
            if uid and uid not in seen:
                seen[uid] = study
        truncated = any(len(batch) >= self.max_candidates for batch in results)
        return list(seen.values()), truncated

    def _accepts(self, study: DicomJson, criteria: StudyCriteria) -> bool:
        uid = dj.text(study, "StudyInstanceUID") or ""
        if criteria.study_uids is not None and uid not in criteria.study_uids:
            return False
        if criteria.patients is not None and mapping.patient_key(study) not in criteria.patients:
            return False
        accession = dj.text(study, "AccessionNumber")
        for uids, accessions in criteria.identifiers:
            if uid not in uids and not any(
                _accession_matches(study, accession, token) for token in accessions
            ):
                return False
        modalities = {m.upper() for m in dj.texts(study, "ModalitiesInStudy")}
        for alternatives in criteria.modalities:
            if not any(
                t.code.upper() in modalities and t.system in (None, "", terminology.DCM)
                for t in alternatives
            ):
                return False
        return all(f.accepts(self._moment(study), self.fallback_zone) for f in criteria.dates)

    def _moment(self, study: DicomJson) -> Moment | None:
        return dicom_moment(
            dj.text(study, "StudyDate"),
            dj.text(study, "StudyTime"),
            dj.text(study, "TimezoneOffsetFromUTC"),
            self.context.local_zone,
        )

    def _sort_key(self, study: DicomJson) -> tuple[datetime, str]:
        moment = self._moment(study)
        instant = (
            moment.aware(self.fallback_zone)[0] if moment else datetime.min.replace(tzinfo=UTC)
        )
        return (instant, dj.text(study, "StudyInstanceUID") or "")

    async def _studies_of_series(self, series_uids: Sequence[str]) -> set[str]:
        valid = [uid for uid in series_uids if is_uid(uid)]
        if not valid:
            return set()
        found = await self.upstream.search_series(
            {"SeriesInstanceUID": ",".join(valid)}, ("StudyInstanceUID",)
        )
        wanted = set(valid)
        return {
            uid
            for s in found
            if dj.text(s, "SeriesInstanceUID") in wanted and (uid := dj.text(s, "StudyInstanceUID"))
        }

    # -- expansion ---------------------------------------------------------

    async def _expand(self, studies: list[DicomJson]) -> StudyPage:
        """Series and instances for all studies at once (the cache's misses), then the mapping."""
        cached = {uid: d for s in studies if (uid := _uid(s)) and (d := self.cache.get(s))}
        missing = [u for u in (_uid(s) for s in studies) if u and u not in cached]
        chunks = [missing[i : i + UID_CHUNK] for i in range(0, len(missing), UID_CHUNK)]
        series_batches = asyncio.gather(
            *(
                self.upstream.search_series({"StudyInstanceUID": ",".join(c)}, SERIES_FIELDS)
                for c in chunks
            )
        )
        instance_batches = asyncio.gather(
            *(
                self.upstream.search_instances({"StudyInstanceUID": ",".join(c)}, INSTANCE_FIELDS)
                for c in chunks
            )
        )
        keys = [k for k in (mapping.patient_key(s) for s in studies) if k]
        series_results, instance_results, patient_ids = await asyncio.gather(
            series_batches, instance_batches, self.patients.ids_for(keys)
        )
        series_by_study = _group(series_results, set(missing))
        instances_by_study = _group(instance_results, set(missing))
        resources = []
        for study in studies:
            uid = _uid(study) or ""
            if uid in cached:
                series, instances = cached[uid].series, cached[uid].instances
            else:
                series, instances = series_by_study.get(uid, []), instances_by_study.get(uid, [])
                self.cache.put(study, series, instances)
            key = mapping.patient_key(study)
            resources.append(
                mapping.imaging_study(
                    study,
                    series,
                    instances,
                    patient_id=patient_ids.get(key) if key else None,
                    context=self.context,
                )
            )
        return StudyPage(len(resources), resources, studies, patient_ids)


def restrict(criteria: StudyCriteria, visibility: Visibility) -> StudyCriteria:
    """The criteria narrowed to what the request may see (gateway.access)."""
    if visibility.unrestricted:
        return criteria
    narrowed = replace(criteria)
    if visibility.patients is not None:
        allowed = visibility.patients
        narrowed.patients = sorted(
            allowed if criteria.patients is None else set(criteria.patients) & allowed
        )
    if visibility.studies is not None:
        allowed_studies = set(visibility.studies)
        narrowed.study_uids = (
            allowed_studies
            if criteria.study_uids is None
            else criteria.study_uids & allowed_studies
        )
    return narrowed


def _uid(study: DicomJson) -> str | None:
    return dj.text(study, "StudyInstanceUID")


def _group(batches: Sequence[Sequence[DicomJson]], wanted: set[str]) -> dict[str, list[DicomJson]]:
    grouped: dict[str, list[DicomJson]] = {}
    for item in (x for batch in batches for x in batch):
        uid = dj.text(item, "StudyInstanceUID")
        # A PACS that ignores UID list matching must not leak other studies in.
        if uid in wanted:
            grouped.setdefault(uid, []).append(item)
    return grouped


def _identifier_tokens(tokens: list[Token]) -> tuple[set[str], list[Token]]:
    uids: set[str] = set()
    accessions: list[Token] = []
    for token in tokens:
        if token.code.startswith("urn:oid:") and token.system in (None, "", terminology.DICOM_UID):
            uid = token.code.removeprefix("urn:oid:")
            if is_uid(uid):
                uids.add(uid)
        elif token.system != terminology.DICOM_UID:
            accessions.append(token)
    return uids, accessions


def _accession_matches(study: DicomJson, accession: str | None, token: Token) -> bool:
    if accession != token.code:
        return False
    if token.system is None:
        return True
    issuers = dj.items(study, "IssuerOfAccessionNumberSequence")
    system = mapping.issuer(issuers[0])[0] if issuers else None
    return (token.system or None) == system


def _qido_date_range(filters: list[DateFilter]) -> str | None:
    """A StudyDate range the PACS can apply, a day wider each side for time zones."""
    low: datetime | None = None
    high: datetime | None = None
    for date_filter in filters:
        start, end = date_filter.moment.start, date_filter.moment.end
        if date_filter.prefix in ("eq", "ge", "gt"):
            low = max(low, start) if low else start
        if date_filter.prefix in ("eq", "le", "lt"):
            high = min(high, end) if high else end
    if low is None and high is None:
        return None
    day = timedelta(days=1)
    low_text = (low - day).strftime("%Y%m%d") if low and low.year > 1 else ""
    high_text = (high + day).strftime("%Y%m%d") if high and high.year < 9999 else ""
    return f"{low_text}-{high_text}"
