"""read_header: who a Part 10 instance is about, from its first bytes (issue 12).

Checked against pydicom's own reading on every file pydicom ships (explicit
and implicit VR, big endian, deflated, compressed pixel data, sequences,
odd character sets), whole and cut at every length: a prefix either waits for
more (None) or names exactly what the whole file names.
"""

from __future__ import annotations

import warnings
from io import BytesIO
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_files
from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRBigEndian, ImplicitVRLittleEndian

from gateway.dicomweb.part_header import InstanceHeader, read_header
from gateway.errors import UpstreamBadResponse
from tests.support.series_pacs import part10

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # files pydicom could not download
    SHIPPED = sorted(get_testdata_files("*.dcm"))


def header_or_refusal(head: bytes, complete: bool) -> InstanceHeader | str | None:
    try:
        return read_header(head, complete)
    except UpstreamBadResponse:
        return "unreadable"


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: Path(p).name)
def test_as_pydicom_reads_it_whole_and_cut(path: str) -> None:
    raw = Path(path).read_bytes()
    whole = header_or_refusal(raw, complete=True)
    if isinstance(whole, InstanceHeader):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = dcmread(BytesIO(raw))
        assert whole.sop_instance == ds.SOPInstanceUID
        assert whole.sop_class == ds.SOPClassUID
        assert whole.study == ds.StudyInstanceUID
        assert whole.series == ds.SeriesInstanceUID
        patient_id = str(ds.get("PatientID") or "").strip()
        issuer = str(ds.get("IssuerOfPatientID") or "").strip()
        assert whole.patient == ((issuer, patient_id) if patient_id else None)
        number = ds.get("InstanceNumber")
        assert whole.number == (int(number) if number not in (None, "") else None)
    else:
        # Every file refused lacks what names an instance (or is no Part 10 file).
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = dcmread(BytesIO(raw), force=True)
        assert (
            not all(ds.get(k) for k in ("SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID"))
            or raw[128:132] != b"DICM"
            or "TransferSyntaxUID" not in ds.file_meta
        )
    named_at = None
    for size in range(0, min(len(raw), 8192), max(1, min(len(raw), 8192) // 400)):
        cut = header_or_refusal(raw[:size], complete=False)
        if cut is not None:
            assert cut == whole, size
            named_at = size
            break
    if named_at is not None and isinstance(whole, InstanceHeader):
        assert named_at < len(raw)  # named before its pixels, not at its end


@pytest.mark.parametrize(
    "syntax", [ImplicitVRLittleEndian, ExplicitVRBigEndian, DeflatedExplicitVRLittleEndian]
)
def test_each_byte_more_until_it_is_named(syntax: str) -> None:
    raw = part10("1.2.3", "1.2.3.4", 7, ("HOSP-A", "P-1"), 64 << 10, syntax)
    answers = [read_header(raw[:n], False) for n in range(0, 2048)]
    first = next(i for i, a in enumerate(answers) if a is not None)
    assert all(a is None for a in answers[:first])
    assert all(a == answers[first] for a in answers[first:])
    header = answers[first]
    assert header is not None
    assert (header.study, header.series, header.patient, header.number) == (
        "1.2.3",
        "1.2.3.4",
        ("HOSP-A", "P-1"),
        7,
    )


def test_patient_id_in_its_own_character_set() -> None:
    raw = part10(
        "1.2.3",
        "1.2.3.4",
        1,
        ("HÔPITAL", "Ĳ-1"),
        512,
        head={"SpecificCharacterSet": "ISO_IR 192"},
    )
    header = read_header(raw, True)
    assert header is not None and header.patient == ("HÔPITAL", "Ĳ-1")
