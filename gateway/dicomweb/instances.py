"""Whole objects fetched through the upstream: one Part 10 instance, or metadata.

Rendering and the FHIR documents need an object whole rather than streamed;
each fetch is capped, so one request's memory stays bounded. Instances are
asked for in any transfer syntax (``transfer-syntax=*``): as stored, so the
archive never has to transcode (Orthanc cannot transcode some, JPEG 2000 among
them, and answers 500), and the gateway decodes what it needs itself.
"""

from __future__ import annotations

import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from io import BytesIO
from typing import IO

import anyio
import orjson
from python_multipart import MultipartParser

from gateway.dicomweb import stow
from gateway.dicomweb.dicomjson import DicomJson
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
