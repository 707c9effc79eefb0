"""Attribute matching of PS3.4 C.2.2.2, over DICOM JSON.

Used by the embedded store to answer QIDO, and by the FHIR facade to
re-check what a PACS returned (PACSes differ in how loosely they match, and
a filter the gateway relies on must hold exactly).

Supported: single value, universal (empty), list of UIDs (``\\`` or ``,``),
wildcards ``*`` and ``?`` on string VRs, ranges on DA, TM and DT. Person
names match case-insensitively, as most PACSes do.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from functools import lru_cache
from typing import Any

from pydicom.datadict import dictionary_VR, tag_for_keyword

from gateway.dicomweb.dicomjson import is_uid, person_name

WILDCARD_VRS = frozenset({"AE", "CS", "LO", "LT", "PN", "SH", "ST", "UC", "UR", "UT"})
RANGE_VRS = frozenset({"DA", "TM", "DT"})


class InvalidFilter(ValueError):
    """A filter value that cannot be a valid match key for its attribute."""


@lru_cache(maxsize=512)
def vr_of(name: str) -> str:
    number = tag_for_keyword(name)
    if number is None:
        raise InvalidFilter(f"{name} is not a DICOM attribute keyword")
    return str(dictionary_VR(number))


def validate(name: str, match_key: str) -> None:
    """Raise :class:`InvalidFilter` when ``match_key`` can never be valid for ``name``."""
    vr = vr_of(name)
    if len(match_key) > 1024:
        raise InvalidFilter(f"{name}: value too long")
    if vr == "UI":
        for uid in _split_list(match_key):
            if not is_uid(uid):
                raise InvalidFilter(f"{name}: {uid!r} is not a valid UID")
    elif vr in RANGE_VRS:
        low, high = _split_range(match_key, vr)
        for bound in (low, high):
            if bound and not _looks_like(vr, bound):
                raise InvalidFilter(f"{name}: {bound!r} is not a valid {vr} value")


def matches(data: Mapping[str, Any], filters: Mapping[str, str], *, fuzzy: bool = False) -> bool:
    """True when every filter matches; ``filters`` maps keywords to match keys.

    ``fuzzy`` (PS3.18 8.3.4.2) lets a person-name key without wildcards match
    any name component that starts with it."""
    for name, match_key in filters.items():
        if match_key == "":
            continue
        number = tag_for_keyword(name)
        if number is None:
            return False
        element = data.get(f"{number:08X}")
        found = element.get("Value", []) if isinstance(element, Mapping) else []
        vr = vr_of(name)
        if fuzzy and vr == "PN" and not any(c in match_key for c in "*?"):
            if not any(_fuzzy_name_matches(value, match_key) for value in found):
                return False
        elif not any(_value_matches(vr, value, match_key) for value in found):
            return False
    return True


def _value_matches(vr: str, value: Any, match_key: str) -> bool:
    if vr == "PN":
        return _string_matches(person_name(value).casefold(), match_key.casefold())
    text = str(value).strip()
    if vr == "UI":
        return text in _split_list(match_key)
    if vr in RANGE_VRS:
        return _in_range(vr, text, match_key)
    if vr in WILDCARD_VRS:
        return _string_matches(text, match_key)
    return text == match_key.strip()


def _fuzzy_name_matches(value: Any, match_key: str) -> bool:
    wanted = match_key.casefold().strip()
    parts = re.split(r"[\^= ]", person_name(value).casefold())
    return any(part.startswith(wanted) for part in parts if part)


def _string_matches(text: str, match_key: str) -> bool:
    if "*" in match_key or "?" in match_key:
        pattern = "".join(
            ".*" if char == "*" else "." if char == "?" else re.escape(char) for char in match_key
        )
        return re.fullmatch(pattern, text, flags=re.DOTALL) is not None
    return text == match_key.strip()


def _split_list(match_key: str) -> list[str]:
    return [part.strip() for part in re.split(r"[\\,]", match_key) if part.strip()]


def _split_range(match_key: str, vr: str = "DA") -> tuple[str, str]:
    """Split ``low-high``; a DT bound may itself hold a ``-0500`` UTC offset."""
    if "-" not in match_key:
        return match_key, match_key
    for position in (i for i, char in enumerate(match_key) if char == "-"):
        low, high = match_key[:position].strip(), match_key[position + 1 :].strip()
        if all(not bound or _looks_like(vr, bound) for bound in (low, high)):
            return low, high
    return match_key, match_key


def _looks_like(vr: str, value: str) -> bool:
    patterns = {
        "DA": r"\d{8}",
        "TM": r"\d{2}(\d{2}(\d{2}(\.\d{1,6})?)?)?",
        "DT": r"\d{4}(\d{2}(\d{2}(\d{2}(\d{2}(\d{2}(\.\d{1,6})?)?)?)?)?)?([+-]\d{4})?",
    }
    return re.fullmatch(patterns[vr], value.replace(":", "")) is not None


def _in_range(vr: str, value: str, match_key: str) -> bool:
    low, high = _split_range(match_key, vr)
    if "-" not in match_key:
        return _normalise(vr, value).startswith(_normalise(vr, match_key))
    key = _normalise(vr, value)
    if low and key < _normalise(vr, low):
        return False
    return not (high and key[: len(_normalise(vr, high))] > _normalise(vr, high))


def _normalise(vr: str, value: str) -> str:
    value = value.replace(":", "").strip()
    if vr == "DA":
        return value.replace(".", "")
    return value
