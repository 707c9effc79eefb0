"""DICOM PS3.15 Annex E, Table E.1-1, as data: which action each attribute gets.

The rows live in ``annex_e.csv`` beside this module (one row per attribute of
the standard's table: tag, name, "in standard composite IOD", the Basic
Profile's action and one column per option). This module reads them, names
the options (with their CID 7050 codes) and answers one question: for this
tag and these options, which single action applies.

Action codes, as the standard defines them: D (a dummy value of the same VR),
Z (zero length, or a dummy), X (remove), K (keep; sequences are still
walked), C (clean: same meaning, nothing identifying), U (a consistent
replacement UID). The compound codes (Z/D, X/Z, X/D, X/Z/D, X/Z/U*) let the
standard defer to the IOD's attribute type; without the IOD module tables we
take the variant that never breaks an IOD: Z/D, X/D and X/Z/D become D, X/Z
becomes Z, X/Z/U* becomes U.
"""

from __future__ import annotations

import csv
import enum
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from pydicom.tag import BaseTag

TABLE_FILE = Path(__file__).with_name("annex_e.csv")
ACTIONS = frozenset({"D", "Z", "X", "K", "C", "U", "Z/D", "X/Z", "X/D", "X/Z/D", "X/Z/U*"})
_COMPOUND = {"Z/D": "D", "X/Z": "Z", "X/D": "D", "X/Z/D": "D", "X/Z/U*": "U"}


class Option(enum.Enum):
    """The profile's options (PS3.15 E.3), each with its column and its CID 7050 code."""

    RETAIN_SAFE_PRIVATE = ("retain_safe_private", "113111", "Retain Safe Private Option")
    RETAIN_UIDS = ("retain_uids", "113110", "Retain UIDs Option")
    RETAIN_DEVICE_IDENTITY = ("retain_device_identity", "113109", "Retain Device Identity Option")
    RETAIN_INSTITUTION_IDENTITY = (
        "retain_institution_identity",
        "113112",
        "Retain Institution Identity Option",
    )
    RETAIN_PATIENT_CHARACTERISTICS = (
        "retain_patient_characteristics",
        "113108",
        "Retain Patient Characteristics Option",
    )
    RETAIN_LONGITUDINAL_FULL_DATES = (
        "retain_longitudinal_full_dates",
        "113106",
        "Retain Longitudinal Temporal Information Full Dates Option",
    )
    RETAIN_LONGITUDINAL_MODIFIED_DATES = (
        "retain_longitudinal_modified_dates",
        "113107",
        "Retain Longitudinal Temporal Information Modified Dates Option",
    )
    CLEAN_DESCRIPTORS = ("clean_descriptors", "113105", "Clean Descriptors Option")
    CLEAN_STRUCTURED_CONTENT = (
        "clean_structured_content",
        "113104",
        "Clean Structured Content Option",
    )
    CLEAN_GRAPHICS = ("clean_graphics", "113103", "Clean Graphics Option")

    @property
    def column(self) -> str:
        return self.value[0]

    @property
    def code(self) -> str:
        return self.value[1]

    @property
    def meaning(self) -> str:
        return self.value[2]

    @property
    def cli_name(self) -> str:
        return self.column.replace("_", "-")


BASIC_PROFILE = ("113100", "Basic Application Confidentiality Profile")
OPTION_COLUMNS = tuple(option.column for option in Option)
# Where two chosen options disagree, the more protective action wins.
_PROTECTION = {"C": 1, "K": 0}


@dataclass(frozen=True)
class Row:
    """One row of Table E.1-1."""

    tag: str  # as the standard writes it: "(0010,0020)", "(60XX,3000)", "(GGGG,EEEE)"
    name: str
    in_std_comp_iod: bool
    basic: str
    options: dict[str, str]  # option column -> action, only where the standard has one

    def action(self, chosen: frozenset[Option]) -> str:
        """The action for these options: an option's column replaces the Basic Profile's
        action; between chosen options that disagree, C (clean) wins over K (keep)."""
        overriding = [self.options[o.column] for o in chosen if self.options.get(o.column)]
        if overriding:
            return max(overriding, key=lambda a: _PROTECTION[a])
        return _COMPOUND.get(self.basic, self.basic)


@cache
def table() -> tuple[Row, ...]:
    with TABLE_FILE.open(newline="", encoding="utf-8") as source:
        return tuple(
            Row(
                tag=record["tag"],
                name=record["name"],
                in_std_comp_iod=record["in_std_comp_iod"] == "Y",
                basic=record["basic"],
                options={c: record[c] for c in OPTION_COLUMNS if record[c]},
            )
            for record in csv.DictReader(source)
        )


@cache
def _by_tag() -> dict[int, Row]:
    return {int(row.tag[1:5] + row.tag[6:10], 16): row for row in table() if _exact(row.tag)}


def _exact(written: str) -> bool:
    return all(ch in "0123456789ABCDEF" for ch in written[1:5] + written[6:10])


def _pattern(name: str) -> Row:
    return next(row for row in table() if row.name == name)


def row_for(tag: BaseTag) -> Row | None:
    """The table's row for ``tag``: an exact row, a repeating group (curves 50xx,
    overlays 60xx) or the private attributes row; None when the table does not list it."""
    exact = _by_tag().get(int(tag))
    if exact is not None:
        return exact
    if tag.is_private:
        return _pattern("Private Attributes")
    if 0x5000 <= tag.group <= 0x50FF:
        return _pattern("Curve Data")
    if 0x6000 <= tag.group <= 0x60FF:
        return _pattern("Overlay Comments" if tag.element == 0x4000 else "Overlay Data")
    return None
