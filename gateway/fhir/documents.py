"""DocumentReference search parameters, and the mapping of found documents to FHIR.

The records layer finds the documents a caller may see (narrowed by patient,
study and accession); every criterion is then checked here on the mapped
resource, so nothing the PACS matched loosely gets through. No I/O here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, tzinfo

from gateway.dates import Moment, parse_fhir_datetime
from gateway.dicomweb.dicomjson import is_uid
from gateway.errors import BadRequest
from gateway.fhir import params, terminology
from gateway.fhir.document_mapping import document_reference
from gateway.fhir.mapping import MappingContext, Resource
from gateway.fhir.params import DateFilter, SearchRequest, Token
from gateway.records.access import patient_key
from gateway.records.documents import DocumentQuery, DocumentSet

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
STATUS_SYSTEM = "http://hl7.org/fhir/document-reference-status"
MIME_SYSTEM = "urn:ietf:bcp:13"


@dataclass
class DocumentCriteria:
    sop_uids: set[str] | None = None
    study_uids: set[str] | None = None
    patient_groups: list[set[str]] = field(default_factory=list)  # FHIR ids per parameter
    accessions: list[list[Token]] = field(default_factory=list)
    dates: list[DateFilter] = field(default_factory=list)
    # Each list is one parameter's alternatives (ORed); the lists are ANDed.
    token_checks: list[tuple[str, list[Token]]] = field(default_factory=list)
    sort_descending: bool = True


def parse(request: SearchRequest, fhir_url: str) -> DocumentCriteria:
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
        refs = params.references("related", value, "ImagingStudy", fhir_url)
        study_sets.append({uid for uid in refs if is_uid(uid)})
    if study_sets:
        criteria.study_uids = set.intersection(*study_sets)
    for name in ("patient", "subject"):
        for value in request.all(name):
            criteria.patient_groups.append(set(params.references(name, value, "Patient", fhir_url)))
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


def document_query(criteria: DocumentCriteria) -> DocumentQuery:
    accession = None
    for tokens in criteria.accessions[:1]:
        if len(tokens) == 1:
            accession = tokens[0].code
    return DocumentQuery(
        sop_uids=None if criteria.sop_uids is None else frozenset(criteria.sop_uids),
        study_uids=None if criteria.study_uids is None else frozenset(criteria.study_uids),
        patient_groups=tuple(frozenset(g) for g in criteria.patient_groups),
        accession=accession,
    )


def resources(found: DocumentSet, context: MappingContext, fhir_url: str) -> list[Resource]:
    mapped = []
    for document in found.documents:
        key = patient_key(document)
        mapped.append(
            document_reference(
                document,
                patient_id=found.patient_ids.get(key) if key else None,
                context=context,
                fhir_url=fhir_url,
            )
        )
    return mapped


def matching(
    found: DocumentSet, criteria: DocumentCriteria, context: MappingContext, fhir_url: str
) -> list[Resource]:
    """The found documents that meet every criterion, mapped and sorted by date."""
    fallback_zone = context.local_zone or UTC
    kept = [r for r in resources(found, context, fhir_url) if _accepts(r, criteria, fallback_zone)]

    def sort_key(resource: Resource) -> tuple[datetime, str]:
        moment = _moment(resource)
        instant = moment.aware(fallback_zone)[0] if moment else datetime.min.replace(tzinfo=UTC)
        return (instant, str(resource["id"]))

    kept.sort(key=sort_key, reverse=criteria.sort_descending)
    return kept


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
