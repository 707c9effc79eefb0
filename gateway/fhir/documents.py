"""DocumentReference read and search over what the PACS holds (SR, PDF, KOS).

A search costs one series-level QIDO per document modality (SR, DOC, KO),
narrowed by patient, study and visibility, then the metadata of each
candidate series; series metadata is cached while the series' instance count
is unchanged, since reports are rarely rewritten. Every criterion is checked
on the mapped resource, so nothing the PACS matched loosely gets through.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, tzinfo

from gateway.access import CHECK_FIELDS, EVERYTHING, PatientKey, Visibility
from gateway.dicomweb import dicomjson as dj
from gateway.dicomweb import instances, reports
from gateway.dicomweb.dicomjson import SERIES_FIELDS, DicomJson, is_uid
from gateway.dicomweb.upstream import Upstream
from gateway.errors import BadRequest, NotFound
from gateway.fhir import mapping, params, terminology
from gateway.fhir.dates import Moment, parse_fhir_datetime
from gateway.fhir.document_mapping import document_reference
from gateway.fhir.mapping import MappingContext, Resource
from gateway.fhir.params import DateFilter, SearchRequest, Token
from gateway.store.patients import PatientIndex

SEARCH_PARAMETERS: dict[str, tuple[str, str]] = {
    "_id": ("token", "The SOP Instance UID of the report or manifest"),
    "identifier": ("token", "SOP Instance UID (urn:oid:...) or accession number"),
    "patient": ("reference", "Who the document is about"),
    "subject": ("reference", "Who the document is about"),
    "date": ("date", "When the document was created (DICOM content date and time)"),
    "type": ("token", "Kind of document (LOINC, e.g. 18748-4; DCM 113030 for manifests)"),
    "category": ("token", "Categorization of the document (LOINC LP29684-5, Radiology)"),
    "related": ("reference", "The ImagingStudy the document belongs to"),
    "status": ("token", "current | superseded | entered-in-error"),
    "contenttype": ("token", "Media type of an attachment (text/html, application/pdf, ...)"),
}
UID_CHUNK = 50
SERIES_CACHE_ENTRIES = 4096
METADATA_CONCURRENCY = 8
STATUS_SYSTEM = "http://hl7.org/fhir/document-reference-status"
MIME_SYSTEM = "urn:ietf:bcp:13"


@dataclass
class DocumentCriteria:
    sop_uids: set[str] | None = None
    study_uids: set[str] | None = None
    patients: list[PatientKey] | None = None
    accessions: list[list[Token]] = field(default_factory=list)
    dates: list[DateFilter] = field(default_factory=list)
    # Each list is one parameter's alternatives (ORed); the lists are ANDed.
    token_checks: list[tuple[str, list[Token]]] = field(default_factory=list)
    sort_descending: bool = True

    def empty(self) -> bool:
        return any(
            value is not None and not value
            for value in (self.sop_uids, self.study_uids, self.patients)
        )


@dataclass
class DocumentPage:
    total: int
    resources: list[Resource]
    truncated: bool = False


class DocumentReferenceService:
    def __init__(
        self,
        upstream: Upstream,
        patients: PatientIndex,
        context: MappingContext,
        fhir_url: str,
        max_candidates: int = 5000,
    ) -> None:
        self.upstream = upstream
        self.patients = patients
        self.context = context
        self.fhir_url = fhir_url
        self.fallback_zone = context.local_zone or UTC
        self.max_candidates = max_candidates
        self._series_cache: OrderedDict[str, tuple[str, list[DicomJson]]] = OrderedDict()
        self._metadata_slots = asyncio.Semaphore(METADATA_CONCURRENCY)

    # -- read --------------------------------------------------------------

    async def locate(self, sop_uid: str, visibility: Visibility = EVERYTHING) -> DicomJson:
        """The instance-level QIDO record of a visible document, or NotFound."""
        unknown = NotFound(f"DocumentReference/{sop_uid} is not known.")
        if not is_uid(sop_uid):
            raise unknown
        fields = ("StudyInstanceUID", "SeriesInstanceUID", "SOPClassUID", *CHECK_FIELDS)
        for filters in visibility.narrow({"SOPInstanceUID": sop_uid}):
            for found in await self.upstream.search_instances(filters, fields, limit=2):
                if (
                    dj.text(found, "SOPInstanceUID") == sop_uid
                    and dj.text(found, "SOPClassUID") in reports.DOCUMENT_CLASSES
                    and visibility.permits(found)
                ):
                    return found
        raise unknown

    async def read(self, sop_uid: str, visibility: Visibility = EVERYTHING) -> Resource:
        found = await self.locate(sop_uid, visibility)
        path = "/".join(
            (
                "studies",
                dj.text(found, "StudyInstanceUID") or "",
                "series",
                dj.text(found, "SeriesInstanceUID") or "",
                "instances",
                sop_uid,
            )
        )
        documents = [
            d for d in await instances.metadata(self.upstream, path) if _is_document(d, visibility)
        ]
        if not documents:
            raise NotFound(f"DocumentReference/{sop_uid} is not known.")
        return (await self._map(documents))[0]

    # -- search ------------------------------------------------------------

    async def parse(self, request: SearchRequest) -> DocumentCriteria:
        criteria = DocumentCriteria()
        sop_sets: list[set[str]] = []
        for value in request.all("_id"):
            sop_sets.append({v for v in params.ids("_id", value) if is_uid(v)})
        for value in request.all("identifier"):
            uids, accessions = _identifier_tokens(params.tokens("identifier", value))
            if accessions and uids:
                # Mixed alternatives: checked on the resource, not pre-filtered.
                criteria.token_checks.append(("identifier", params.tokens("identifier", value)))
            elif accessions:
                criteria.accessions.append(accessions)
            else:
                sop_sets.append(uids)
        if sop_sets:
            criteria.sop_uids = set.intersection(*sop_sets)
        study_sets = []
        for value in request.all("related"):
            refs = params.references("related", value, "ImagingStudy", self.fhir_url)
            study_sets.append({uid for uid in refs if is_uid(uid)})
        if study_sets:
            criteria.study_uids = set.intersection(*study_sets)
        for name in ("patient", "subject"):
            for value in request.all(name):
                ids = params.references(name, value, "Patient", self.fhir_url)
                keys = set((await self.patients.keys_for(ids)).values())
                known = criteria.patients
                criteria.patients = list(keys) if known is None else [k for k in known if k in keys]
        for value in request.all("date"):
            criteria.dates.append(params.date_filter("date", value))
        for name in ("type", "category", "status", "contenttype"):
            for value in request.all(name):
                criteria.token_checks.append((name, params.tokens(name, value)))
        sorts = request.all("_sort")
        if sorts:
            if sorts[-1] not in ("date", "-date"):
                raise BadRequest("Parameter '_sort': only 'date' and '-date' are supported.")
            criteria.sort_descending = sorts[-1].startswith("-")
        return criteria

    async def search(
        self,
        criteria: DocumentCriteria,
        offset: int,
        count: int,
        visibility: Visibility = EVERYTHING,
    ) -> DocumentPage:
        if criteria.empty():
            return DocumentPage(0, [])
        series, truncated = await self._candidate_series(criteria, visibility)
        documents = await self._documents_of(series, visibility)
        if criteria.sop_uids is not None:
            documents = [d for d in documents if dj.text(d, "SOPInstanceUID") in criteria.sop_uids]
        if criteria.patients is not None:
            wanted = set(criteria.patients)
            documents = [d for d in documents if mapping.patient_key(d) in wanted]
        mapped = await self._map(documents)
        resources = [r for r in mapped if _accepts(r, criteria, self.fallback_zone)]
        resources.sort(key=self._sort_key, reverse=criteria.sort_descending)
        page = resources[offset : offset + count] if count else []
        return DocumentPage(len(resources), page, truncated)

    async def _candidate_series(
        self, criteria: DocumentCriteria, visibility: Visibility
    ) -> tuple[list[DicomJson], bool]:
        scopes: list[dict[str, str]]
        if criteria.sop_uids is not None:
            series_uids = await self._series_of(sorted(criteria.sop_uids))
            if not series_uids:
                return [], False
            scopes = [
                {"SeriesInstanceUID": ",".join(series_uids[i : i + UID_CHUNK])}
                for i in range(0, len(series_uids), UID_CHUNK)
            ]
        elif criteria.study_uids is not None:
            wanted = sorted(criteria.study_uids)
            scopes = [
                {"StudyInstanceUID": ",".join(wanted[i : i + UID_CHUNK])}
                for i in range(0, len(wanted), UID_CHUNK)
            ]
        elif criteria.patients is not None:
            scopes = [{"PatientID": pid} for pid in sorted({p for _, p in criteria.patients})]
        else:
            scopes = [{}]
        for tokens in criteria.accessions[:1]:
            if len(tokens) == 1:
                scopes = [{**scope, "AccessionNumber": tokens[0].code} for scope in scopes]
        queries = [
            narrowed
            for scope in scopes
            for modality in reports.DOCUMENT_MODALITIES
            for narrowed in visibility.narrow({**scope, "Modality": modality})
        ]
        fields = (*SERIES_FIELDS, *CHECK_FIELDS, "AccessionNumber")
        batches = await asyncio.gather(
            *(self.upstream.search_series(q, fields, limit=self.max_candidates) for q in queries)
        )
        seen: dict[str, DicomJson] = {}
        for item in (s for batch in batches for s in batch):
            uid = dj.text(item, "SeriesInstanceUID")
            modality = (dj.text(item, "Modality") or "").upper()
            if uid and modality in reports.DOCUMENT_MODALITIES and visibility.permits(item):
                seen.setdefault(uid, item)
        if criteria.study_uids is not None:
            seen = {
                k: v
                for k, v in seen.items()
                if dj.text(v, "StudyInstanceUID") in criteria.study_uids
            }
        truncated = any(len(batch) >= self.max_candidates for batch in batches)
        return list(seen.values()), truncated

    async def _series_of(self, sop_uids: Sequence[str]) -> list[str]:
        found = await asyncio.gather(
            *(
                self.upstream.search_instances(
                    {"SOPInstanceUID": ",".join(sop_uids[i : i + UID_CHUNK])},
                    ("SeriesInstanceUID",),
                )
                for i in range(0, len(sop_uids), UID_CHUNK)
            )
        )
        wanted = set(sop_uids)
        return sorted(
            {
                uid
                for batch in found
                for item in batch
                if dj.text(item, "SOPInstanceUID") in wanted
                and (uid := dj.text(item, "SeriesInstanceUID"))
            }
        )

    async def _documents_of(
        self, series: Iterable[DicomJson], visibility: Visibility
    ) -> list[DicomJson]:
        found = await asyncio.gather(*(self._series_metadata(s) for s in series))
        return [d for batch in found for d in batch if _is_document(d, visibility)]

    async def _series_metadata(self, series: DicomJson) -> list[DicomJson]:
        uid = dj.text(series, "SeriesInstanceUID") or ""
        version = dj.text(series, "NumberOfSeriesRelatedInstances") or ""
        cached = self._series_cache.get(uid)
        if cached and cached[0] == version and version:
            self._series_cache.move_to_end(uid)
            return cached[1]
        study = dj.text(series, "StudyInstanceUID") or ""
        async with self._metadata_slots:
            found = await instances.metadata(self.upstream, f"studies/{study}/series/{uid}")
        # Bulk data references and pixel-free content only: small enough to keep.
        self._series_cache[uid] = (version, found)
        while len(self._series_cache) > SERIES_CACHE_ENTRIES:
            self._series_cache.popitem(last=False)
        return found

    async def _map(self, documents: Sequence[DicomJson]) -> list[Resource]:
        keys = [k for k in (mapping.patient_key(d) for d in documents) if k]
        patient_ids = await self.patients.ids_for(keys)
        resources = []
        for document in documents:
            key = mapping.patient_key(document)
            resources.append(
                document_reference(
                    document,
                    patient_id=patient_ids.get(key) if key else None,
                    context=self.context,
                    fhir_url=self.fhir_url,
                )
            )
        return resources

    def _sort_key(self, resource: Resource) -> tuple[datetime, str]:
        moment = _moment(resource)
        instant = (
            moment.aware(self.fallback_zone)[0] if moment else datetime.min.replace(tzinfo=UTC)
        )
        return (instant, str(resource["id"]))


def _is_document(item: DicomJson, visibility: Visibility) -> bool:
    return reports.kind_of(item) is not None and visibility.permits(item)


def _moment(resource: Resource) -> Moment | None:
    text = resource.get("date") or resource["content"][0]["attachment"].get("creation")
    if not text:
        return None
    try:
        return parse_fhir_datetime(text)
    except ValueError:
        return None


def _accepts(resource: Resource, criteria: DocumentCriteria, fallback_zone: tzinfo) -> bool:
    moment = _moment(resource)
    if not all(f.accepts(moment, fallback_zone) for f in criteria.dates):
        return False
    for tokens in criteria.accessions:
        if not any(_identifier_matches(resource, t) for t in tokens):
            return False
    for name, tokens in criteria.token_checks:
        if not any(_token_matches(resource, name, t) for t in tokens):
            return False
    return True


def _codings(resource: Resource, name: str) -> list[tuple[str | None, str]]:
    if name == "type":
        return [(c.get("system"), c["code"]) for c in resource["type"].get("coding", [])]
    if name == "category":
        return [
            (c.get("system"), c["code"])
            for category in resource.get("category", [])
            for c in category.get("coding", [])
        ]
    if name == "status":
        return [(STATUS_SYSTEM, resource["status"])]
    if name == "contenttype":
        return [(MIME_SYSTEM, c["attachment"]["contentType"]) for c in resource["content"]]
    return []


def _token_matches(resource: Resource, name: str, token: Token) -> bool:
    if name == "identifier":
        return _identifier_matches(resource, token)
    for system, code in _codings(resource, name):
        same_code = (
            code.lower() == token.code.lower() if name == "contenttype" else code == token.code
        )
        if same_code and (token.system is None or token.system == (system or "")):
            return True
    return False


def _identifier_matches(resource: Resource, token: Token) -> bool:
    identifiers = [resource["masterIdentifier"], *resource.get("identifier", [])]
    return any(
        identifier["value"] == token.code
        and (token.system is None or (identifier.get("system") or "") == token.system)
        for identifier in identifiers
    ) or (
        token.code == resource["masterIdentifier"]["value"]
        and token.system in (None, "", terminology.RFC3986, terminology.DICOM_UID)
    )


def _identifier_tokens(tokens: list[Token]) -> tuple[set[str], list[Token]]:
    uids: set[str] = set()
    accessions: list[Token] = []
    for token in tokens:
        urn = token.code.startswith("urn:oid:")
        if urn and token.system in (None, "", terminology.RFC3986, terminology.DICOM_UID):
            uid = token.code.removeprefix("urn:oid:")
            if is_uid(uid):
                uids.add(uid)
        elif token.system not in (terminology.RFC3986, terminology.DICOM_UID):
            accessions.append(token)
    return uids, accessions
