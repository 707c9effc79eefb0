"""Study-level QIDO answered from a patient's jacket (the study index), not the PACS.

A patient-confined caller's jacket lists every study of that patient, read
from the PACS within the freshness bound (``records.jacket``). A study-level
query whose every key the gateway matches exactly (PS3.4 C.2.2.2, with
``dicomweb.matching``, as the embedded store does) and whose every
``includefield`` the index holds is answered from it; anything else (person
names, descriptions, wildcards, ``includefield=all``, fuzzy matching) goes to
the PACS as before, since archives differ in how they match those. Pure
functions only: the caller's visibility is applied by the caller.
"""

from __future__ import annotations

from collections.abc import Sequence

from gateway.dicomweb import dicomjson as dj
from gateway.dicomweb import qido
from gateway.dicomweb.dicomjson import STUDY_FIELDS, DicomJson
from gateway.dicomweb.matching import matches
from gateway.records.access import CHECK_FIELDS
from gateway.records.summaries import StudySummary

# Keys matched exactly here: single values (UID lists, date ranges), no wildcards.
EXACT_KEYS = frozenset(
    {
        "StudyInstanceUID",
        "PatientID",
        "IssuerOfPatientID",
        "AccessionNumber",
        "StudyID",
        "StudyDate",
        "ModalitiesInStudy",
    }
)
LIST_OR_RANGE_KEYS = frozenset({"StudyInstanceUID", "StudyDate"})
# What a study-level QIDO returns without includefield (PS3.18 table 10.6.3-3), of
# what the index holds.
DEFAULT_FIELDS = (
    "StudyDate",
    "StudyTime",
    "AccessionNumber",
    "ModalitiesInStudy",
    "ReferringPhysicianName",
    "TimezoneOffsetFromUTC",
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyInstanceUID",
    "StudyID",
    "NumberOfStudyRelatedSeries",
    "NumberOfStudyRelatedInstances",
)
_HELD = frozenset(STUDY_FIELDS)


def answerable(query: qido.Query) -> bool:
    """Can the index answer this study-level query exactly?"""
    if any(name == "all" or name not in _HELD for name in query.fields):
        return False
    for name, value in query.filters.items():
        if name not in EXACT_KEYS or any(c in value for c in "*?"):
            return False
        if name not in LIST_OR_RANGE_KEYS and any(c in value for c in "\\,"):
            return False
    return True


def answer(studies: Sequence[StudySummary], query: qido.Query) -> list[DicomJson]:
    """The records of ``studies`` that match ``query``, paged, with the attributes a
    PACS returns for it (the defaults and what ``includefield`` names)."""
    tags = {dj.tag(name) for name in (*DEFAULT_FIELDS, *CHECK_FIELDS, *query.fields)}
    issuer = query.filters.get("IssuerOfPatientID")
    found = []
    for study in studies:
        record = study.source
        if not matches(record, query.filters):
            continue
        # An empty issuer asks for studies without one, as on the PACS path.
        if issuer is not None and (dj.text(record, "IssuerOfPatientID") or "") != issuer:
            continue
        found.append({key: value for key, value in record.items() if key in tags})
    end = None if query.limit is None else query.offset + query.limit
    return found[query.offset : end]
