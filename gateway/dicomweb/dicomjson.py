"""Reading DICOM JSON (PS3.18 F.2): tags, values, person names, sequences.

DICOM JSON keys are eight upper-case hex digits; values always sit in a
``Value`` list. These helpers hide that shape from the mapping code.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from pydicom.datadict import tag_for_keyword

DicomJson = dict[str, Any]
UID = re.compile(r"[0-9]+(\.[0-9]+)*")

# What the FHIR facade asks the PACS for at each QIDO level (PS3.18 table 10.6.1-5 and
# the R4 ImagingStudy mapping). Patient attributes ride along on study results.
STUDY_FIELDS: tuple[str, ...] = (
    "StudyInstanceUID",
    "StudyDate",
    "StudyTime",
    "TimezoneOffsetFromUTC",
    "AccessionNumber",
    "IssuerOfAccessionNumberSequence",
    "StudyID",
    "StudyDescription",
    "ReferringPhysicianName",
    "NameOfPhysiciansReadingStudy",
    "ProcedureCodeSequence",
    "ReasonForPerformedProcedureCodeSequence",
    "ModalitiesInStudy",
    "NumberOfStudyRelatedSeries",
    "NumberOfStudyRelatedInstances",
    "PatientName",
    "PatientID",
    "IssuerOfPatientID",
    "IssuerOfPatientIDQualifiersSequence",
    "PatientBirthDate",
    "PatientSex",
)
SERIES_FIELDS: tuple[str, ...] = (
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "SeriesNumber",
    "Modality",
    "SeriesDescription",
    "SeriesDate",
    "SeriesTime",
    "TimezoneOffsetFromUTC",
    "BodyPartExamined",
    "Laterality",
    "PerformingPhysicianName",
    "NumberOfSeriesRelatedInstances",
)
INSTANCE_FIELDS: tuple[str, ...] = (
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "SOPInstanceUID",
    "SOPClassUID",
    "InstanceNumber",
    "ContentLabel",
    "DocumentTitle",
    "ConceptNameCodeSequence",
    "ImageLaterality",
    "NumberOfFrames",
)


PatientKey = tuple[str, str]  # (issuer of patient id, PatientID)


def patient_key(item: Mapping[str, Any]) -> PatientKey | None:
    """(IssuerOfPatientID, PatientID) of a study, series or instance: who it is about.
    The same PatientID from two issuers is two patients; the issuer may be ""."""
    patient_id = text(item, "PatientID")
    if not patient_id:
        return None
    return (text(item, "IssuerOfPatientID") or "", patient_id)


def is_uid(value: str) -> bool:
    """A DICOM UID: digits and dots, at most 64 characters (PS3.5 9.1)."""
    return len(value) <= 64 and UID.fullmatch(value) is not None


def tag(keyword: str) -> str:
    """The DICOM JSON key of a keyword: ``tag("PatientID") == "00100020"``."""
    number = tag_for_keyword(keyword)
    if number is None:
        raise KeyError(f"unknown DICOM keyword {keyword!r}")
    return f"{number:08X}"


def values(data: Mapping[str, Any], name: str) -> list[Any]:
    element = data.get(tag(name))
    if not isinstance(element, Mapping):
        return []
    found = element.get("Value")
    return list(found) if isinstance(found, list) else []


def first(data: Mapping[str, Any], name: str) -> Any | None:
    found = values(data, name)
    return found[0] if found else None


def text(data: Mapping[str, Any], name: str) -> str | None:
    """The first value as stripped text, or None when absent or blank."""
    value = first(data, name)
    if value is None:
        return None
    if isinstance(value, Mapping):
        value = person_name(value)
    result = str(value).strip()
    return result or None


def texts(data: Mapping[str, Any], name: str) -> list[str]:
    result = []
    for value in values(data, name):
        rendered = person_name(value) if isinstance(value, Mapping) else str(value).strip()
        if rendered:
            result.append(rendered)
    return result


def integer(data: Mapping[str, Any], name: str) -> int | None:
    value = first(data, name)
    if value is None or value == "":
        return None
    try:
        return int(float(value))
    except (TypeError, ValueError):
        return None


def items(data: Mapping[str, Any], name: str) -> list[Mapping[str, Any]]:
    """Items of a sequence attribute."""
    return [item for item in values(data, name) if isinstance(item, Mapping)]


def person_name(value: Mapping[str, Any] | str | None) -> str:
    """The alphabetic group of a PN value in DICOM's caret form (``Family^Given``)."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value.strip()
    for group in ("Alphabetic", "Ideographic", "Phonetic"):
        rendered = value.get(group)
        if rendered:
            return str(rendered).strip()
    return ""


def person_name_groups(value: Mapping[str, Any] | str) -> dict[str, str]:
    if isinstance(value, str):
        groups = value.split("=")
        names = ("Alphabetic", "Ideographic", "Phonetic")
        return {name: part for name, part in zip(names, groups, strict=False) if part}
    return {name: str(part) for name, part in value.items() if part}


def display_name(caret_name: str) -> str:
    """``Family^Given^Middle^Prefix^Suffix`` as a person would write it."""
    parts = (caret_name.split("^") + [""] * 5)[:5]
    family, given, middle, prefix, suffix = (part.strip() for part in parts)
    words = [prefix, given, middle, family, suffix]
    return " ".join(word for word in words if word)


def merge(*datasets: Mapping[str, Any]) -> DicomJson:
    """Later datasets fill in attributes the earlier ones lack."""
    merged: DicomJson = {}
    for dataset in datasets:
        for key, element in dataset.items():
            if key not in merged or not merged[key].get("Value"):
                merged[key] = element
    return merged


def element(vr: str, *value: Any) -> dict[str, Any]:
    if not value:
        return {"vr": vr}
    return {"vr": vr, "Value": list(value)}
