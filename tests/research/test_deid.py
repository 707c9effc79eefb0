"""De-identification on the synthetic fixtures and on pydicom's own test files.

No original name, identifier, date or instance UID survives anywhere (every
element, every sequence item, private tags, file meta); pixel data is
byte-identical; pseudonyms are stable per project and differ between
projects; burned-in images, reports and PDFs are handled as documented.
"""

from __future__ import annotations

import copy
import re
import warnings
from collections.abc import Iterator
from datetime import date
from functools import cache
from io import BytesIO
from pathlib import Path

import pytest
from pydicom import Dataset, dcmread
from pydicom.data import get_testdata_file, get_testdata_files
from pydicom.dataelem import DataElement
from pydicom.errors import InvalidDicomError
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence

from fixtures.generate import iter_datasets
from fixtures.reports import ENCAPSULATED_PDF
from gateway.research.annex_e import Option, row_for
from gateway.research.deid import (
    DUMMY_DATE,
    DUMMY_TEXT,
    Deidentified,
    Excluded,
    Profile,
    ProfileError,
    deidentify,
)
from gateway.research.pseudonyms import ProjectKey, Pseudonyms

KEY_A = ProjectKey(b"project-a-secret-0123456789abcdef0123")
KEY_B = ProjectKey(b"project-b-secret-0123456789abcdef0123")
RESEARCH = Profile(
    frozenset(
        {
            Option.RETAIN_LONGITUDINAL_MODIFIED_DATES,
            Option.CLEAN_DESCRIPTORS,
            Option.RETAIN_PATIENT_CHARACTERISTICS,
            Option.CLEAN_STRUCTURED_CONTENT,
        }
    )
)
PROFILES = {"basic": Profile(), "research": RESEARCH}
SR = "1.2.840.10008.5.1.4.1.1.88."
# Values that stand for "nothing" in some test files; our own dummies look the same.
# Pixels, and what names the software that wrote the file rather than anyone in it.
SOFTWARE = {0x7FE00010, 0x00020012, 0x00020013}
NOT_IDENTIFYING = {DUMMY_TEXT, DUMMY_DATE, "ANON", "ANONYMIZED", "UNKNOWN", "NONE", "TEST"}
# pydicom's report samples hold placeholders ("Last Name^First Name", "Enter text"), not names.
NOT_IDENTIFYING |= {"NAME", "FIRST", "LAST", "ENTER", "TEXT"}


@cache
def fixture_datasets() -> tuple[Dataset, ...]:
    return tuple(iter_datasets())


@cache
def pydicom_datasets() -> tuple[tuple[str, Dataset], ...]:
    found = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for path in get_testdata_files():
            try:
                found.append((Path(path).name, dcmread(path)))
            except (InvalidDicomError, ValueError, EOFError, OSError, AttributeError):
                continue  # the folder also holds JSON, text and deliberately broken files
    assert len(found) > 100
    return tuple(found)


def _elements(ds: Dataset) -> Iterator[DataElement]:
    meta = getattr(ds, "file_meta", None)
    if meta is not None:
        yield from meta
    yield from ds.iterall()


def originals(ds: Dataset) -> tuple[set[str], set[str]]:
    """(strings that must not survive, name words that must not survive)."""
    values: set[str] = set()
    words: set[str] = set()
    for element in _elements(ds):
        if element.tag == 0x7FE00010 or element.VR == "SQ":
            continue
        texts = _texts(element)
        if element.VR == "PN":
            for text in texts:
                words.update(w for w in re.split(r"[\^=\s,.]+", text) if len(w) >= 3)
        elif element.keyword in ("PatientID", "OtherPatientIDs", "AccessionNumber"):
            values.update(t for t in texts if len(t) >= 3)
        elif element.VR == "DA":
            values.update(t for t in texts if len(t) == 8)
        elif element.VR == "DT":
            values.update(t[:8] for t in texts if len(t) >= 8)
        elif element.VR == "UI" and _instance_uid(element):
            values.update(t for t in texts if "." in t)  # not a placeholder such as "0"
    return (
        {v for v in values if v.upper() not in NOT_IDENTIFYING},
        {w for w in words if w.upper() not in NOT_IDENTIFYING},
    )


def _texts(element: DataElement) -> list[str]:
    raw = element.value
    items = list(raw) if isinstance(raw, MultiValue | list | tuple) else [raw]
    return [
        v.decode("latin-1") if isinstance(v, bytes) else str(v).strip()
        for v in items
        if v not in (None, "", b"")
    ]


def _instance_uid(element: DataElement) -> bool:
    row = row_for(element.tag)
    if row is not None:
        return row.action(frozenset()) == "U"
    keyword = str(element.keyword)
    if keyword in ("CodingSchemeUID", "ContextUID", "MappingResourceUID", "SOPClassesInStudy"):
        return False  # they name a scheme or a kind of object, not an instance
    return not keyword.endswith(("ClassUID", "SyntaxUID")) and not str(element.value).startswith(
        "1.2.840.10008."
    )


def leaks(source: Dataset, result: Dataset) -> list[str]:
    values, words = originals(source)
    named = re.compile(
        "|".join(rf"(?<![A-Za-z]){re.escape(w)}(?![A-Za-z])" for w in sorted(words)), re.I
    )
    long_values = {v for v in values if len(v) >= 8}
    found = []
    for element in _elements(result):
        if element.tag in SOFTWARE or element.VR == "SQ":
            continue
        texts = _texts(element)
        text = "\\".join(texts)
        # Short originals ("428", "0") would turn up inside any long number: whole values only.
        hits = [v for v in long_values if v in text] + [v for v in values & set(texts)]
        if words and named.search(text):
            hits.append(named.search(text).group(0))  # type: ignore[union-attr]
        if hits:
            found.append(f"{element.tag} {element.keyword}: {hits}")
    return found


# -- nothing survives --------------------------------------------------------------


@pytest.mark.parametrize("profile", sorted(PROFILES))
def test_no_original_identifier_survives_in_the_fixtures(profile: str) -> None:
    done = 0
    for source in fixture_datasets():
        result = deidentify(source, KEY_A, PROFILES[profile])
        if isinstance(result, Excluded):
            continue
        assert leaks(source, result.dataset) == [], source.SOPInstanceUID
        done += 1
    assert done > 100


@pytest.mark.parametrize("profile", sorted(PROFILES))
def test_no_original_identifier_survives_in_pydicoms_test_files(profile: str) -> None:
    done = 0
    problems = {}
    for name, source in pydicom_datasets():
        result = deidentify(source, KEY_A, PROFILES[profile])
        if isinstance(result, Excluded):
            continue
        found = leaks(source, result.dataset)
        if found:
            problems[name] = found
        done += 1
    assert done > 80
    assert problems == {}


def test_the_scan_finds_what_is_left_behind() -> None:
    source = fixture_datasets()[0]
    result = deidentify(source, KEY_A, Profile())
    assert isinstance(result, Deidentified)
    planted = copy.deepcopy(result.dataset)
    item = Dataset()
    item.add_new(0x00091001, "LO", str(source.PatientID))
    planted.ReferencedStudySequence = Sequence([item])
    assert leaks(source, planted) != []
    planted = copy.deepcopy(result.dataset)
    planted.ImageComments = f"seen by {str(source.ReferringPhysicianName).split('^')[0]}"
    assert leaks(source, planted) != []


# -- pixels -----------------------------------------------------------------------


def test_pixel_data_and_transfer_syntax_are_unchanged() -> None:
    compared = 0
    sources = [ds for _, ds in pydicom_datasets()] + list(fixture_datasets())
    for source in sources:
        if "PixelData" not in source:
            continue
        result = deidentify(source, KEY_A, RESEARCH)
        if isinstance(result, Excluded):
            continue
        got = result.dataset
        assert got.PixelData == source.PixelData
        meta, original_meta = getattr(got, "file_meta", None), getattr(source, "file_meta", None)
        if original_meta is not None and "TransferSyntaxUID" in original_meta:
            assert meta.TransferSyntaxUID == original_meta.TransferSyntaxUID
        compared += 1
    assert compared > 100


@pytest.mark.parametrize(
    "name",
    ["CT_small.dcm", "MR_small_RLE.dcm", "MR_small_jp2klossless.dcm", "MR_small_bigendian.dcm"],
)
def test_pixel_data_survives_a_write_and_a_read(name: str) -> None:
    path = get_testdata_file(name)
    assert path is not None
    source = dcmread(path)
    result = deidentify(source, KEY_A, RESEARCH)
    assert isinstance(result, Deidentified)
    buffer = BytesIO()
    result.dataset.save_as(buffer, enforce_file_format=True)
    again = dcmread(BytesIO(buffer.getvalue()))
    assert again.PixelData == source.PixelData
    assert again.file_meta.TransferSyntaxUID == source.file_meta.TransferSyntaxUID
    assert again.file_meta.MediaStorageSOPInstanceUID == again.SOPInstanceUID
    assert again.PatientIdentityRemoved == "YES"


def test_the_input_is_not_changed() -> None:
    source = fixture_datasets()[0]
    before = copy.deepcopy(source)
    deidentify(source, KEY_A, RESEARCH)
    assert source == before


# -- pseudonyms -------------------------------------------------------------------


def _images(patient_id: str) -> list[Dataset]:
    return [
        ds
        for ds in fixture_datasets()
        if ds.PatientID == patient_id and ds.Modality in ("CT", "MR", "CR", "DX", "MG")
    ]


def test_a_second_donation_to_the_same_project_gets_the_same_pseudonyms() -> None:
    for source in _images("IS-1001")[:5]:
        first = deidentify(source, KEY_A, RESEARCH)
        second = deidentify(copy.deepcopy(source), KEY_A, RESEARCH)
        assert isinstance(first, Deidentified) and isinstance(second, Deidentified)
        assert first.dataset == second.dataset
        assert first.patient_pseudonym == second.patient_pseudonym


def test_two_projects_cannot_link_their_copies() -> None:
    uids = {"A": set(), "B": set()}  # type: dict[str, set[str]]
    for source in _images("IS-1001"):
        a = deidentify(source, KEY_A, RESEARCH)
        b = deidentify(source, KEY_B, RESEARCH)
        assert isinstance(a, Deidentified) and isinstance(b, Deidentified)
        assert a.dataset.PatientID != b.dataset.PatientID
        for label, got in (("A", a.dataset), ("B", b.dataset)):
            uids[label] |= {got.StudyInstanceUID, got.SeriesInstanceUID, got.SOPInstanceUID}
        assert a.dataset.StudyDate != b.dataset.StudyDate  # each project its own offset
    assert uids["A"] and not uids["A"] & uids["B"]


def test_uids_are_valid_and_consistent() -> None:
    mapping: dict[str, str] = {}
    for source in _images("IS-1001"):
        result = deidentify(source, KEY_A, Profile())
        assert isinstance(result, Deidentified)
        for old, new in (
            (source.StudyInstanceUID, result.dataset.StudyInstanceUID),
            (source.SeriesInstanceUID, result.dataset.SeriesInstanceUID),
        ):
            assert mapping.setdefault(old, new) == new
            assert re.fullmatch(r"2\.25\.[1-9]\d*", new) and len(new) <= 64
            assert int(new.split(".")[2]) >> 76 & 0xF == 8  # a version 8 UUID
    studies = {s.StudyInstanceUID for s in _images("IS-1001")}
    assert len({mapping[s] for s in studies}) == len(studies)


def test_patients_are_told_apart_by_issuer() -> None:
    pseudonyms = Pseudonyms(KEY_A)
    assert pseudonyms.patient_id("IS-1005", "HOSP-A") != pseudonyms.patient_id("IS-1005", "HOSP-B")


def test_dates_move_by_one_offset_per_patient() -> None:
    offsets: dict[str, set[int]] = {}
    for patient in ("IS-1001", "IS-1002", "IS-1003"):
        for source in _images(patient):
            result = deidentify(source, KEY_A, RESEARCH)
            assert isinstance(result, Deidentified)
            got = result.dataset
            moved = (_day(got.StudyDate) - _day(source.StudyDate)).days
            assert (_day(got.SeriesDate) - _day(source.SeriesDate)).days == moved
            assert got.get("StudyTime") == source.get("StudyTime")  # times of day stay
            assert got.LongitudinalTemporalInformationModified == "MODIFIED"
            assert got.PatientBirthDate == ""  # Z, whatever the options
            offsets.setdefault(patient, set()).add(moved)
    assert all(len(days) == 1 for days in offsets.values()), offsets
    shifts = [next(iter(days)) for days in offsets.values()]
    assert all(-3652 <= d <= -1 for d in shifts) and len(set(shifts)) == len(shifts)


def test_without_a_date_option_dates_are_gone() -> None:
    source = _images("IS-1001")[0]
    result = deidentify(source, KEY_A, Profile())
    assert isinstance(result, Deidentified)
    got = result.dataset
    assert got.StudyDate == "" and got.SeriesDate == DUMMY_DATE
    assert got.LongitudinalTemporalInformationModified == "REMOVED"
    full = deidentify(source, KEY_A, Profile(frozenset({Option.RETAIN_LONGITUDINAL_FULL_DATES})))
    assert isinstance(full, Deidentified)
    assert full.dataset.StudyDate == source.StudyDate
    assert full.dataset.LongitudinalTemporalInformationModified == "UNMODIFIED"


def test_patient_characteristics_are_kept_only_when_chosen() -> None:
    source = copy.deepcopy(_images("IS-1001")[0])
    source.PatientAge, source.PatientWeight = "045Y", "70"
    basic = deidentify(source, KEY_A, Profile())
    kept = deidentify(source, KEY_A, RESEARCH)
    assert isinstance(basic, Deidentified) and isinstance(kept, Deidentified)
    assert basic.dataset.PatientSex == "" and "PatientAge" not in basic.dataset
    assert kept.dataset.PatientSex == "F" and kept.dataset.PatientAge == "045Y"
    assert kept.dataset.PatientWeight == "70"


def test_references_inside_sequences_follow_the_instances_they_name() -> None:
    """The fixtures' Key Object Selection manifests list images by UID: the
    de-identified manifest lists the images' new UIDs."""
    new_uid: dict[str, str] = {}
    manifests = []
    for source in fixture_datasets():
        if source.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.59":
            manifests.append(source)
            continue
        result = deidentify(source, KEY_A, Profile(RESEARCH.options, accept_burned_in=True))
        if isinstance(result, Deidentified):
            new_uid[source.SOPInstanceUID] = result.dataset.SOPInstanceUID
            new_uid[source.SeriesInstanceUID] = result.dataset.SeriesInstanceUID
    assert manifests
    checked = 0
    for manifest in manifests:
        result = deidentify(manifest, KEY_A, RESEARCH)
        assert isinstance(result, Deidentified)
        before = _references(manifest)
        after = _references(result.dataset)
        assert len(before) == len(after) > 0
        for old, new in zip(before, after, strict=True):
            if old in new_uid:
                assert new == new_uid[old]
                checked += 1
    assert checked > 10


def _references(ds: Dataset) -> list[str]:
    return [
        str(e.value)
        for e in ds.iterall()
        if e.keyword in ("ReferencedSOPInstanceUID", "SeriesInstanceUID") and e.value
    ]


def _day(text: str) -> date:
    return date(int(text[:4]), int(text[4:6]), int(text[6:8]))


# -- exclusions -------------------------------------------------------------------


def _ct() -> Dataset:
    return copy.deepcopy(_images("IS-1001")[0])


def test_burned_in_annotation_is_excluded_unless_accepted() -> None:
    flagged = _ct()
    flagged.BurnedInAnnotation = "YES"
    result = deidentify(flagged, KEY_A, RESEARCH)
    assert isinstance(result, Excluded) and result.kind == "burned-in-annotation"
    accepted = deidentify(flagged, KEY_A, Profile(RESEARCH.options, accept_burned_in=True))
    assert isinstance(accepted, Deidentified)
    assert "Burned-in annotation accepted, not removed" in accepted.dataset.DeidentificationMethod
    assert accepted.dataset.PixelData == flagged.PixelData


def test_secondary_capture_and_ultrasound_need_the_flag_to_say_no() -> None:
    capture = _ct()
    capture.SOPClassUID, capture.Modality = "1.2.840.10008.5.1.4.1.1.7", "OT"
    result = deidentify(capture, KEY_A, RESEARCH)
    assert isinstance(result, Excluded) and result.kind == "burned-in-annotation"
    capture.BurnedInAnnotation = "NO"
    assert isinstance(deidentify(capture, KEY_A, RESEARCH), Deidentified)
    ultrasound = [ds for ds in fixture_datasets() if ds.Modality == "US"]
    assert ultrasound
    for source in ultrasound:
        excluded = deidentify(source, KEY_A, RESEARCH)
        assert isinstance(excluded, Excluded) and excluded.kind == "burned-in-annotation"


def test_reports_are_excluded_by_default_and_pdfs_always() -> None:
    reports = [ds for ds in fixture_datasets() if str(ds.SOPClassUID).startswith(SR)]
    pdfs = [ds for ds in fixture_datasets() if ds.SOPClassUID == ENCAPSULATED_PDF]
    assert reports and pdfs
    for source in reports:
        result = deidentify(
            source, KEY_A, Profile(RESEARCH.options - {Option.CLEAN_STRUCTURED_CONTENT})
        )
        assert isinstance(result, Excluded) and result.kind == "structured-report"
    for source in pdfs:
        for profile in PROFILES.values():
            result = deidentify(source, KEY_A, profile)
            assert isinstance(result, Excluded) and result.kind == "encapsulated-document"


def test_structured_content_is_kept_with_its_text_cleaned() -> None:
    source = next(
        ds
        for ds in fixture_datasets()
        if str(ds.SOPClassUID).startswith(SR) and ds.SOPClassUID != "1.2.840.10008.5.1.4.1.1.88.59"
    )
    buffer = BytesIO()
    source.save_as(buffer, enforce_file_format=True)  # plain pydicom, not highdicom's types
    source = dcmread(BytesIO(buffer.getvalue()))
    note = Dataset()
    note.RelationshipType, note.ValueType = "CONTAINS", "TEXT"
    concept = Dataset()
    concept.CodeValue, concept.CodingSchemeDesignator, concept.CodeMeaning = (
        "121106",
        "DCM",
        "Comment",
    )
    note.ConceptNameCodeSequence = Sequence([concept])
    name = str(source.PatientName).replace("^", " ")
    note.TextValue = (
        f"Patient {name}, MRN {source.PatientID}, seen 04/03/2015 and on "
        f"{source.StudyDate}; accession {source.AccessionNumber or 'ACC20000'}. Lungs clear."
    )
    source.ContentSequence.append(note)
    result = deidentify(source, KEY_A, RESEARCH)
    assert isinstance(result, Deidentified)
    texts = [str(e.value) for e in result.dataset.iterall() if e.keyword == "TextValue"]
    cleaned = texts[-1]
    for word in [*name.split(), str(source.PatientID), "04/03/2015", str(source.StudyDate)]:
        assert word not in cleaned
    assert cleaned.endswith("Lungs clear.") and "[REDACTED]" in cleaned
    assert any("no acute abnormality" in text for text in texts)  # the findings stay
    codes = [str(e.value) for e in result.dataset.iterall() if e.keyword == "CodeValue"]
    assert "121106" in codes and "18748-4" in codes  # codes are not text to clean
    assert leaks(source, result.dataset) == []


# -- private attributes, graphics, marks ------------------------------------------


def test_private_attributes_go_unless_safe_listed_and_chosen() -> None:
    source = _ct()
    safe = source.private_block(0x0019, "SIEMENS MR HEADER", create=True)
    safe.add_new(0x0C, "IS", "1000")  # B_value: on the safe list
    safe.add_new(0x10, "LO", "Doe^Jane")  # not on it
    other = source.private_block(0x0029, "ACME 1.0", create=True)
    other.add_new(0x01, "LO", "IS-1001")
    item = Dataset()
    item.private_block(0x0011, "SIEMENS MR HEADER", create=True).add_new(0x0C, "IS", "5")
    item.add_new(0x00111101, "LO", "IS-1001")
    item.ReferencedSOPInstanceUID = "1.2.3.4"
    source.ReferencedImageSequence = Sequence([item])

    plain = deidentify(source, KEY_A, RESEARCH)
    assert isinstance(plain, Deidentified)
    assert not [e for e in plain.dataset.iterall() if e.tag.is_private]

    chosen = Profile(RESEARCH.options | {Option.RETAIN_SAFE_PRIVATE})
    kept = deidentify(source, KEY_A, chosen)
    assert isinstance(kept, Deidentified)
    private = {int(e.tag): e.value for e in kept.dataset.iterall() if e.tag.is_private}
    assert private == {0x00190010: "SIEMENS MR HEADER", 0x0019100C: "1000"}
    assert "113111" in [i.CodeValue for i in kept.dataset.DeidentificationMethodCodeSequence]


def test_curves_and_overlays_are_removed() -> None:
    source = _ct()
    source.add_new(0x60000010, "US", 32)
    source.add_new(0x60003000, "OW", b"\x00" * 128)
    source.add_new(0x50000005, "US", 2)
    result = deidentify(source, KEY_A, RESEARCH)
    assert isinstance(result, Deidentified)
    assert not [e for e in result.dataset if 0x5000 <= e.tag.group <= 0x60FF]


def test_the_marks_name_the_profile_and_each_option() -> None:
    result = deidentify(_ct(), KEY_A, RESEARCH)
    assert isinstance(result, Deidentified)
    got = result.dataset
    assert got.PatientIdentityRemoved == "YES"
    codes = [
        (i.CodeValue, i.CodingSchemeDesignator) for i in got.DeidentificationMethodCodeSequence
    ]
    assert codes == [
        ("113100", "DCM"),
        ("113108", "DCM"),
        ("113107", "DCM"),
        ("113105", "DCM"),
        ("113104", "DCM"),
    ]
    assert len(got.DeidentificationMethod) == 5
    assert all(len(method) <= 64 for method in got.DeidentificationMethod)


def test_profiles_the_engine_cannot_honour_are_refused() -> None:
    both = {Option.RETAIN_LONGITUDINAL_FULL_DATES, Option.RETAIN_LONGITUDINAL_MODIFIED_DATES}
    with pytest.raises(ProfileError):
        Profile(frozenset(both))
    with pytest.raises(ProfileError):
        Profile(frozenset({Option.CLEAN_GRAPHICS}))
    with pytest.raises(ValueError):
        ProjectKey(b"short")
    assert "secret" not in repr(KEY_A) and "project-a" not in repr(KEY_A)


def test_what_the_table_does_not_list_is_caught_by_the_safety_nets() -> None:
    """Names, dates and instance UIDs in attributes Table E.1-1 leaves out."""
    source = _ct()
    source.SecondaryReviewerName = "Reviewer^Rita"  # PN, not in the table
    source.StudyUpdateDateTime = "20160101120000"  # DT, not in the table
    source.DateOfGainCalibration = "20160102"  # DA, not in the table
    source.MultiFrameSourceSOPInstanceUID = "1.3.6.1.4.1.99.1.2.3"  # unlisted, outside DICOM's root
    source.CodingSchemeUID = "2.16.840.1.113883.6.96"  # SNOMED CT: names a scheme, kept
    for profile in PROFILES.values():
        result = deidentify(source, KEY_A, profile)
        assert isinstance(result, Deidentified)
        got = result.dataset
        assert "Rita" not in str(got.SecondaryReviewerName)
        assert got.StudyUpdateDateTime[:8] != "20160101"
        assert got.DateOfGainCalibration != "20160102"
        assert got.MultiFrameSourceSOPInstanceUID == Pseudonyms(KEY_A).uid("1.3.6.1.4.1.99.1.2.3")
        assert got.CodingSchemeUID == "2.16.840.1.113883.6.96"
        assert got.SOPClassUID == source.SOPClassUID  # class UIDs are not identifiers
        assert leaks(source, got) == []
