"""Studies of our own for the SMART Imaging Access tests, and the gateway over them.

Patient A is IMG-1 at HOSP-A, patient B the namesake IMG-1 at HOSP-B. A's CT
study holds a report series numbered before its images (so ordering has
something to do) and images in two transfer syntaxes; ``SHARED`` is one
Study Instance UID that the archive holds for both A and C (partly visible).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
from pydicom import Dataset
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

CT = "1.2.840.10008.5.1.4.1.1.2"
MR = "1.2.840.10008.5.1.4.1.1.4"
BASIC_TEXT_SR = "1.2.840.10008.5.1.4.1.1.88.11"
A = ("HOSP-A", "IMG-1")
B = ("HOSP-B", "IMG-1")
C = ("HOSP-A", "IMG-2")  # another PatientID: Orthanc keys a study by PatientID and UID
PATIENT_SCOPES = "launch/patient patient/ImagingStudy.rs patient/DocumentReference.rs"


def uid(*parts: object) -> str:
    digest = hashlib.sha256(repr(("imaging", *parts)).encode()).digest()
    return f"2.25.{int.from_bytes(digest[:16], 'big')}"


CT_STUDY, MR_STUDY, B_STUDY, SHARED = (uid(name) for name in ("ct", "mr", "b", "shared"))


@dataclass(frozen=True)
class Series:
    number: int
    modality: str
    sop_class: str
    size: int
    syntax: str = ExplicitVRLittleEndian


def _instance(
    patient: tuple[str, str], study: str, series: Series, index: int, accession: str
) -> Dataset:
    ds = Dataset()
    ds.SOPClassUID = series.sop_class
    ds.SOPInstanceUID = uid(study, patient, series.number, index)
    ds.StudyInstanceUID = study
    ds.SeriesInstanceUID = uid(study, patient, series.number)
    ds.SeriesNumber = series.number
    ds.InstanceNumber = index + 1
    ds.Modality = series.modality
    ds.PatientID, ds.IssuerOfPatientID = patient[1], patient[0]
    ds.PatientName = {A: "Able^Alice", B: "Baker^Bea"}.get(patient, "Cole^Cy")
    ds.PatientBirthDate = "19700101"
    ds.PatientSex = "F"
    ds.StudyDate = ds.SeriesDate = "20240105"
    ds.StudyTime = "101500"
    ds.TimezoneOffsetFromUTC = "+0000"
    ds.AccessionNumber = accession
    ds.StudyDescription = f"{series.modality} study"
    ds.StudyID = "1"
    if series.modality == "SR":
        ds.ValueType = "CONTAINER"
        ds.CompletionFlag = "COMPLETE"
        ds.VerificationFlag = "VERIFIED"
        ds.ContentDate, ds.ContentTime = "20240105", "120000"
    else:
        ds.Rows = ds.Columns = 8
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated = ds.BitsStored = 16
        ds.HighBit = 15
        ds.PixelRepresentation = 0
        ds.PixelData = (np.arange(64, dtype="<u2") * (index + 1)).tobytes()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = series.syntax
    return ds


def study(
    patient: tuple[str, str], study_uid: str, accession: str, *series: Series
) -> list[Dataset]:
    return [
        _instance(patient, study_uid, s, index, accession)
        for s in series
        for index in range(s.size)
    ]


def datasets(shared: bool = False) -> list[Dataset]:
    """The studies; with ``shared``, SHARED too (the embedded store keeps one patient per
    Study Instance UID, so only an archive such as Orthanc can hold it)."""
    found = [
        # The report is series 1: by number alone it would come first.
        *study(
            A,
            CT_STUDY,
            "ACC-CT",
            Series(1, "SR", BASIC_TEXT_SR, 1),
            Series(3, "CT", CT, 2, ImplicitVRLittleEndian),
            Series(2, "CT", CT, 3),
        ),
        *study(A, MR_STUDY, "ACC-MR", Series(1, "MR", MR, 2)),
        *study(B, B_STUDY, "ACC-B", Series(1, "CT", CT, 1)),
    ]
    if shared:
        found += [
            *study(A, SHARED, "ACC-S", Series(1, "MR", MR, 1)),
            *study(C, SHARED, "ACC-S", Series(2, "MR", MR, 1)),
        ]
    return found
