"""ImagingStudy search parameters: from a FHIR query to a records query that decides exactly.

``parse`` reads the parameters (400 for bad values), ``study_query`` turns them
into a :class:`~gateway.records.studies.StudyQuery`: the narrowest filters
the PACS can apply, and ``accepts``, which re-checks every criterion on each
study, because PACSes differ in how loosely they match. ``resources`` maps a
page to FHIR. No I/O here: the records layer runs the search within the
caller's access.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import UTC, timedelta
from zoneinfo import ZoneInfo

from gateway.dates import Moment, dicom_moment
from gateway.dicomweb import dicomjson as dj
from gateway.dicomweb.dicomjson import is_uid
from gateway.errors import BadRequest
from gateway.fhir import mapping, params, terminology
from gateway.fhir.mapping import MappingContext, Resource
from gateway.fhir.params import DateFilter, SearchRequest, Token
from gateway.records.studies import StudyDetail, StudyPage, StudyQuery
from gateway.records.summaries import StudySummary

SEARCH_PARAMETERS: dict[str, tuple[str, str]] = {
    "_id": ("token", "The StudyInstanceUID"),
    "identifier": ("token", "Study UID (urn:oid:...) or accession number"),
    "patient": ("reference", "Who the study is about"),
    "subject": ("reference", "Who the study is about"),
    "started": ("date", "When the study started"),
    "modality": ("token", "A modality in the study (DICOM code)"),
    "series": ("token", "A SeriesInstanceUID in the study"),
    "status": ("token", "registered | available | cancelled | entered-in-error | unknown"),
    "_lastUpdated": (
        "date",
        "meta.lastUpdated: when the gateway last saw the study change, or when it was "
        "released to its patient, whichever is later (e.g. gt2023-04-17T04:00:00Z)",
    ),
}
INCLUDES = ("ImagingStudy:subject", "ImagingStudy:endpoint")
# RFC 7240 preference an app sends to get each study's contained Endpoint as a bearer
# capability URL (requires-access-token = false) instead of the token-protected base.
CAPABILITY_PREFERENCE = "wado-capability=bearer"
STATUS_SYSTEM = "http://hl7.org/fhir/imagingstudy-status"


@dataclass
class StudyCriteria:
    """A search, parsed."""

    study_uids: set[str] | None = None
    series_groups: list[set[str]] = field(default_factory=list)
    patient_groups: list[set[str]] = field(default_factory=list)
    # Each group is one ``identifier`` value: its alternatives are ORed, groups ANDed.
    identifiers: list[tuple[set[str], list[Token]]] = field(default_factory=list)
    dates: list[DateFilter] = field(default_factory=list)
    updated: list[DateFilter] = field(default_factory=list)
    modalities: list[list[Token]] = field(default_factory=list)
    status_ok: bool = True
    sort_descending: bool = True


def parse(request: SearchRequest, base_url: str) -> StudyCriteria:
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
        criteria.series_groups.append({t.code for t in params.tokens("series", value)})
    if uid_sets:
        criteria.study_uids = set.intersection(*uid_sets)
    for name in ("patient", "subject"):
        for value in request.all(name):
            criteria.patient_groups.append(set(params.references(name, value, "Patient", base_url)))
    for value in request.all("started"):
        criteria.dates.append(params.date_filter("started", value))
    for value in request.all("_lastUpdated"):
        criteria.updated.append(params.date_filter("_lastUpdated", value))
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


def study_query(criteria: StudyCriteria, local_zone: ZoneInfo | None) -> StudyQuery:
    """What the records layer asks the PACS, and the exact check of each study."""
    fallback_zone = local_zone or UTC
    accession = None
    for uids, accessions in criteria.identifiers:
        if not uids and len(accessions) == 1:
            accession = accessions[0].code
    modality = None
    if len(criteria.modalities) == 1 and len(criteria.modalities[0]) == 1:
        modality = criteria.modalities[0][0].code

    def moment(study: StudySummary) -> Moment | None:
        source = study.source
        return dicom_moment(
            dj.text(source, "StudyDate"),
            dj.text(source, "StudyTime"),
            dj.text(source, "TimezoneOffsetFromUTC"),
            local_zone,
        )

    def accepts(study: StudySummary) -> bool:
        accession_number = dj.text(study.source, "AccessionNumber")
        for uids, accessions in criteria.identifiers:
            if study.uid not in uids and not any(
                _accession_matches(study, accession_number, token) for token in accessions
            ):
                return False
        modalities = set(study.modalities)
        for alternatives in criteria.modalities:
            if not any(
                t.code.upper() in modalities and t.system in (None, "", terminology.DCM)
                for t in alternatives
            ):
                return False
        if not all(f.accepts(moment(study), fallback_zone) for f in criteria.dates):
            return False
        if criteria.updated:
            updated = last_updated_moment(study)
            return all(f.accepts(updated, UTC) for f in updated_filters)
        return True

    # A _lastUpdated value without a zone is a time in UTC, the zone meta.lastUpdated is in.
    updated_filters = [
        DateFilter(f.prefix, replace(f.moment, zone=f.moment.zone or UTC)) for f in criteria.updated
    ]

    return StudyQuery(
        study_uids=frozenset()
        if not criteria.status_ok
        else None
        if criteria.study_uids is None
        else frozenset(criteria.study_uids),
        series_groups=tuple(frozenset(g) for g in criteria.series_groups),
        patient_groups=tuple(frozenset(g) for g in criteria.patient_groups),
        accession=accession,
        modality=modality,
        date_range=_qido_date_range(criteria.dates),
        accepts=accepts,
        newest_first=criteria.sort_descending,
        uses_updated=bool(criteria.updated),
    )


def last_updated_moment(study: StudySummary) -> Moment | None:
    """The study's meta.lastUpdated as a moment of one millisecond (what searches compare)."""
    at = study.last_updated
    if at is None:
        return None
    start = at.astimezone(UTC).replace(tzinfo=None)
    return Moment(start, start + timedelta(milliseconds=1), UTC)


def resources(page: StudyPage, context: MappingContext) -> list[Resource]:
    found = []
    for detail in page.studies:
        resource = _MAPPED.imaging_study(
            detail,
            page.patient_ids.get(detail.summary.patient) if detail.summary.patient else None,
            context,
        )
        at = detail.summary.last_updated
        if at is not None:
            # The mapped resource is shared (MappedStudies): a copy carries the time.
            meta = {**resource["meta"], "lastUpdated": mapping.instant(at)}
            resource = {**resource, "meta": meta}
        found.append(resource)
    return found


class MappedStudies:
    """Each ImagingStudy mapped once per process from the same DICOM objects.

    The study index hands out the very same parsed record and instance list while
    the stored text is unchanged (a rewrite anywhere is a new object), and the
    mapping is a pure function of them, the patient's id and the context. The
    objects are kept beside their resource so that their ids are not reused. The
    resources are shared between answers: nothing changes them after mapping.
    """

    def __init__(self, entries: int = 2048, instances: int = 100_000) -> None:
        self._entries = entries
        # The instance lists held here stay alive with their resources: bound them too.
        self._instances = instances
        self._held = 0
        self._mapped: dict[tuple[int, int, str | None, MappingContext], tuple[object, ...]] = {}

    def imaging_study(
        self, detail: StudyDetail, patient_id: str | None, context: MappingContext
    ) -> Resource:
        source, instances = detail.summary.source, detail.instances
        key = (id(source), id(instances), patient_id, context)
        found = self._mapped.get(key)
        if found is not None and found[0] is source and found[1] is instances:
            return found[2]  # type: ignore[return-value]
        resource = mapping.imaging_study(
            source, detail.series, instances, patient_id=patient_id, context=context
        )
        if len(self._mapped) >= self._entries or self._held + len(instances) > self._instances:
            self._mapped.clear()
            self._held = 0
        if len(instances) <= self._instances:
            self._mapped[key] = (source, instances, resource)
            self._held += len(instances)
        return resource


_MAPPED = MappedStudies()


def wants_capability(prefer: str) -> bool:
    """Does the ``Prefer`` header ask for capability URLs?"""
    asked = {p.strip().replace(" ", "").lower() for p in prefer.split(",")}
    return CAPABILITY_PREFERENCE in asked


def with_capability(resource: Resource, url: str, context: MappingContext) -> Resource:
    """The study with its contained Endpoint made the capability URL ``url``; the shared
    Endpoint it also names stays the token-protected one."""
    contained = {
        **mapping.endpoint(context, address=url, requires_access_token=False),
        "id": mapping.CONTAINED_ENDPOINT_ID,
    }
    return {**resource, "contained": [contained]}


def subjects(page: StudyPage) -> list[Resource]:
    """The Patient resources of the page's studies (for ``_include=ImagingStudy:subject``)."""
    first: dict[tuple[str, str], Resource] = {}
    for detail in page.studies:
        key = detail.summary.patient
        if key and key not in first and key in page.patient_ids:
            first[key] = mapping.patient(detail.summary.source, page.patient_ids[key])
    return list(first.values())


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


def _accession_matches(study: StudySummary, accession: str | None, token: Token) -> bool:
    if accession != token.code:
        return False
    if token.system is None:
        return True
    issuers = dj.items(study.source, "IssuerOfAccessionNumberSequence")
    system = mapping.issuer(issuers[0])[0] if issuers else None
    return (token.system or None) == system


def _qido_date_range(filters: list[DateFilter]) -> str | None:
    """A StudyDate range the PACS can apply, a day wider each side for time zones."""
    low = high = None
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
