"""De-identify one DICOM instance for one research project (PS3.15 Annex E).

``deidentify(dataset, key, profile)`` answers either ``Deidentified`` (a new
dataset; the input is not changed) or ``Excluded`` with the reason. It is a
pure function over pydicom Datasets: no files, no network, no database.

What it does, in order:

1. Excludes what the profile cannot make safe: images flagged with burned-in
   annotation (or of a kind known for it, such as secondary capture or
   ultrasound, unless flagged BurnedInAnnotation NO) unless the project
   accepts them; encapsulated documents (PDF, CDA: the profile removes the
   document itself); structured reports unless the project chose Clean
   Structured Content (the Basic Profile replaces their content).
2. Walks every element, in every sequence item, and applies Table E.1-1's
   action for the chosen options (``annex_e``). Elements the table does not
   list are kept, with four safety nets: person names become a dummy, dates
   and date-times follow the date rule, UIDs outside the DICOM root (other
   than class and transfer syntax UIDs) are replaced, and inside a sequence
   that the table cleans (C) or replaces (D) text is cleaned or replaced too.
3. Marks the result: PatientIdentityRemoved YES, DeidentificationMethod,
   DeidentificationMethodCodeSequence (CID 7050), and
   LongitudinalTemporalInformationModified.

Pixel Data and the transfer syntax are never touched.
"""

from __future__ import annotations

import copy
import csv
from dataclasses import dataclass
from datetime import timedelta
from functools import cache
from pathlib import Path
from typing import Any

from pydicom import Dataset
from pydicom.dataelem import DataElement
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence
from pydicom.tag import BaseTag, Tag

from gateway.research.annex_e import BASIC_PROFILE, Option, row_for
from gateway.research.pseudonyms import (
    ProjectKey,
    Pseudonyms,
    shift_date,
    shift_datetime,
)
from gateway.research.redaction import Redactor

SAFE_PRIVATE_FILE = Path(__file__).with_name("safe_private.csv")
DICOM_ROOT = "1.2.840.10008."
MEDIA_DIRECTORY = "1.2.840.10008.1.3.10"
SR_PREFIX = "1.2.840.10008.5.1.4.1.1.88."
ENCAPSULATED_PREFIX = "1.2.840.10008.5.1.4.1.1.104."
# Kinds of image known to carry burned-in text: secondary capture and ultrasound.
BURNED_IN_PRONE = frozenset(
    {
        "1.2.840.10008.5.1.4.1.1.7",  # Secondary Capture
        "1.2.840.10008.5.1.4.1.1.7.1",  # Multi-frame Single Bit SC
        "1.2.840.10008.5.1.4.1.1.7.2",  # Multi-frame Grayscale Byte SC
        "1.2.840.10008.5.1.4.1.1.7.3",  # Multi-frame Grayscale Word SC
        "1.2.840.10008.5.1.4.1.1.7.4",  # Multi-frame True Color SC
        "1.2.840.10008.5.1.4.1.1.6.1",  # Ultrasound Image
        "1.2.840.10008.5.1.4.1.1.3.1",  # Ultrasound Multi-frame Image
        "1.2.840.10008.5.1.4.1.1.6",  # Ultrasound Image (retired)
        "1.2.840.10008.5.1.4.1.1.3",  # Ultrasound Multi-frame Image (retired)
    }
)
BURNED_IN_MODALITIES = frozenset({"SC", "OT", "US"})
DUMMY_TEXT = "ANONYMOUS"
DUMMY_DATE = "19000101"
DUMMY_TIME = "000000"
_TEXT_VRS = frozenset({"LO", "SH", "ST", "LT", "UT", "UC", "AE", "UR"})
_MAX_LENGTH = {"AE": 16, "SH": 16, "LO": 64, "ST": 1024, "LT": 10240}
_BINARY_VRS = frozenset({"OB", "OW", "OF", "OD", "OL", "OV", "UN"})
_NUMBER_VRS = frozenset({"US", "SS", "UL", "SL", "FL", "FD", "UV", "SV", "US or SS"})
# UID-valued attributes that name a kind of thing (a class, a syntax), never an instance.
_CLASS_UID_SUFFIXES = ("ClassUID", "SyntaxUID", "ClassUIDInFile")
_KIND_UIDS = frozenset(
    {
        "SOPClassesInStudy",
        "SOPClassesSupported",
        "CodingSchemeUID",
        "ContextUID",
        "MappingResourceUID",
        "ContextGroupExtensionCreatorUID",
        "CreatorVersionUID",
        "PrivateInformationCreatorUID",
    }
)
# Headers whose values are looked for (and removed) in free text.
_IDENTIFYING_KEYWORDS = (
    "PatientID",
    "IssuerOfPatientID",
    "OtherPatientIDs",
    "AccessionNumber",
    "StudyID",
    "InstitutionName",
    "InstitutionAddress",
    "InstitutionalDepartmentName",
    "StationName",
    "DeviceSerialNumber",
    "PatientAddress",
    "PatientTelephoneNumbers",
    "MedicalRecordLocator",
    "AdmissionID",
    "FillerOrderNumberImagingServiceRequest",
    "PlacerOrderNumberImagingServiceRequest",
    "RequestedProcedureID",
    "PerformedProcedureStepID",
    "ScheduledProcedureStepID",
)
# Codes keep their meaning inside cleaned sequences: coded values name no one.
_CODE_KEYWORDS = frozenset(
    {
        "CodeValue",
        "CodingSchemeDesignator",
        "CodingSchemeVersion",
        "CodeMeaning",
        "LongCodeValue",
        "URNCodeValue",
        "ContextIdentifier",
        "MappingResource",
        "ContextGroupVersion",
        "ContextGroupExtensionFlag",
    }
)
# Strictness of what happens to unlisted elements inside a sequence.
_MODES = {"K": 0, "C": 1, "D": 2}
_META_REMOVED = (0x00020016, 0x00020017, 0x00020018, 0x00020100, 0x00020102)


class ProfileError(ValueError):
    """A profile this engine cannot honour."""


@dataclass(frozen=True)
class Profile:
    """What a project chose: Annex E options, and whether it accepts burned-in text."""

    options: frozenset[Option] = frozenset()
    accept_burned_in: bool = False

    def __post_init__(self) -> None:
        if {
            Option.RETAIN_LONGITUDINAL_FULL_DATES,
            Option.RETAIN_LONGITUDINAL_MODIFIED_DATES,
        } <= self.options:
            raise ProfileError("choose full dates or modified dates, not both")
        if Option.CLEAN_GRAPHICS in self.options:
            raise ProfileError(
                "the Clean Graphics option is not supported: curves and overlays are removed"
            )


@dataclass(frozen=True)
class Deidentified:
    dataset: Dataset
    patient_pseudonym: str


@dataclass(frozen=True)
class Excluded:
    kind: str  # "burned-in-annotation", "encapsulated-document", "structured-report"
    reason: str


@dataclass
class _Context:
    options: frozenset[Option]
    pseudonyms: Pseudonyms
    patient_id: str
    patient_name: str
    pseudonym: str
    offset: timedelta
    redactor: Redactor


def exclusion(dataset: Dataset, profile: Profile) -> Excluded | None:
    """Why this instance is not de-identified at all, or None."""
    sop_class = str(dataset.get("SOPClassUID", ""))
    meta = getattr(dataset, "file_meta", None)
    if "DirectoryRecordSequence" in dataset or (
        meta is not None and str(meta.get("MediaStorageSOPClassUID", "")) == MEDIA_DIRECTORY
    ):
        return Excluded("media-directory", "a media directory (DICOMDIR), not an instance")
    if sop_class.startswith(ENCAPSULATED_PREFIX) or "EncapsulatedDocument" in dataset:
        return Excluded(
            "encapsulated-document",
            "an encapsulated document (PDF, CDA): its text cannot be redacted here "
            "and the profile replaces the document itself with a dummy",
        )
    if sop_class.startswith(SR_PREFIX) and Option.CLEAN_STRUCTURED_CONTENT not in profile.options:
        return Excluded(
            "structured-report",
            "a structured report: the Basic Profile replaces its content; "
            "choose the Clean Structured Content option to keep it with its text cleaned",
        )
    if profile.accept_burned_in:
        return None
    flag = str(dataset.get("BurnedInAnnotation", "")).strip().upper()
    if flag == "YES":
        return Excluded("burned-in-annotation", "the image is flagged BurnedInAnnotation YES")
    prone = sop_class in BURNED_IN_PRONE or str(dataset.get("Modality", "")) in (
        BURNED_IN_MODALITIES
    )
    if prone and flag != "NO" and "PixelData" in dataset:
        return Excluded(
            "burned-in-annotation",
            "a secondary capture or ultrasound image not flagged BurnedInAnnotation NO",
        )
    return None


def deidentify(dataset: Dataset, key: ProjectKey, profile: Profile) -> Deidentified | Excluded:
    """The project's de-identified copy of ``dataset``, or why there is none."""
    excluded = exclusion(dataset, profile)
    if excluded is not None:
        return excluded
    pseudonyms = Pseudonyms(key)
    patient_id = str(dataset.get("PatientID", ""))
    issuer = str(dataset.get("IssuerOfPatientID", ""))
    result = copy.deepcopy(dataset)
    context = _Context(
        options=profile.options,
        pseudonyms=pseudonyms,
        patient_id=patient_id,
        patient_name=str(dataset.get("PatientName", "")),
        pseudonym=pseudonyms.patient_id(patient_id, issuer),
        offset=pseudonyms.date_offset(patient_id, issuer),
        redactor=Redactor(_identifying_terms(dataset)),
    )
    _walk(result, context, "K")
    meta = getattr(result, "file_meta", None)
    if meta is not None:
        for tag in _META_REMOVED:
            if tag in meta:
                del meta[tag]
        if "MediaStorageSOPInstanceUID" in meta:
            meta_row = row_for(Tag(0x0002, 0x0003))
            assert meta_row is not None
            _apply(
                meta,
                meta["MediaStorageSOPInstanceUID"],
                meta_row.action(profile.options),
                context,
                "K",
            )
    _mark(result, profile, dataset)
    return Deidentified(result, context.pseudonym)


# -- the walk --------------------------------------------------------------------


def _walk(dataset: Dataset, context: _Context, mode: str) -> None:
    for tag in list(dataset.keys()):
        element = dataset[tag]
        row = row_for(element.tag)
        if row is None:
            _unlisted(dataset, element, context, mode)
        elif element.tag.is_private:
            keep = row.action(context.options) == "C" and _safe_private(dataset, element.tag)
            if not keep and not element.tag.is_private_creator:
                del dataset[tag]  # creators go afterwards, with their last member
        else:
            _apply(dataset, element, row.action(context.options), context, mode)
    _drop_unused_creators(dataset)


def _apply(
    dataset: Dataset, element: DataElement, action: str, context: _Context, mode: str
) -> None:
    vr = element.VR
    if action == "X":
        del dataset[element.tag]
    elif action == "Z":
        _replace(element, context, empty=True)
    elif action == "D":
        if vr == "SQ":
            _walk_items(element, context, _stricter(mode, "D"))
        else:
            _replace(element, context, empty=False)
    elif action == "K":
        if vr == "SQ":
            _walk_items(element, context, mode)
    elif action == "C":
        _clean(element, context, mode)
    elif action == "U":
        if vr == "SQ":
            _walk_items(element, context, mode)
        elif vr == "UI":
            _map(element, context.pseudonyms.uid)
        else:
            _replace(element, context, empty=False)
    else:  # pragma: no cover - the table's codes are checked by a test
        raise ValueError(f"unknown action {action!r}")


def _walk_items(element: DataElement, context: _Context, mode: str) -> None:
    for item in element.value or ():
        _walk(item, context, mode)


def _stricter(mode: str, other: str) -> str:
    return max(mode, other, key=_MODES.__getitem__)


def _unlisted(dataset: Dataset, element: DataElement, context: _Context, mode: str) -> None:
    """An element Table E.1-1 does not name: kept, bar the safety nets."""
    vr = element.VR
    if vr == "SQ":
        _walk_items(element, context, mode)
    elif vr in ("DA", "DT") or (vr == "TM" and mode != "K"):
        _dates(element, context)
    elif vr == "PN":
        _replace(element, context, empty=False)
    elif vr == "UI":
        keyword = str(element.keyword)
        if not keyword.endswith(_CLASS_UID_SUFFIXES) and keyword not in _KIND_UIDS:
            _map(element, lambda uid: uid if uid.startswith(DICOM_ROOT) else _new_uid(context, uid))
    elif element.keyword in _CODE_KEYWORDS:
        return
    elif mode == "C" and vr in _TEXT_VRS:
        _map(element, lambda text: _fit(vr, context.redactor.clean(text)))
    elif mode == "D" and vr in _TEXT_VRS:
        _replace(element, context, empty=False)


def _new_uid(context: _Context, uid: str) -> str:
    return context.pseudonyms.uid(uid)


def _dates(element: DataElement, context: _Context) -> None:
    """The date rule: full dates kept, modified dates shifted, otherwise a dummy."""
    if Option.RETAIN_LONGITUDINAL_FULL_DATES in context.options:
        return
    if Option.RETAIN_LONGITUDINAL_MODIFIED_DATES in context.options:
        _clean(element, context, "K")
    else:
        _replace(element, context, empty=False)


def _clean(element: DataElement, context: _Context, mode: str) -> None:
    """C: the same kind of value, with nothing identifying left in it."""
    vr = element.VR
    if vr == "SQ":
        _walk_items(element, context, _stricter(mode, "C"))
    elif vr == "DA":
        _map(element, lambda v: shift_date(v, context.offset) or DUMMY_DATE)
    elif vr == "DT":
        _map(element, lambda v: shift_datetime(v, context.offset) or DUMMY_DATE)
    elif vr == "TM":
        pass  # dates move by whole days: the time of day stays
    elif vr == "UI":
        _map(element, context.pseudonyms.uid)
    elif vr == "PN":
        _replace(element, context, empty=False)
    elif vr in _TEXT_VRS:
        _map(element, lambda text: _fit(vr, context.redactor.clean(text)))
    # Codes, ages, numbers (CS, AS, DS, IS, binary numbers) carry no names: kept.


def _fit(vr: str, text: str) -> str:
    """Cleaned text cut to its VR's length (a redaction mark can be longer than a name)."""
    limit = _MAX_LENGTH.get(vr)
    return text[:limit] if limit else text


def _replace(element: DataElement, context: _Context, *, empty: bool) -> None:
    """Z or D: a zero-length or dummy value of the element's VR (a pseudonym for the
    patient's ID and name, a new UID for a UID)."""
    vr, keyword = element.VR, element.keyword
    if keyword == "PatientID":
        element.value = (
            context.pseudonym
            if str(element.value or "") == context.patient_id
            else context.pseudonyms.patient_id(str(element.value or ""))
        )
    elif keyword == "PatientName":
        element.value = context.pseudonym
    elif vr == "SQ":
        element.value = Sequence()
    elif vr == "UI":
        if element.value:
            _map(element, context.pseudonyms.uid)
    elif empty:
        element.value = None if vr in _NUMBER_VRS or vr in _BINARY_VRS or vr == "AT" else ""
    else:
        element.value = _dummy(vr)


def _dummy(vr: str) -> Any:
    if vr == "DA":
        return DUMMY_DATE
    if vr == "DT":
        return DUMMY_DATE + DUMMY_TIME
    if vr == "TM":
        return DUMMY_TIME
    if vr in ("DS", "IS"):
        return "0"
    if vr == "AS":
        return "000D"
    if vr in _NUMBER_VRS:
        return 0
    if vr in _BINARY_VRS:
        return b"\x00\x00"
    if vr == "AT":
        return None
    return DUMMY_TEXT  # PN, CS and every text VR


def _map(element: DataElement, change: Any) -> None:
    """Apply ``change`` to each of the element's string values."""
    value = element.value
    if value is None or value == "":
        return
    if isinstance(value, MultiValue | list | tuple):
        element.value = [change(str(v)) for v in value]
    elif isinstance(value, bytes):
        element.value = change(value.decode("ascii", "replace").rstrip("\x00 "))
    else:
        element.value = change(str(value))


# -- private attributes ------------------------------------------------------------


@cache
def _safe_list() -> frozenset[tuple[str, int, int]]:
    with SAFE_PRIVATE_FILE.open(newline="", encoding="utf-8") as source:
        return frozenset(
            (row["creator"], int(row["group"], 16), int(row["element"], 16))
            for row in csv.DictReader(source)
        )


def _safe_private(dataset: Dataset, tag: BaseTag) -> bool:
    if tag.is_private_creator or tag.element < 0x1000:
        return False
    creator_tag = Tag(tag.group, tag.element >> 8)
    if creator_tag not in dataset:
        return False
    creator = str(dataset[creator_tag].value).strip()
    return (creator, tag.group, tag.element & 0xFF) in _safe_list()


def _drop_unused_creators(dataset: Dataset) -> None:
    for tag in [t for t in dataset.keys() if BaseTag(t).is_private_creator]:
        block = BaseTag(tag).element
        has_members = any(
            BaseTag(t).group == BaseTag(tag).group and BaseTag(t).element >> 8 == block
            for t in dataset.keys()
            if not BaseTag(t).is_private_creator
        )
        if not has_members:
            del dataset[tag]


# -- what the text cleaner looks for, and the marks ---------------------------------


def _identifying_terms(dataset: Dataset) -> list[str]:
    """Names and identifiers of this instance, at any depth, for the text cleaner."""
    terms: list[str] = []
    for element in dataset.iterall():
        if element.VR == "PN" or element.keyword in _IDENTIFYING_KEYWORDS:
            value = element.value
            values = value if isinstance(value, MultiValue | list) else [value]
            terms.extend(str(v) for v in values if v)
    return terms


def _mark(result: Dataset, profile: Profile, original: Dataset) -> None:
    chosen = [option for option in Option if option in profile.options]
    result.PatientIdentityRemoved = "YES"
    methods = ["DICOM PS3.15 Annex E " + BASIC_PROFILE[1]] + [o.meaning for o in chosen]
    if profile.accept_burned_in and exclusion(original, Profile(profile.options)) is not None:
        methods.append("Burned-in annotation accepted, not removed")
    result.DeidentificationMethod = methods
    codes = Sequence()
    for code, meaning in [BASIC_PROFILE] + [(o.code, o.meaning) for o in chosen]:
        item = Dataset()
        item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = code, "DCM", meaning
        codes.append(item)
    result.DeidentificationMethodCodeSequence = codes
    if Option.RETAIN_LONGITUDINAL_FULL_DATES in profile.options:
        result.LongitudinalTemporalInformationModified = "UNMODIFIED"
    elif Option.RETAIN_LONGITUDINAL_MODIFIED_DATES in profile.options:
        result.LongitudinalTemporalInformationModified = "MODIFIED"
    else:
        result.LongitudinalTemporalInformationModified = "REMOVED"
