"""STOW-RS (PS3.18 10.5): spool the body, split the multipart, store, answer.

The request body is spooled to disk as it arrives (at most ``limit`` bytes,
else 413), so a large upload never sits in memory. Part boundaries are found
by scanning the spool in chunks, and each part is read when it is stored.
"""

from __future__ import annotations

import itertools
import re
import secrets
import struct
import tempfile
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from io import BytesIO
from typing import IO, Any

import anyio
from pydicom import Dataset, dcmread
from pydicom.charset import convert_encodings
from pydicom.dataelem import RawDataElement, convert_raw_data_element
from pydicom.errors import InvalidDicomError
from pydicom.filereader import data_element_generator, read_preamble
from pydicom.tag import Tag
from pydicom.uid import UID

from gateway.dicomweb.dicomjson import element, tag
from gateway.errors import BadRequest, PayloadTooLarge, UnsupportedMediaType

SCAN = 1 << 20
IN_MEMORY = 1 << 20
WRITE_BATCH = 1 << 20
# Instances go to the archive in groups: one upstream request per group, with up to
# UPLOADS_IN_FLIGHT groups on their way while the next is read and checked, so the
# gateway's work overlaps the archive's, and an archive that stores requests in
# parallel (Orthanc does) uses its cores. Memory: about (UPLOADS_IN_FLIGHT + 1) groups.
# Orthanc stored requests of 25 small instances as fast as requests of 50, and two
# clients at once 1.4 times as fast as one (docs/benchmarks.md, issue 12).
GROUP_BYTES = 8 << 20
GROUP_PARTS = 25
UPLOADS_IN_FLIGHT = 2
# What the gateway reads of each stored part's header: the UIDs it answers with, the
# patient it checks, and the character set they are in.
NEEDED = frozenset(
    Tag(keyword)
    for keyword in (
        "SpecificCharacterSet",
        "SOPClassUID",
        "SOPInstanceUID",
        "PatientID",
        "IssuerOfPatientID",
        "StudyInstanceUID",
        "SeriesInstanceUID",
    )
)
LAST_NEEDED = max(NEEDED)
TRANSFER_SYNTAX = Tag("TransferSyntaxUID")
CHARACTER_SET = Tag("SpecificCharacterSet")
# FailureReason values (PS3.4 Annex B / PS3.18 10.5.3).
CANNOT_UNDERSTAND = 0xC000
PROCESSING_FAILURE = 0x0110
WRONG_STUDY = 0xA900


@dataclass
class Outcome:
    stored: list[Dataset] = field(default_factory=list)
    failed: list[tuple[str, str, int]] = field(default_factory=list)  # class, instance, reason

    def join(self, later: Outcome) -> None:
        self.stored += later.stored
        self.failed += later.failed

    @property
    def status(self) -> int:
        if not self.failed:
            return 200
        return 202 if self.stored else 409


def multipart_request(parts: Sequence[bytes]) -> tuple[bytes, str]:
    """A STOW-RS request body of Part 10 files, and its Content-Type (a fresh boundary)."""
    boundary = secrets.token_hex(16)
    head = f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()
    body = b"".join(head + part + b"\r\n" for part in parts) + f"--{boundary}--\r\n".encode()
    return body, f'multipart/related; type="application/dicom"; boundary={boundary}'


def boundary_of(content_type: str) -> str:
    media = content_type.split(";")[0].strip().lower()
    if media != "multipart/related":
        raise UnsupportedMediaType('STOW-RS takes multipart/related; type="application/dicom".')
    kind = re.search(r'type\s*=\s*"?([^";]+)"?', content_type)
    if kind and kind.group(1).strip().lower() != "application/dicom":
        raise UnsupportedMediaType(
            f"Parts of type {kind.group(1).strip()} are not supported; use application/dicom."
        )
    found = re.search(r'boundary\s*=\s*"?([^";]+)"?', content_type)
    if not found or not found.group(1).strip():
        raise BadRequest("The multipart body has no boundary parameter.")
    return found.group(1).strip()


async def spool(chunks: AsyncIterator[bytes], limit: int) -> IO[bytes]:
    """The body in a temporary file (memory up to 1 MiB, then disk); 413 past ``limit``."""
    spooled: IO[bytes] = tempfile.SpooledTemporaryFile(max_size=IN_MEMORY)
    size = batched = 0
    batch: list[bytes] = []
    try:
        async for chunk in chunks:
            size += len(chunk)
            if size > limit:
                raise PayloadTooLarge(f"The upload exceeds the limit of {limit} bytes.")
            # One thread hop per WRITE_BATCH, not per chunk the server hands over.
            batch.append(chunk)
            batched += len(chunk)
            if batched >= WRITE_BATCH:
                await anyio.to_thread.run_sync(spooled.writelines, batch)
                batch, batched = [], 0
        if batch:
            await anyio.to_thread.run_sync(spooled.writelines, batch)
    except BaseException:
        spooled.close()  # too large, stalled (408) or disconnected: the spool goes now
        raise
    spooled.seek(0)
    return spooled


def part_ranges(body: IO[bytes], boundary: str) -> list[tuple[int, int]]:
    """(start, end) of each part, headers included (RFC 2046); 400 when truncated."""
    dash_boundary = b"--" + boundary.encode("latin-1")
    marker = b"\r\n" + dash_boundary  # every delimiter but a leading one follows a CRLF
    found: list[int] = []
    body.seek(0)
    if body.read(len(dash_boundary)) == dash_boundary:
        found.append(0)
    body.seek(0)
    offset, tail = 0, b""
    while chunk := body.read(SCAN):
        window = tail + chunk
        base = offset - len(tail)
        at = window.find(marker)
        while at != -1:
            found.append(base + at + 2)
            at = window.find(marker, at + 1)
        offset += len(chunk)
        tail = window[-(len(marker) - 1) :]  # too short to hold a whole marker twice
    closing = next((i for i, at in enumerate(found) if _closes(body, at, dash_boundary)), None)
    if closing is None:
        raise BadRequest("The multipart body is truncated (no closing delimiter).")
    ranges = []
    for current, following in itertools.pairwise(found[: closing + 1]):
        body.seek(current + len(dash_boundary))
        start = current + len(dash_boundary) + len(body.readline())  # skip padding + CRLF
        ranges.append((start, following - 2))
    if not ranges:
        raise BadRequest("The multipart body has no parts.")
    return ranges


def _closes(body: IO[bytes], at: int, dash_boundary: bytes) -> bool:
    body.seek(at + len(dash_boundary))
    return body.read(2) == b"--"


def read_part(body: IO[bytes], start: int, end: int) -> tuple[dict[str, str], bytes]:
    body.seek(start)
    raw = body.read(max(0, end - start))
    head, separator, content = raw.partition(b"\r\n\r\n")
    if not separator:
        return {}, raw
    headers = {}
    for line in head.decode("latin-1").split("\r\n"):
        name, _, value = line.partition(":")
        if name.strip():
            headers[name.strip().lower()] = value.strip()
    return headers, content


def inspect_instance(headers: dict[str, str], content: bytes) -> Dataset | None:
    """What the gateway needs of a part's header (its UIDs and patient), or None when
    the part is not DICOM Part 10."""
    kind = headers.get("content-type", "application/dicom").split(";")[0].strip().lower()
    if kind != "application/dicom":
        return None
    try:
        dataset = _needed_elements(content)
    except (InvalidDicomError, ValueError, EOFError, AttributeError, KeyError, struct.error):
        return None
    if "SOPInstanceUID" not in dataset or "SOPClassUID" not in dataset:
        return None
    return dataset


def _needed_elements(content: bytes) -> Dataset:
    """The elements of ``NEEDED`` from the start of a Part 10 file.

    pydicom's element reader stops after Series Instance UID and converts only
    these: half the time ``dcmread`` took to build the whole header, which was
    the gateway's largest cost per stored instance (py-spy on bench/stow.py). A deflated
    data set cannot be read this way, so it goes through ``dcmread``.
    """
    stream = BytesIO(content)
    read_preamble(stream, False)  # InvalidDicomError without the preamble and "DICM"
    meta = {
        element.tag: element
        for element in data_element_generator(
            stream, False, True, stop_when=lambda tag, vr, length: tag.group != 2
        )
    }
    syntax = UID(_text(meta.get(TRANSFER_SYNTAX)))
    if not syntax or syntax.is_deflated or not syntax.is_transfer_syntax:
        return dcmread(BytesIO(content), stop_before_pixels=True, specific_tags=list(NEEDED))
    found = {
        element.tag: element
        for element in data_element_generator(
            stream,
            syntax.is_implicit_VR,
            syntax.is_little_endian,
            stop_when=lambda tag, vr, length: tag > LAST_NEEDED,
        )
        if element.tag in NEEDED
    }
    dataset = Dataset(found)
    encoding: str | list[str] = "iso8859"  # the default character repertoire
    if isinstance(charset := found.get(CHARACTER_SET), RawDataElement):
        encoding = convert_encodings(convert_raw_data_element(charset).value)
    dataset.set_original_encoding(syntax.is_implicit_VR, syntax.is_little_endian, encoding)
    return dataset


def _text(element: Any) -> str:
    value = getattr(element, "value", None)
    return value.decode("ascii", "replace").strip("\0 ") if isinstance(value, bytes) else ""


@dataclass
class Part:
    dataset: Dataset | None  # the header, or None when the part is not DICOM Part 10
    content: bytes


def read_group(body: IO[bytes], ranges: list[tuple[int, int]]) -> tuple[list[Part], int]:
    """Parts from the front of ``ranges`` up to the group limits; and how many were taken."""
    parts: list[Part] = []
    size = 0
    for start, end in ranges:
        if parts and (size + end - start > GROUP_BYTES or len(parts) >= GROUP_PARTS):
            break
        headers, content = read_part(body, start, end)
        parts.append(Part(inspect_instance(headers, content), content))
        size += end - start
    return parts, len(parts)


def response_json(outcome: Outcome, wado_base: str) -> dict[str, Any]:
    def retrieve_url(ds: Dataset) -> str:
        return (
            f"{wado_base}/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
            f"/instances/{ds.SOPInstanceUID}"
        )

    result: dict[str, Any] = {}
    studies = {str(ds.StudyInstanceUID) for ds in outcome.stored}
    if len(studies) == 1:
        result[tag("RetrieveURL")] = element("UR", f"{wado_base}/studies/{studies.pop()}")
    if outcome.failed:
        result[tag("FailedSOPSequence")] = element(
            "SQ",
            *(
                {
                    tag("ReferencedSOPClassUID"): element("UI", sop_class)
                    if sop_class
                    else element("UI"),
                    tag("ReferencedSOPInstanceUID"): element("UI", uid) if uid else element("UI"),
                    tag("FailureReason"): element("US", reason),
                }
                for sop_class, uid, reason in outcome.failed
            ),
        )
    if outcome.stored:
        result[tag("ReferencedSOPSequence")] = element(
            "SQ",
            *(
                {
                    tag("ReferencedSOPClassUID"): element("UI", str(ds.SOPClassUID)),
                    tag("ReferencedSOPInstanceUID"): element("UI", str(ds.SOPInstanceUID)),
                    tag("RetrieveURL"): element("UR", retrieve_url(ds)),
                }
                for ds in outcome.stored
            ),
        )
    return result
