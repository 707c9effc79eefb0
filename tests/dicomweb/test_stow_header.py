"""What STOW reads of each part's header (gateway/dicomweb/stow.py) matches dcmread:
the UIDs and the patient, in every transfer syntax and character set pydicom ships."""

from __future__ import annotations

import warnings
from io import BytesIO
from pathlib import Path

import pydicom
import pytest
from pydicom import Dataset, dcmread
from pydicom.datadict import keyword_for_tag
from pydicom.dataset import FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRBigEndian, ImplicitVRLittleEndian, generate_uid

from gateway.dicomweb.stow import NEEDED, inspect_instance

KEYWORDS = sorted(keyword_for_tag(tag) for tag in NEEDED)
# The files pydicom installs (get_testdata_files would try to download more).
SHIPPED = Path(pydicom.__file__).parent / "data" / "test_files"


def _reference(raw: bytes) -> Dataset | None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            found = dcmread(BytesIO(raw), stop_before_pixels=True)
        except Exception:
            return None
    return found if "SOPInstanceUID" in found and "SOPClassUID" in found else None


@pytest.mark.parametrize("path", sorted(SHIPPED.rglob("*.dcm")), ids=lambda p: p.name)
def test_same_as_dcmread(path: Path) -> None:
    raw = path.read_bytes()
    expected = _reference(raw)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        found = inspect_instance({}, raw)
        if expected is None:
            assert found is None or raw[128:132] == b"DICM"
            return
        assert found is not None
        for keyword in KEYWORDS:
            assert str(found.get(keyword, "")) == str(expected.get(keyword, "")), keyword


def _made(syntax: str, charset: str, patient_id: str) -> bytes:
    ds = Dataset()
    ds.SpecificCharacterSet = charset
    ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, generate_uid()
    ds.PatientID, ds.IssuerOfPatientID = patient_id, "HÔPITAL-Ä" if "192" in charset else "H"
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = syntax
    out = BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


@pytest.mark.parametrize("syntax", [ImplicitVRLittleEndian, ExplicitVRBigEndian])
@pytest.mark.parametrize(
    "charset, patient_id", [("ISO_IR 192", "Zoë-Ünal-1"), ("ISO_IR 100", "Zoë-2"), ("", "P-3")]
)
def test_patient_and_uids_in_any_syntax_and_character_set(
    syntax: str, charset: str, patient_id: str
) -> None:
    raw = _made(syntax, charset, patient_id)
    found = inspect_instance({"content-type": "application/dicom"}, raw)
    expected = _reference(raw)
    assert found is not None and expected is not None
    assert found.PatientID == patient_id
    for keyword in KEYWORDS:
        assert str(found.get(keyword, "")) == str(expected.get(keyword, "")), keyword


def test_deflated_and_not_dicom() -> None:
    deflated = (SHIPPED / "image_dfl.dcm").read_bytes()
    expected = _reference(deflated)
    found = inspect_instance({}, deflated)
    assert found is not None and expected is not None
    assert found.SOPInstanceUID == expected.SOPInstanceUID
    assert inspect_instance({}, b"\0" * 128 + b"DICM" + b"garbage" * 20) is None
    assert inspect_instance({}, b"not dicom") is None
    assert inspect_instance({"content-type": "application/pdf"}, deflated) is None
