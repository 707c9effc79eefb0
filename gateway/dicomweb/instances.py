"""Whole objects fetched through the upstream: one Part 10 instance, or metadata.

Rendering and the FHIR documents need an object whole rather than streamed;
each fetch is capped, so one request's memory stays bounded. Instances are
asked for in any transfer syntax (``transfer-syntax=*``): as stored, so the
archive never has to transcode (Orthanc cannot transcode some, JPEG 2000 among
them, and answers 500), and the gateway decodes what it needs itself.
"""

from __future__ import annotations

import struct
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from io import BytesIO
from typing import IO

import anyio
import orjson
from pydicom.filereader import data_element_generator
from python_multipart import MultipartParser

from gateway.dicomweb import stow
from gateway.dicomweb.dicomjson import DicomJson, is_uid
from gateway.dicomweb.upstream import Upstream
from gateway.errors import GatewayError, PayloadTooLarge, UpstreamBadResponse

MULTIPART_DICOM = 'multipart/related; type="application/dicom"'
AS_STORED = f"{MULTIPART_DICOM}; transfer-syntax=*"
DICOM_JSON = "application/dicom+json"
MAX_INSTANCE_BYTES = 512 << 20
MAX_METADATA_BYTES = 64 << 20
# A spooled instance stays in memory up to this size, then goes to a temporary file.
IN_MEMORY = 8 << 20
PART_END = None  # what ``Parts.feed`` gives where a part ends
# A Part 10 file: a 128-byte preamble, "DICM", then the file meta (group 0002), which
# always comes in Explicit VR Little Endian and starts with its own length.
META_START = 132
GROUP_LENGTH_END = META_START + 12
MEDIA_STORAGE_SOP_INSTANCE_UID = 0x00020003
TRANSFER_SYNTAX_UID = 0x00020010
# The file meta is a few hundred bytes; one that does not fit here is not believed.
MAX_META_BYTES = 64 << 10


def unreadable() -> UpstreamBadResponse:
    return UpstreamBadResponse("The archive sent an instance that cannot be read.")


class Parts:
    """The parts of a WADO-RS multipart answer, as the answer streams in.

    ``feed`` turns each chunk into the pieces of part bodies it holds, in order,
    with ``PART_END`` where a part ends; ``finish`` raises unless the closing
    boundary came. Nothing is held between chunks but the parser's lookbehind.
    """

    def __init__(self, media_type: str) -> None:
        try:
            self._parser = MultipartParser(
                stow.boundary_of(media_type),
                {
                    "on_part_begin": self._begin,
                    "on_part_data": self._data,
                    "on_part_end": self._part_end,
                    "on_end": self._end,
                },
            )
        except (GatewayError, ValueError):
            raise unreadable() from None
        self._pieces: list[memoryview | None] = []
        self.begun = 0
        self._ended = False

    def _begin(self) -> None:
        self.begun += 1

    def _data(self, data: bytes, start: int, end: int) -> None:
        # A view, not a copy: ``data`` is the chunk fed (or the boundary), never changed.
        if end > start:
            self._pieces.append(memoryview(data)[start:end])

    def _part_end(self) -> None:
        self._pieces.append(PART_END)

    def _end(self) -> None:
        self._ended = True

    def feed(self, chunk: bytes) -> list[memoryview | None]:
        """The pieces ``chunk`` holds: views of it (``bytes``, so it never changes)."""
        try:
            self._parser.write(chunk)
        except ValueError:  # MultipartParseError
            raise unreadable() from None
        pieces, self._pieces = self._pieces, []
        return pieces

    def finish(self) -> None:
        # The parser never complains about a body cut short: only the closing
        # boundary tells a whole answer from a truncated one.
        if not self._ended or not self.begun:
            raise unreadable()


class SinglePart:
    """The body of the one part of a WADO-RS multipart answer, as the answer streams in."""

    def __init__(self, media_type: str) -> None:
        self._parts = Parts(media_type)
        self._size = 0

    def feed(self, chunk: bytes) -> list[memoryview]:
        pieces = [piece for piece in self._parts.feed(chunk) if piece is not None]
        if self._parts.begun > 1:
            raise unreadable()
        self._size += sum(len(piece) for piece in pieces)
        return pieces

    def finish(self) -> None:
        self._parts.finish()
        if self._parts.begun != 1 or not self._size:
            raise unreadable()


def named_instance(head: bytes | bytearray, complete: bool) -> str | None:
    """The SOP Instance UID the file meta of a Part 10 file names, from the file's first
    bytes; None while ``head`` (all of the file when ``complete``) is too short to tell."""
    found = file_meta(head, complete)
    return found[0] if found else None


def file_meta(head: bytes | bytearray, complete: bool) -> tuple[str, str | None] | None:
    """The SOP Instance UID and Transfer Syntax UID (None if absent) of a Part 10 file's
    meta, from its first bytes; None while ``head`` is too short to tell.

    An archive relays what it was sent: Orthanc serves an instance stored without its
    preamble and "DICM" (dicomweb-client's STOW writes them so) as the file meta alone,
    so the meta may start at 132 (the PS3.10 form), at 4 ("DICM" only) or at 0."""
    if len(head) < GROUP_LENGTH_END and not complete:
        return None
    if head[128:META_START] == b"DICM":
        start = META_START
    elif head[:4] == b"DICM":
        start = 4
    elif head[:2] == b"\x02\x00":
        start = 0
    else:
        raise unreadable()
    end = MAX_META_BYTES
    if head[start : start + 6] == b"\x02\x00\x00\x00UL":
        end = start + 12 + int.from_bytes(head[start + 8 : start + 12], "little")
    # Without its group length (some writers leave it out) the meta ends where group
    # 0002 does, somewhere before MAX_META_BYTES.
    if len(head) < min(end, MAX_META_BYTES) and not complete:
        return None
    meta = BytesIO(bytes(head[start : min(end, MAX_META_BYTES)]))
    found: dict[int, str] = {}
    try:
        for element in data_element_generator(
            meta, False, True, stop_when=lambda tag, vr, length: tag.group != 2
        ):
            if element.tag in (MEDIA_STORAGE_SOP_INSTANCE_UID, TRANSFER_SYNTAX_UID) and isinstance(
                element.value, bytes
            ):
                found[element.tag] = element.value.decode("ascii", "replace").strip("\0 ")
    except (ValueError, KeyError, EOFError, OSError, struct.error):
        raise unreadable() from None
    uid = found.get(MEDIA_STORAGE_SOP_INSTANCE_UID, "")
    syntax = found.get(TRANSFER_SYNTAX_UID)
    if not is_uid(uid):
        raise unreadable()
    return uid, syntax if syntax and is_uid(syntax) else None


@asynccontextmanager
async def spooled(
    upstream: Upstream, study: str, series: str, instance: str, limit: int
) -> AsyncIterator[IO[bytes]]:
    """The instance's Part 10 bytes, as stored, in a temporary file (memory up to
    ``IN_MEMORY``, then disk) positioned at its start; 413 past ``limit`` bytes."""
    path = f"studies/{study}/series/{series}/instances/{instance}"
    retrieved = await upstream.retrieve(path, AS_STORED)
    file: IO[bytes] = tempfile.SpooledTemporaryFile(max_size=IN_MEMORY)
    try:
        try:
            body, size = SinglePart(retrieved.media_type), 0
            async for chunk in retrieved.chunks:
                pieces = body.feed(chunk)
                size += sum(len(piece) for piece in pieces)
                if size > limit:
                    raise PayloadTooLarge(
                        f"The instance is larger than the {limit} bytes the gateway renders "
                        "(GATEWAY_RENDER_MAX_BYTES); retrieve it instead."
                    )
                if pieces:
                    await anyio.to_thread.run_sync(file.writelines, pieces)
            body.finish()
        finally:
            await retrieved.close()
        file.seek(0)
        yield file
    finally:
        file.close()


async def _read(upstream: Upstream, path: str, accept: str, limit: int) -> tuple[str, bytes]:
    retrieved = await upstream.retrieve(path, accept)
    body = bytearray()
    try:
        async for chunk in retrieved.chunks:
            body += chunk
            if len(body) > limit:
                raise PayloadTooLarge("The object is too large to be handled here.")
    finally:
        await retrieved.close()
    return retrieved.media_type, bytes(body)


async def part10(upstream: Upstream, study: str, series: str, instance: str) -> bytes:
    """The instance as its Part 10 bytes, taken from the WADO-RS multipart answer."""
    path = f"studies/{study}/series/{series}/instances/{instance}"
    media_type, body = await _read(upstream, path, AS_STORED, MAX_INSTANCE_BYTES)

    def first_part() -> bytes:
        stream = BytesIO(body)
        ranges = stow.part_ranges(stream, stow.boundary_of(media_type))
        return stow.read_part(stream, *ranges[0])[1]

    try:
        return await anyio.to_thread.run_sync(first_part)
    except (GatewayError, IndexError, ValueError):
        raise UpstreamBadResponse("The archive sent an instance that cannot be read.") from None


async def metadata(upstream: Upstream, path: str) -> list[DicomJson]:
    """WADO-RS metadata of ``path`` (a study, series or instance), parsed."""
    _, body = await _read(upstream, f"{path}/metadata", DICOM_JSON, MAX_METADATA_BYTES)
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise UpstreamBadResponse("The archive sent metadata that is not JSON.") from None
    if not isinstance(parsed, list) or not all(isinstance(item, dict) for item in parsed):
        raise UpstreamBadResponse("The archive sent metadata that is not DICOM JSON.")
    return parsed
