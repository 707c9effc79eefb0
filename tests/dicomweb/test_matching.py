"""PS3.4 C.2.2.2 attribute matching over DICOM JSON."""

from __future__ import annotations

import pytest

from gateway.dicomweb.dicomjson import element, tag
from gateway.dicomweb.matching import InvalidFilter, matches, validate

STUDY = {
    tag("StudyInstanceUID"): element("UI", "1.2.840.1"),
    tag("StudyDate"): element("DA", "20200315"),
    tag("StudyTime"): element("TM", "143000"),
    tag("PatientName"): element("PN", {"Alphabetic": "Müller^Jürgen"}),
    tag("PatientID"): element("LO", "A-100"),
    tag("ModalitiesInStudy"): element("CS", "CT", "SR"),
}


@pytest.mark.parametrize(
    ("filters", "expected"),
    [
        ({"StudyDate": "20200315"}, True),
        ({"StudyDate": "20200101-20201231"}, True),
        ({"StudyDate": "20200316-"}, False),
        ({"StudyDate": "-20200315"}, True),
        ({"StudyTime": "1400-1500"}, True),
        ({"PatientName": "mül*"}, True),
        ({"PatientName": "M?ller^J*"}, True),
        ({"PatientName": "Meyer*"}, False),
        ({"PatientID": "A-100"}, True),
        ({"PatientID": "A-1*"}, True),
        ({"PatientID": "A-10"}, False),
        ({"ModalitiesInStudy": "SR"}, True),
        ({"ModalitiesInStudy": "MR"}, False),
        ({"StudyInstanceUID": "1.2.3\\1.2.840.1"}, True),
        ({"StudyInstanceUID": "1.2.3,1.2.840.1"}, True),
        ({"StudyInstanceUID": "1.2.840.*"}, False),
        ({"AccessionNumber": "X"}, False),
        ({"PatientID": ""}, True),
    ],
)
def test_matching(filters: dict[str, str], expected: bool) -> None:
    assert matches(STUDY, filters) is expected


@pytest.mark.parametrize(
    ("name", "value"),
    [("StudyDate", "notadate"), ("StudyInstanceUID", "1.2.abc"), ("NoSuchKeyword", "x")],
)
def test_invalid_filters_are_refused(name: str, value: str) -> None:
    with pytest.raises(InvalidFilter):
        validate(name, value)


def test_datetime_range_with_negative_offset_splits_correctly() -> None:
    validate("AcquisitionDateTime", "20200101120000-0500-20200102")
