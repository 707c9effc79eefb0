"""Granular scopes (``patient/DocumentReference.rs?category=...``) applied to requests.

A search gets the filter added to its query, so it cannot return more than
the filter allows; a read is answered only when the resource is found by a
search for its id under the filter. Filters on a parameter the resource type
does not support cannot be enforced, so such requests are refused.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING
from urllib.parse import urlencode

from starlette.datastructures import QueryParams

from gateway.fhir import documents, patients, studies
from gateway.fhir.params import SearchRequest

if TYPE_CHECKING:
    from gateway.records.access import Access
    from gateway.services import Services

Filter = tuple[tuple[str, str], ...]
PARAMETERS: dict[str, frozenset[str]] = {
    "ImagingStudy": frozenset(studies.SEARCH_PARAMETERS),
    "DocumentReference": frozenset(documents.SEARCH_PARAMETERS),
    "Patient": frozenset(patients.SEARCH_PARAMETERS),
}


class CannotEnforce(Exception):
    """The granted filters cannot be applied to this request."""


def enforceable(resource_type: str, filters: Sequence[Filter]) -> bool:
    known = PARAMETERS.get(resource_type, frozenset())
    return all(name in known for alternative in filters for name, _ in alternative)


def search_query(query_string: bytes, filters: Sequence[Filter]) -> bytes:
    """The query with the filter ANDed in; alternatives on one parameter become an OR list."""
    names = {name for alternative in filters for name, _ in alternative}
    if len(filters) == 1:
        extra = list(filters[0])
    elif len(names) == 1 and all(len(alternative) == 1 for alternative in filters):
        name = next(iter(names))
        extra = [(name, ",".join(alternative[0][1].replace(",", "\\,") for alternative in filters))]
    else:
        raise CannotEnforce(
            "These granular scopes cannot be combined in one search; search once per filter."
        )
    added = urlencode(extra).encode()
    return query_string + b"&" + added if query_string else added


async def read_allowed(
    services: Services,
    access: Access,
    resource_type: str,
    resource_id: str,
    filters: Sequence[Filter],
) -> bool:
    """Is the resource found by a search for its id under one of the filters?"""
    records = services.records
    base = services.settings.fhir_base_url
    for alternative in filters:
        params = QueryParams(urlencode([("_id", resource_id), *alternative]))
        request = SearchRequest(params, PARAMETERS[resource_type], strict=True)
        if resource_type == "ImagingStudy":
            query = studies.study_query(
                studies.parse(request, base), services.mapping_context.local_zone
            )
            if (await records.studies.search(access, query, 0, 1)).total:
                return True
        elif resource_type == "DocumentReference":
            criteria = documents.parse(request, base)
            found = await records.documents.find(access, documents.document_query(criteria))
            if documents.matching(found, criteria, services.mapping_context, base):
                return True
        elif resource_type == "Patient":
            if await records.patients.search(access, patients.parse(request)):
                return True
    return False
