"""Whole objects fetched through the upstream: one Part 10 instance, or metadata.

Rendering and the FHIR documents need an object whole rather than streamed;
each fetch is capped, so one request's memory stays bounded.
"""

from __future__ import annotations

from io import BytesIO

import anyio
import orjson

from gateway.dicomweb import stow
from gateway.dicomweb.dicomjson import DicomJson
from gateway.dicomweb.upstream import Upstream
from gateway.errors import GatewayError, PayloadTooLarge, UpstreamBadResponse

MULTIPART_DICOM = 'multipart/related; type="application/dicom"'
DICOM_JSON = "application/dicom+json"
MAX_INSTANCE_BYTES = 512 << 20
MAX_METADATA_BYTES = 64 << 20


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
    media_type, body = await _read(upstream, path, MULTIPART_DICOM, MAX_INSTANCE_BYTES)

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
