"""Whole studies as one ZIP of DICOM Part 10 files, streamed: the share-link download.

Instances are listed with instance-level QIDO (narrowed by, and re-checked
against, the request's visibility), then fetched one at a time with WADO-RS and
copied into the ZIP as their bytes arrive, so memory stays around one chunk
whatever the size of the studies.
"""

from __future__ import annotations

import asyncio
import re
import unicodedata
import zipfile
from collections import deque
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

from gateway.dicomweb import dicomjson as dj
from gateway.dicomweb.dicomjson import DicomJson
from gateway.dicomweb.instances import AS_STORED, SinglePart
from gateway.dicomweb.upstream import Retrieved, Upstream
from gateway.errors import UpstreamBadResponse
from gateway.records.access import CHECK_FIELDS, Visibility

_LISTED = ("SeriesInstanceUID", "SOPInstanceUID", "InstanceNumber", "SeriesNumber", "Modality")
FIELDS = tuple(dict.fromkeys((*CHECK_FIELDS, *_LISTED, "StudyDate", "StudyDescription")))
UNSAFE = re.compile(r"[^A-Za-z0-9]+")
# Instances requested ahead of the one being copied. One hides the round trip; four
# were no faster on 2 cores (bench/share_download.py), and each holds a connection.
AHEAD = 1
# Sorts unnumbered series and instances after the numbered ones.
LAST = 1 << 31


@dataclass
class _Study:
    uid: str
    folder: str
    date: str | None
    description: str | None
    instances: list[DicomJson]


class _Sink:
    """A write-only file with no tell() or seek(): zipfile then writes data
    descriptors after each member instead of seeking back to patch headers."""

    def __init__(self) -> None:
        self._pieces: list[bytes] = []

    def write(self, data: bytes) -> int:
        self._pieces.append(bytes(data))
        return len(data)

    def flush(self) -> None: ...

    def close(self) -> None: ...

    def drain(self) -> bytes:
        drained = b"".join(self._pieces)
        self._pieces.clear()
        return drained


async def study_archive(
    upstream: Upstream, study_uids: Sequence[str], visibility: Visibility
) -> AsyncIterator[bytes]:
    """ZIP bytes of every instance of the given studies, as Part 10 files, streamed."""
    studies: list[_Study] = []
    for uid in dict.fromkeys(study_uids):
        instances = await _visible_instances(upstream, uid, visibility)
        if instances:
            date = next((d for i in instances if (d := dj.text(i, "StudyDate"))), None)
            described = next((d for i in instances if (d := dj.text(i, "StudyDescription"))), None)
            date = date if date and re.fullmatch(r"[0-9]{8}", date) else None
            folder = f"{len(studies) + 1:02d}_{date or 'undated'}_{_slug(described, 'study')}"
            studies.append(_Study(uid, folder, date, described, instances))

    sink = _Sink()
    members = [(study, item) for study in studies for item in study.instances]
    # The next instance is requested while this one streams, so its round trip to the
    # archive overlaps the copy. An unread answer waits in its socket's flow-controlled
    # buffers, not here: memory stays about one chunk.
    upcoming: deque[asyncio.Task[Retrieved]] = deque(
        _request(upstream, *member) for member in members[:AHEAD]
    )
    try:
        with zipfile.ZipFile(sink, "w", compression=zipfile.ZIP_STORED) as zf:
            zf.writestr("README.txt", _readme(studies))
            yield sink.drain()
            used: set[str] = set()
            for index, (study, item) in enumerate(members):
                retrieved = await upcoming.popleft()
                if index + AHEAD < len(members):
                    upcoming.append(_request(upstream, *members[index + AHEAD]))
                name = _unique(_member_name(study.folder, item), used)
                try:
                    body = SinglePart(retrieved.media_type)
                    with zf.open(name, "w", force_zip64=True) as member:
                        async for chunk in retrieved.chunks:
                            for piece in body.feed(chunk):
                                member.write(piece)
                            if out := sink.drain():
                                yield out
                        body.finish()
                finally:
                    await retrieved.close()
                yield sink.drain()  # the member's data descriptor
        yield sink.drain()  # the central directory
    finally:
        for task in upcoming:
            await _abandon(task)


def _request(upstream: Upstream, study: _Study, item: DicomJson) -> asyncio.Task[Retrieved]:
    series, instance = (dj.text(item, k) for k in ("SeriesInstanceUID", "SOPInstanceUID"))
    path = f"studies/{study.uid}/series/{series}/instances/{instance}"
    return asyncio.ensure_future(upstream.retrieve(path, AS_STORED))


async def _abandon(task: asyncio.Task[Retrieved]) -> None:
    """A request made ahead that will not be read (the download stopped): release it."""
    if task.cancel():
        return  # it will not complete, so there is nothing to release
    if not task.cancelled() and task.exception() is None:
        await task.result().close()


async def _visible_instances(
    upstream: Upstream, uid: str, visibility: Visibility
) -> list[DicomJson]:
    found: dict[str, DicomJson] = {}
    for filters in visibility.narrow({"StudyInstanceUID": uid}):
        for item in await upstream.search_instances(filters, FIELDS):
            if dj.text(item, "StudyInstanceUID") != uid or not visibility.permits(item):
                continue
            series, instance = dj.text(item, "SeriesInstanceUID"), dj.text(item, "SOPInstanceUID")
            # These go into a WADO-RS path: anything but a UID could point elsewhere.
            if not (series and instance and dj.is_uid(series) and dj.is_uid(instance)):
                raise UpstreamBadResponse("The archive listed an instance without valid UIDs.")
            found.setdefault(instance, item)
    return sorted(found.values(), key=_order)


def _order(item: DicomJson) -> tuple[int, str, int, str]:
    series, instance = dj.integer(item, "SeriesNumber"), dj.integer(item, "InstanceNumber")
    return (
        LAST if series is None else series,
        dj.text(item, "SeriesInstanceUID") or "",
        LAST if instance is None else instance,
        dj.text(item, "SOPInstanceUID") or "",
    )


def _member_name(folder: str, item: DicomJson) -> str:
    series = max(dj.integer(item, "SeriesNumber") or 0, 0)
    instance = max(dj.integer(item, "InstanceNumber") or 0, 0)
    modality = _slug(dj.text(item, "Modality"), "OT").upper()
    suffix = (dj.text(item, "SOPInstanceUID") or "").replace(".", "")[-8:]
    return f"{folder}/{series:03d}_{modality}/{instance:05d}_{suffix}.dcm"


def _unique(name: str, used: set[str]) -> str:
    # Two series may share a number and modality, and short UID suffixes may collide.
    stem, candidate, n = name.removesuffix(".dcm"), name, 1
    while candidate in used:
        n += 1
        candidate = f"{stem}_{n}.dcm"
    used.add(candidate)
    return candidate


def _slug(value: str | None, default: str) -> str:
    """ASCII letters, digits and dashes only: every unzip tool and file system takes it."""
    ascii_text = unicodedata.normalize("NFKD", value or "").encode("ascii", "ignore").decode()
    return UNSAFE.sub("-", ascii_text).strip("-").lower()[:40].strip("-") or default


def _readme(studies: Sequence[_Study]) -> str:
    lines = [
        "Medical images shared with you.",
        "",
        "Each .dcm file is one DICOM Part 10 file (one image or document), the standard",
        "format of medical imaging: open the folders with any DICOM viewer.",
        "",
    ]
    for study in studies:
        date = study.date or "undated"
        if study.date:
            date = f"{date[:4]}-{date[4:6]}-{date[6:]}"
        description = "".join(c for c in study.description or "" if c.isprintable()) or "Study"
        count = f"{len(study.instances)} file{'' if len(study.instances) == 1 else 's'}"
        lines.append(f"{study.folder}/  {date}  {description}  ({count})")
    if not studies:
        lines.append("No studies are included.")
    return "\n".join(lines) + "\n"
