"""FHIR search parameter syntax (R4 3.1.1.4 / 3.1.1.5): tokens, references, dates, paging.

Each parser raises :class:`~gateway.errors.BadRequest` naming the parameter,
so the client learns exactly which value was wrong.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import tzinfo

from starlette.datastructures import QueryParams

from gateway.dates import Moment, parse_fhir_datetime
from gateway.errors import BadRequest
from gateway.numbers import whole_number

FHIR_ID = re.compile(r"[A-Za-z0-9\-.]{1,64}")
DATE_PREFIXES = ("eq", "ne", "gt", "ge", "lt", "le")
# Parameters every search accepts, whatever the resource type.
COMMON = frozenset({"_count", "_offset", "_sort", "_summary", "_include", "_format", "_total"})


@dataclass(frozen=True)
class Token:
    system: str | None  # None: any system; "": no system
    code: str


@dataclass(frozen=True)
class DateFilter:
    prefix: str
    moment: Moment

    def accepts(self, target: Moment | None, fallback_zone: tzinfo) -> bool:
        """R4 date search semantics, comparing the ranges both values cover."""
        if target is None:
            return self.prefix == "ne"
        if self.moment.zone is None:
            # A zoneless search value is read in the study's own wall-clock time.
            lo, hi = self.moment.start, self.moment.end
            t_lo, t_hi = target.start, target.end
        else:
            lo, hi = self.moment.aware(fallback_zone)
            t_lo, t_hi = target.aware(fallback_zone)
        inside = lo <= t_lo and t_hi <= hi
        return {
            "eq": inside,
            "ne": not inside,
            "gt": t_hi > hi,
            "lt": t_lo < lo,
            "ge": t_hi > hi or inside,
            "le": t_lo < lo or inside,
        }[self.prefix]


@dataclass
class Paging:
    count: int
    offset: int = 0
    summary_count: bool = False


@dataclass
class SearchRequest:
    """The parameters of one search, with the ones the server did not use set aside."""

    params: QueryParams
    known: frozenset[str]
    strict: bool = False
    ignored: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        for name in self.params:
            base = name.split(":", 1)[0]
            if base not in self.known and base not in COMMON:
                if self.strict:
                    raise BadRequest(f"Unknown search parameter '{name}'.")
                self.ignored.append(name)
            elif ":" in name and base not in ("_include",):
                if self.strict:
                    raise BadRequest(f"Search parameter modifier '{name}' is not supported.")
                self.ignored.append(name)

    def all(self, name: str) -> list[str]:
        if name in self.ignored:
            return []
        return [value for value in self.params.getlist(name)]

    def used_items(self) -> list[tuple[str, str]]:
        return [(k, v) for k, v in self.params.multi_items() if k not in self.ignored]


def split_or(value: str) -> list[str]:
    """Comma-separated alternatives; ``\\,`` is a literal comma."""
    parts = re.split(r"(?<!\\),", value)
    return [part.replace("\\,", ",").strip() for part in parts if part.strip()]


def tokens(name: str, value: str) -> list[Token]:
    result = []
    for part in split_or(value):
        if "|" in part:
            system, code = part.split("|", 1)
            result.append(Token(system=system, code=code))
        else:
            result.append(Token(system=None, code=part))
    if not result or any(not t.code for t in result):
        raise BadRequest(f"Parameter '{name}': '{value}' is not a token (code or system|code).")
    return result


def references(name: str, value: str, resource_type: str, base_url: str) -> list[str]:
    """Ids from ``id``, ``Type/id`` or ``{base}/Type/id``, each checked for FHIR id syntax."""
    ids = []
    for part in split_or(value):
        reference = part.removeprefix(base_url.rstrip("/") + "/")
        if "/" in reference:
            kind, _, reference = reference.partition("/")
            if kind != resource_type or "/" in reference:
                raise BadRequest(
                    f"Parameter '{name}': '{part}' is not a reference to a {resource_type}."
                )
        if not FHIR_ID.fullmatch(reference):
            raise BadRequest(f"Parameter '{name}': '{part}' is not a valid resource id.")
        ids.append(reference)
    if not ids:
        raise BadRequest(f"Parameter '{name}' needs a value.")
    return ids


def ids(name: str, value: str) -> list[str]:
    found = split_or(value)
    if not found or any(not FHIR_ID.fullmatch(v) for v in found):
        raise BadRequest(f"Parameter '{name}': '{value}' is not a list of resource ids.")
    return found


def date_filter(name: str, value: str) -> DateFilter:
    prefix = value[:2] if value[:2] in DATE_PREFIXES else "eq"
    text = value[2:] if value[:2] in DATE_PREFIXES else value
    if value[:2].isalpha() and value[:2] not in DATE_PREFIXES and value[2:3].isdigit():
        raise BadRequest(
            f"Parameter '{name}': prefix '{value[:2]}' is not supported "
            f"(use one of {', '.join(DATE_PREFIXES)})."
        )
    try:
        return DateFilter(prefix, parse_fhir_datetime(text))
    except ValueError:
        raise BadRequest(
            f"Parameter '{name}': '{value}' is not a FHIR date (e.g. 2024, 2024-05-01, "
            "ge2024-05-01T10:00:00Z)."
        ) from None


def paging(request: SearchRequest, default_count: int, max_count: int) -> Paging:
    counts = request.all("_count")
    count = default_count
    if counts:
        count = min(whole_number("_count", counts[-1]), max_count)
    offsets = request.all("_offset")
    offset = 0
    if offsets:
        offset = whole_number("_offset", offsets[-1])
    summaries = request.all("_summary")
    summary_count = False
    if summaries:
        if summaries[-1] == "count":
            summary_count = True
        elif summaries[-1] != "false":
            raise BadRequest("Parameter '_summary': only 'count' and 'false' are supported.")
    return Paging(count=count, offset=offset, summary_count=summary_count or count == 0)
