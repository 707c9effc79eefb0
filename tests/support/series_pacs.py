"""A fake PACS for the share ZIP: series-level QIDO and series answers of given parts.

``part10`` makes small Part 10 instances in any of the transfer syntaxes a
series answer may carry; ``SeriesPacs`` lists its series and answers each
with its parts as one WADO-RS multipart body, in chunks of a chosen size,
counting the answers it opened and closed.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from io import BytesIO

from pydicom import Dataset, dcmread
from pydicom.dataset import FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import (
    UID,
    CTImageStorage,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    generate_uid,
)

from gateway.dicomweb import dicomjson as dj
from gateway.dicomweb.dicomjson import DicomJson, PatientKey
from gateway.dicomweb.upstream import Retrieved

BOUNDARY = "b0und"
UNCOMPRESSED = (
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    ExplicitVRBigEndian,
    DeflatedExplicitVRLittleEndian,
)
MEDIA_TYPE = f'multipart/related; type="application/dicom"; boundary={BOUNDARY}'


def part10(
    study: str,
    series: str,
    number: int | None,
    patient: PatientKey | None,
    size: int,
    syntax: str = ExplicitVRLittleEndian,
    *,
    head: Mapping[str, object] | None = None,
) -> bytes:
    """A CT instance of about ``size`` bytes of pixels (whole 512-byte rows) in ``syntax``;
    ``head`` adds elements (keyword: value)."""
    ds = Dataset()
    ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
    if patient is not None:
        ds.IssuerOfPatientID, ds.PatientID = patient
    ds.PatientName, ds.Modality, ds.StudyDate = "Split^Series", "CT", "20240102"
    ds.SeriesNumber = int(series.rsplit(".", 1)[1]) % 100
    if number is not None:
        ds.InstanceNumber = number
    for keyword, value in (head or {}).items():
        setattr(ds, keyword, value)
    ds.Rows, ds.Columns = max(size // 512, 1), 512
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    pixels = (bytes([(number or 0) % 256]) + bytes(range(255)) + bytes(256))[:512] * ds.Rows
    if syntax in UNCOMPRESSED:
        ds.PixelData = pixels
    else:
        ds.PixelData = encapsulate([pixels])
        ds["PixelData"].VR, ds["PixelData"].is_undefined_length = "OB", True
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = UID(syntax)
    out = BytesIO()
    # Any syntax but these encodes its data set in explicit VR little endian (PS3.5 10).
    implicit, little = syntax == ImplicitVRLittleEndian, syntax != ExplicitVRBigEndian
    if syntax in UNCOMPRESSED:
        ds.save_as(out, enforce_file_format=True)
    else:
        ds.save_as(out, implicit_vr=implicit, little_endian=little, enforce_file_format=True)
    return out.getvalue()


def uid_of(raw: bytes) -> str:
    return str(dcmread(BytesIO(raw), stop_before_pixels=True).SOPInstanceUID)


def multipart(parts: Sequence[bytes]) -> Iterator[bytes]:
    for part in parts:
        yield f"--{BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n".encode()
        yield part
        yield b"\r\n"
    yield f"--{BOUNDARY}--\r\n".encode()


class SeriesPacs:
    """One study of the patient ``patient``: ``series`` maps each series UID to the parts
    its WADO-RS answer holds (Part 10 bytes, or anything), sent in ``chunk``-byte pieces."""

    name = "fake"

    def __init__(
        self,
        study: str,
        series: Mapping[str, Sequence[bytes]],
        patient: PatientKey | None,
        chunk: int = 1 << 16,
    ) -> None:
        self.study, self.series, self.patient, self.chunk = study, dict(series), patient, chunk
        self.requests: list[tuple[str, str]] = []
        self.opened = self.closed = self.open = self.most_open = 0

    async def search_series(
        self, filters: Mapping[str, str], fields: Sequence[str] = (), limit: int | None = None
    ) -> list[DicomJson]:
        found = []
        for number, (uid, parts) in enumerate(self.series.items(), 1):
            item = {
                dj.tag("StudyInstanceUID"): dj.element("UI", self.study),
                dj.tag("SeriesInstanceUID"): dj.element("UI", uid),
                dj.tag("SeriesNumber"): dj.element("IS", number),
                dj.tag("Modality"): dj.element("CS", "CT"),
                dj.tag("NumberOfSeriesRelatedInstances"): dj.element("IS", len(parts)),
            }
            if self.patient is not None:
                item[dj.tag("IssuerOfPatientID")] = dj.element("LO", self.patient[0])
                item[dj.tag("PatientID")] = dj.element("LO", self.patient[1])
            found.append(item)
        return found

    async def search_instances(
        self, filters: Mapping[str, str], fields: Sequence[str] = (), limit: int | None = None
    ) -> list[DicomJson]:
        raise AssertionError("the share ZIP lists series, not instances")

    async def retrieve(self, path: str, accept: str) -> Retrieved:
        await asyncio.sleep(0)
        self.requests.append((path, accept))
        parts = self.series[path.rsplit("/", 1)[1]]
        self.opened += 1
        self.open += 1
        self.most_open = max(self.most_open, self.open)

        async def chunks() -> AsyncIterator[bytes]:
            for piece in multipart(parts):
                for start in range(0, len(piece), self.chunk):
                    yield piece[start : start + self.chunk]

        async def close() -> None:
            self.open -= 1
            self.closed += 1

        return Retrieved(MEDIA_TYPE, chunks(), close)

    async def aclose(self) -> None: ...
