"""Who a Part 10 instance is about, read from its first bytes as they stream in.

A WADO-RS answer is split as it arrives (``records/archive.py``): before a
part's bytes go anywhere, its leading elements name it and say whose it is.
``read_header`` reads them from the part's first bytes, in any transfer
syntax (explicit or implicit VR little endian, explicit VR big endian, and
deflated, whose data set is inflated as far as needed), and answers None
while those bytes stop short of them. Only the elements up to Instance Number
(0020,0013) are read, so pixel data, documents and anything later are never
looked at; an instance whose elements before it span more than
``MAX_HEADER_BYTES`` is refused.
"""

from __future__ import annotations

import struct
import warnings
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from io import BytesIO

from pydicom import Dataset
from pydicom.charset import convert_encodings
from pydicom.dataelem import DataElement, RawDataElement, convert_raw_data_element
from pydicom.filereader import data_element_generator
from pydicom.tag import BaseTag, Tag
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ImplicitVRLittleEndian,
)

from gateway.dicomweb.dicomjson import DicomJson, PatientKey, element, is_uid, tag
from gateway.errors import UpstreamBadResponse

# A Part 10 file: a 128-byte preamble, "DICM", then the file meta (group 0002), which
# always comes in Explicit VR Little Endian.
META_START = 132
# The elements read, in the order they come; reading stops at the first tag past them.
WANTED = {
    Tag(keyword): keyword
    for keyword in (
        "SpecificCharacterSet",
        "SOPClassUID",
        "SOPInstanceUID",
        "PatientID",
        "IssuerOfPatientID",
        "StudyInstanceUID",
        "SeriesInstanceUID",
        "InstanceNumber",
    )
}
LAST_WANTED = max(WANTED)
TRANSFER_SYNTAX = Tag("TransferSyntaxUID")
CHARACTER_SET = Tag("SpecificCharacterSet")
# What the elements before Instance Number may add up to. Those of an ordinary
# instance are a few kilobytes; tries start small and widen, so a part's first
# piece (up to a whole upstream read) is not copied to be parsed.
MAX_HEADER_BYTES = 4 << 20
TRIES = (16 << 10, 256 << 10, MAX_HEADER_BYTES)


@dataclass(frozen=True)
class InstanceHeader:
    sop_class: str
    sop_instance: str
    study: str
    series: str
    patient: PatientKey | None  # (IssuerOfPatientID or "", PatientID)
    number: int | None  # InstanceNumber

    def as_json(self) -> DicomJson:
        """The header as a DICOM JSON instance, for ``Visibility.permits``."""
        found: DicomJson = {
            tag("StudyInstanceUID"): element("UI", self.study),
            tag("SeriesInstanceUID"): element("UI", self.series),
            tag("SOPInstanceUID"): element("UI", self.sop_instance),
        }
        if self.patient is not None:
            found[tag("IssuerOfPatientID")] = element("LO", self.patient[0])
            found[tag("PatientID")] = element("LO", self.patient[1])
        return found


class _Short(Exception):
    """The bytes read so far stop before the elements wanted."""


def unreadable() -> UpstreamBadResponse:
    return UpstreamBadResponse("The archive sent an instance that cannot be read.")


def read_header(head: bytes | bytearray | memoryview, complete: bool) -> InstanceHeader | None:
    """The header of the Part 10 file that starts with ``head`` (all of it when
    ``complete``); None while ``head`` is too short to tell. UpstreamBadResponse when
    it is not a Part 10 file, or lacks its UIDs."""
    for size in TRIES:
        whole = size >= len(head)
        try:
            with warnings.catch_warnings():
                # pydicom warns of a character set cut short by the end of ``head``.
                warnings.simplefilter("ignore")
                return _parse(bytes(head if whole else head[:size]), complete and whole)
        except _Short:
            if whole:
                if complete or len(head) >= MAX_HEADER_BYTES:
                    raise unreadable() from None
                return None
    raise unreadable()


def _parse(head: bytes, complete: bool) -> InstanceHeader:
    if len(head) < META_START + 8:
        if complete:
            raise unreadable()
        raise _Short
    if head[128:META_START] != b"DICM":
        raise unreadable()
    stream = BytesIO(head)
    stream.seek(META_START)
    meta = dict(_elements(stream, False, True, lambda t: t.group != 2, complete))
    syntax = _text(meta.get(TRANSFER_SYNTAX))
    if not is_uid(syntax):
        raise unreadable()
    # Every transfer syntax but these two encodes the data set in explicit VR little
    # endian (PS3.5 10), including private ones; one more deflates it.
    implicit, little = syntax == ImplicitVRLittleEndian, syntax != ExplicitVRBigEndian
    if syntax == DeflatedExplicitVRLittleEndian:
        inflater = zlib.decompressobj(-zlib.MAX_WBITS)
        try:
            inflated = inflater.decompress(head[stream.tell() :], MAX_HEADER_BYTES)
        except zlib.error:
            if complete:
                raise unreadable() from None
            raise _Short from None  # a deflate block cut short can look broken
        stream, complete = BytesIO(inflated), complete or inflater.eof
    found = dict(
        _elements(
            stream,
            implicit,
            little,
            lambda t: t > LAST_WANTED,
            complete,
        )
    )
    dataset = Dataset({t: found[t] for t in WANTED if t in found})
    # Text is decoded in the instance's own character set.
    dataset.set_original_encoding(implicit, little, _encoding(found.get(CHARACTER_SET)))
    try:
        values = {keyword: dataset.get(keyword) for keyword in WANTED.values()}
    except (ValueError, KeyError, TypeError, LookupError):
        raise unreadable() from None
    sop_class, sop_instance = str(values["SOPClassUID"] or ""), str(values["SOPInstanceUID"] or "")
    study, series = str(values["StudyInstanceUID"] or ""), str(values["SeriesInstanceUID"] or "")
    if not all(is_uid(uid) for uid in (sop_class, sop_instance, study, series)):
        raise unreadable()
    patient_id = str(values["PatientID"] or "").strip()
    issuer = str(values["IssuerOfPatientID"] or "").strip()
    return InstanceHeader(
        sop_class=sop_class,
        sop_instance=sop_instance,
        study=study,
        series=series,
        patient=(issuer, patient_id) if patient_id else None,
        number=_number(values["InstanceNumber"]),
    )


def _elements(
    stream: BytesIO, implicit: bool, little: bool, past: Callable[[BaseTag], bool], complete: bool
) -> Iterator[tuple[BaseTag, RawDataElement | DataElement]]:
    """The wanted elements (or, in group 0002, all) before the first tag ``past`` accepts.
    Raises _Short when the bytes end first, unless ``complete`` (the data set ends)."""
    stopped = False

    def stop(found: BaseTag, vr: str | None, length: int) -> bool:
        nonlocal stopped
        stopped = past(found)
        return stopped

    try:
        for item in data_element_generator(stream, implicit, little, stop_when=stop):
            if item.tag in WANTED or item.tag.group == 2:
                yield item.tag, item
    except (ValueError, KeyError, EOFError, OSError, NotImplementedError, struct.error):
        if complete:
            raise unreadable() from None
        raise _Short from None
    if not stopped and not complete:
        raise _Short


def _encoding(charset: RawDataElement | DataElement | None) -> str | list[str]:
    if not isinstance(charset, RawDataElement):
        return "iso8859"  # the default character repertoire
    try:
        return convert_encodings(convert_raw_data_element(charset).value)
    except (ValueError, LookupError, TypeError):
        return "iso8859"


def _text(found: RawDataElement | DataElement | None) -> str:
    value = getattr(found, "value", None)
    return value.decode("ascii", "replace").strip("\0 ") if isinstance(value, bytes) else ""


def _number(value: object) -> int | None:
    try:
        return int(str(value).strip()) if value not in (None, "") else None
    except ValueError:
        return None
