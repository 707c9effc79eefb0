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

from pydicom.charset import convert_encodings, decode_bytes
from pydicom.filereader import data_element_generator
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
TRANSFER_SYNTAX = 0x00020010
CHARACTER_SET = 0x00080005
SOP_CLASS, SOP_INSTANCE = 0x00080016, 0x00080018
PATIENT_ID, ISSUER = 0x00100020, 0x00100021
STUDY, SERIES, NUMBER = 0x0020000D, 0x0020000E, 0x00200013
# The elements read (plain ints: pydicom's tags compare in Python, slowly); reading
# stops at the first tag past the last.
WANTED = frozenset(
    (CHARACTER_SET, SOP_CLASS, SOP_INSTANCE, PATIENT_ID, ISSUER, STUDY, SERIES, NUMBER)
)
LAST_WANTED = max(WANTED)
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
    meta = dict(_elements(stream, False, True, lambda t: t >> 16 != 2, complete))
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
    found = dict(_elements(stream, implicit, little, lambda t: t > LAST_WANTED, complete))
    # The values are read here rather than through a pydicom Dataset, which took
    # five times as long (bench/share_download.py reads 1,040 headers per download).
    sop_class, sop_instance = _text(found.get(SOP_CLASS)), _text(found.get(SOP_INSTANCE))
    study, series = _text(found.get(STUDY)), _text(found.get(SERIES))
    if not all(is_uid(uid) for uid in (sop_class, sop_instance, study, series)):
        raise unreadable()
    encodings = _encodings(found.get(CHARACTER_SET))
    patient_id = _text(found.get(PATIENT_ID), encodings)
    issuer = _text(found.get(ISSUER), encodings)
    return InstanceHeader(
        sop_class=sop_class,
        sop_instance=sop_instance,
        study=study,
        series=series,
        patient=(issuer, patient_id) if patient_id else None,
        number=_number(_text(found.get(NUMBER))),
    )


def _elements(
    stream: BytesIO, implicit: bool, little: bool, past: Callable[[int], bool], complete: bool
) -> Iterator[tuple[int, bytes]]:
    """The raw values of the wanted elements (in group 0002, of all) before the first tag
    ``past`` accepts. Raises _Short when the bytes end first, unless ``complete``."""
    stopped = False

    def stop(found: int, vr: str | None, length: int) -> bool:
        nonlocal stopped
        stopped = past(int(found))
        return stopped

    try:
        for item in data_element_generator(stream, implicit, little, stop_when=stop):
            number = int(item.tag)
            if (number in WANTED or number >> 16 == 2) and isinstance(item.value, bytes):
                yield number, item.value
    except (ValueError, KeyError, EOFError, OSError, NotImplementedError, struct.error):
        if complete:
            raise unreadable() from None
        raise _Short from None
    if not stopped and not complete:
        raise _Short


def _encodings(charset: bytes | None) -> list[str]:
    """Python's codecs for a Specific Character Set value (the default repertoire without)."""
    terms = [t.strip(" \0") for t in (charset or b"").decode("ascii", "replace").split("\\")]
    try:
        return convert_encodings(terms if any(terms) else ["ISO_IR 6"])
    except (ValueError, LookupError):
        return ["iso8859"]


def _text(value: bytes | None, encodings: list[str] | None = None) -> str:
    """A UI, IS or LO value as text: leading and trailing spaces (and a UID's padding NUL)
    carry no meaning. Text beyond ASCII is decoded in the instance's character sets."""
    if not value:
        return ""
    if encodings is None or value.isascii():
        return value.decode("ascii", "replace").strip("\0 ")
    try:
        return decode_bytes(value, encodings, {0x5C}).strip("\0 ")
    except (ValueError, LookupError):
        return value.decode("latin-1").strip("\0 ")


def _number(value: str) -> int | None:
    try:
        return int(value) if value else None
    except ValueError:
        return None
