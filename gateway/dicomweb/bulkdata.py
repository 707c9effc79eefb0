"""Bulk data and frames: the gateway's own BulkDataURIs, and frames cut from a dataset.

Metadata from a PACS names bulk data by the PACS's own address, which a client
cannot reach and which would bypass the access check. Every BulkDataURI of the
usual form ``.../studies/{uid}/series/{uid}/instances/{uid}/bulk/{tag path}``
is rewritten, while the metadata streams through, to the same path under the
gateway's ``/dicomweb``; the gateway's bulk route relays it after the check.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Sequence

import numpy as np
from pydicom import Dataset
from pydicom.encaps import generate_frames
from pydicom.uid import UID

from gateway.errors import BadRequest, NotAcceptable, NotFound

UID_PART = r"[0-9.]{1,64}"
TAG_PATH = re.compile(r"[0-9A-Fa-f]{8}(?:/[0-9]{1,6}/[0-9A-Fa-f]{8}){0,8}")
FRAME_LIST = re.compile(r"[1-9][0-9]{0,8}(?:,[1-9][0-9]{0,8}){0,999}")
_URI = re.compile(
    rb'("BulkDataURI"\s*:\s*")(?:[^"]{0,2048}/)?'
    rb"(studies/" + UID_PART.encode() + rb"/series/" + UID_PART.encode() + rb"/instances/"
    rb"" + UID_PART.encode() + rb'/bulk/[0-9A-Fa-f/]{8,120})"'
)
# Longer than any URI the pattern accepts, so no match can straddle what is sent on.
_HOLD = 4096
EXPLICIT_LITTLE = "1.2.840.10008.1.2.1"
EXPLICIT_BIG = "1.2.840.10008.1.2.2"
# Uncompressed: pydicom inflates a deflated dataset when it reads it, and big-endian
# words are swapped, so each is served as native little-endian frames.
NATIVE_SYNTAXES = frozenset(
    {"1.2.840.10008.1.2", EXPLICIT_LITTLE, EXPLICIT_BIG, "1.2.840.10008.1.2.1.99"}
)


def bulk_path(study: str, series: str, instance: str, tag_path: str) -> str:
    return f"studies/{study}/series/{series}/instances/{instance}/bulk/{tag_path}"


async def rewrite_bulk_uris(chunks: AsyncIterator[bytes], base_url: str) -> AsyncIterator[bytes]:
    """Relay DICOM JSON, pointing each recognised BulkDataURI at ``base_url``."""
    replacement = rb"\g<1>" + base_url.rstrip("/").encode().replace(b"\\", b"\\\\") + b'/\\g<2>"'
    pending = b""
    async for chunk in chunks:
        pending += chunk
        if len(pending) <= 2 * _HOLD:
            continue
        rewritten, cut = _rewrite(pending, replacement, len(pending) - _HOLD)
        yield rewritten
        pending = pending[cut:]
    if pending:
        yield _URI.sub(replacement, pending)


def _rewrite(buffer: bytes, replacement: bytes, safe_end: int) -> tuple[bytes, int]:
    """Rewrite matches starting before ``safe_end``; return the text up to where it stopped."""
    out = bytearray()
    position = 0
    for match in _URI.finditer(buffer):
        if match.start() >= safe_end:
            break
        out += buffer[position : match.start()]
        out += match.expand(replacement)
        position = match.end()
    cut = max(position, safe_end)
    out += buffer[position:cut]
    return bytes(out), cut


def parse_frame_list(text: str) -> list[int]:
    if not FRAME_LIST.fullmatch(text):
        raise BadRequest(f"'{text[:40]}' is not a list of frame numbers (1 or 1,2,3).")
    return [int(number) for number in text.split(",")]


def requested_transfer_syntax(accept: str) -> str | None:
    """The transfer-syntax parameter of an Accept header; None for '*' or absent."""
    found = re.search(r"transfer-syntax\s*=\s*\"?([0-9.*]+)", accept)
    if not found or found.group(1) == "*":
        return None
    return found.group(1)


def frames_of(dataset: Dataset, numbers: Sequence[int], accept: str) -> tuple[list[bytes], str]:
    """Frames ``numbers`` (1-based) and the transfer syntax they are in.

    Native pixel data (implicit or explicit VR, little or big endian, deflated)
    is answered in Explicit VR Little Endian, the PS3.18 default for frames (its
    bytes are the same in the implicit syntax); compressed data only as stored,
    since the embedded store does not transcode.
    """
    if "PixelData" not in dataset:
        raise NotFound("This instance has no pixel data.")
    stored = str(dataset.file_meta.TransferSyntaxUID)
    wanted = requested_transfer_syntax(accept)
    count = int(getattr(dataset, "NumberOfFrames", 1) or 1)
    if any(number > count for number in numbers):
        raise NotFound(f"This instance has {count} frame(s).")
    if stored in NATIVE_SYNTAXES:
        if wanted not in (None, EXPLICIT_LITTLE, "1.2.840.10008.1.2"):
            raise NotAcceptable(f"Frames are available as {EXPLICIT_LITTLE} only.")
        return _native_frames(dataset, numbers, count, stored == EXPLICIT_BIG), EXPLICIT_LITTLE
    if wanted != stored and ("transfer-syntax" not in accept or wanted is not None):
        raise NotAcceptable(
            f"Frames are stored as {stored} and are available only so (transfer-syntax={stored} "
            "or transfer-syntax=*)."
        )
    frames = list(generate_frames(dataset.PixelData, number_of_frames=count))
    return [frames[number - 1] for number in numbers], stored


def _native_frames(
    dataset: Dataset, numbers: Sequence[int], count: int, big_endian: bool
) -> list[bytes]:
    bits = int(dataset.BitsAllocated)
    if bits % 8:
        raise NotAcceptable("Frames of 1-bit pixel data are not served; retrieve the instance.")
    size = int(dataset.Rows) * int(dataset.Columns) * int(dataset.SamplesPerPixel) * bits // 8
    data: bytes = dataset.PixelData
    if big_endian:
        data = _little_endian(data, dataset)
    if len(data) < size * count:
        raise NotFound("The pixel data is shorter than its frames.")
    return [data[(n - 1) * size : n * size] for n in numbers]


def _little_endian(data: bytes, dataset: Dataset) -> bytes:
    """Big-endian pixel data in little-endian order: each word of BitsAllocated is
    reversed (8-bit samples stored as OW come in swapped pairs, PS3.5 8.1.1)."""
    bits = int(dataset.BitsAllocated)
    word = bits // 8 if bits > 8 else 2 if dataset["PixelData"].VR == "OW" else 1
    if word == 1:
        return data
    whole = len(data) - len(data) % word
    swapped = np.frombuffer(data, dtype=f">u{word}", count=whole // word).astype(f"<u{word}")
    return swapped.tobytes() + data[whole:]


def element_bytes(dataset: Dataset, tag_path: str) -> bytes:
    """The value of a binary element, addressed ``TAG`` or ``SEQTAG/index/TAG/...``."""
    steps = tag_path.split("/")
    current: Dataset = dataset
    for index in range(0, len(steps) - 1, 2):
        sequence_tag, item = int(steps[index], 16), int(steps[index + 1])
        if sequence_tag not in current or item >= len(current[sequence_tag].value):
            raise NotFound("No such bulk data.")
        current = current[sequence_tag].value[item]
    tag = int(steps[-1], 16)
    if tag not in current or not isinstance(current[tag].value, bytes):
        raise NotFound("No such bulk data.")
    return bytes(current[tag].value)


def is_encapsulated(dataset: Dataset) -> bool:
    return bool(UID(str(dataset.file_meta.TransferSyntaxUID)).is_encapsulated)
