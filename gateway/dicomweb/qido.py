"""QIDO-RS query parameters (PS3.18 8.3.4): matching keys, includefield, paging, fuzzy."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from pydicom.datadict import keyword_for_tag
from starlette.datastructures import QueryParams

from gateway.dicomweb.dicomjson import is_uid
from gateway.dicomweb.matching import InvalidFilter, validate
from gateway.errors import BadRequest
from gateway.numbers import whole_number

TAG = re.compile(r"[0-9A-Fa-f]{8}")
CONTROL = frozenset({"includefield", "fuzzymatching", "limit", "offset", "accept", "charset"})
MAX_LIMIT = 10_000


@dataclass
class Query:
    filters: dict[str, str] = field(default_factory=dict)
    fields: list[str] = field(default_factory=list)
    fuzzy: bool = False
    limit: int | None = None
    offset: int = 0


def check_uid(name: str, value: str) -> str:
    """UIDs from the path go to the PACS: only digits and dots, at most 64 characters."""
    if not is_uid(value):
        raise BadRequest(f"{name} '{value[:80]}' is not a valid UID.")
    return value


def attribute_keyword(name: str) -> str:
    """A keyword from a keyword or an 8-hex-digit tag; 400 for anything else."""
    if TAG.fullmatch(name):
        keyword = keyword_for_tag(int(name, 16))
        if keyword:
            return str(keyword)
    else:
        try:
            validate(name, "")
            return name
        except InvalidFilter:
            pass
    raise BadRequest(f"'{name[:80]}' is not a DICOM attribute (keyword or tag).")


def parse(params: QueryParams) -> Query:
    query = Query()
    for name, value in params.multi_items():
        if name == "includefield":
            for part in value.split(","):
                part = part.strip()
                if part:
                    query.fields.append("all" if part == "all" else attribute_keyword(part))
        elif name == "fuzzymatching":
            if value not in ("true", "false"):
                raise BadRequest("fuzzymatching must be true or false.")
            query.fuzzy = value == "true"
        elif name in ("limit", "offset"):
            number = whole_number(name, value)
            if name == "limit":
                query.limit = min(number, MAX_LIMIT)
            else:
                query.offset = number
        elif name in CONTROL:
            continue
        else:
            if "." in name:
                raise BadRequest(f"Sequence matching ('{name[:80]}') is not supported.")
            keyword = attribute_keyword(name)
            if keyword in query.filters:
                raise BadRequest(f"{keyword} is given more than once.")
            try:
                validate(keyword, value)
            except InvalidFilter as exc:
                raise BadRequest(str(exc)) from None
            if value and set(value) == {"*"}:
                # A lone "*" is universal matching (PS3.4 C.2.2.2.4); some PACSes
                # (Orthanc 1.10 on PN) match nothing with it, so it is not forwarded.
                continue
            query.filters[keyword] = value
    return query
