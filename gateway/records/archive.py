"""Whole studies as one ZIP of DICOM Part 10 files, streamed: the share-link download.

Instances are listed with instance-level QIDO (narrowed by, and re-checked
against, the request's visibility). Each series is then fetched with one
WADO-RS request and its multipart answer split as it streams: every part is
named by the SOP Instance UID in its file meta and copied into its ZIP member
as its bytes arrive, so memory stays around a megabyte (``FLUSH_BYTES`` and a
chunk) whatever the size of the studies. Only the instances listed (and
permitted) go into the ZIP; a part the listing did not name is dropped. A
series in which the listing found instances the caller may not see is fetched
instance by instance instead, so their bytes never reach the gateway; so is a
series of one instance.
"""

from __future__ import annotations

import asyncio
import re
import unicodedata
import zipfile
from collections import deque
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from contextlib import aclosing
from dataclasses import dataclass, field
from itertools import groupby
from typing import IO

from gateway.dicomweb import dicomjson as dj
from gateway.dicomweb.dicomjson import DicomJson
from gateway.dicomweb.instances import AS_STORED, Parts, SinglePart, named_instance
from gateway.dicomweb.upstream import Retrieved, Upstream
from gateway.errors import NotFound, UpstreamBadResponse
from gateway.records.access import CHECK_FIELDS, Visibility

_LISTED = ("SeriesInstanceUID", "SOPInstanceUID", "InstanceNumber", "SeriesNumber", "Modality")
FIELDS = tuple(dict.fromkeys((*CHECK_FIELDS, *_LISTED, "StudyDate", "StudyDescription")))
UNSAFE = re.compile(r"[^A-Za-z0-9]+")
# Requests made ahead of the one being copied. One hides the round trip; four were
# no faster on 2 cores (bench/share_download.py), and each holds a connection.
AHEAD = 1
# Sorts unnumbered series and instances after the numbered ones.
LAST = 1 << 31
# The ZIP goes out in pieces of about this size, not one per upstream chunk: each write
# is a trip through the middleware, uvicorn and the socket. With 256 KiB upstream reads
# (http_upstream.py) it took the gateway from about 3.2 to 1.9-2.5 CPU seconds per GB
# (bench/share_download.py; the reads alone: 2.6, these writes alone: 3.0). Memory per
# download: about twice this.
FLUSH_BYTES = 512 << 10


@dataclass
class _Study:
    uid: str
    folder: str
    date: str | None
    description: str | None
    instances: list[DicomJson]
    mixed: set[str] = field(default_factory=set)  # series with instances the caller may not see


@dataclass(frozen=True)
class _Fetch:
    """One WADO-RS request of the download, and the ZIP members its answer fills."""

    path: str
    members: dict[str, str]  # SOP Instance UID -> member name, in listing order
    series: bool  # a series answer (parts named by their meta), or one instance


class _Sink:
    """A write-only file with no tell() or seek(): zipfile then writes data
    descriptors after each member instead of seeking back to patch headers."""

    def __init__(self) -> None:
        self._pieces: list[bytes] = []
        self._size = 0

    def write(self, data: bytes) -> int:
        self._pieces.append(bytes(data))
        self._size += len(data)
        return len(data)

    def full(self) -> bool:
        return self._size >= max(FLUSH_BYTES, 1)

    def flush(self) -> None: ...

    def close(self) -> None: ...

    def drain(self) -> bytes:
        drained = b"".join(self._pieces)
        self._pieces.clear()
        self._size = 0
        return drained


async def study_archive(
    upstream: Upstream, study_uids: Sequence[str], visibility: Visibility
) -> AsyncIterator[bytes]:
    """ZIP bytes of every instance of the given studies, as Part 10 files, streamed."""
    studies: list[_Study] = []
    for uid in dict.fromkeys(study_uids):
        instances, mixed = await _visible_instances(upstream, uid, visibility)
        if instances:
            date = next((d for i in instances if (d := dj.text(i, "StudyDate"))), None)
            described = next((d for i in instances if (d := dj.text(i, "StudyDescription"))), None)
            date = date if date and re.fullmatch(r"[0-9]{8}", date) else None
            folder = f"{len(studies) + 1:02d}_{date or 'undated'}_{_slug(described, 'study')}"
            studies.append(_Study(uid, folder, date, described, instances, mixed))

    sink = _Sink()
    fetches = _plan(studies)
    # The next request is made while this one streams, so its round trip to the
    # archive overlaps the copy. An unread answer waits in its socket's flow-controlled
    # buffers, not here.
    upcoming: deque[asyncio.Task[Retrieved]] = deque(
        _request(upstream, fetch) for fetch in fetches[:AHEAD]
    )
    try:
        with zipfile.ZipFile(sink, "w", compression=zipfile.ZIP_STORED) as zf:
            zf.writestr("README.txt", _readme(studies))
            yield sink.drain()
            for index, fetch in enumerate(fetches):
                retrieved = await upcoming.popleft()
                if index + AHEAD < len(fetches):
                    upcoming.append(_request(upstream, fetches[index + AHEAD]))
                copy = _copy_series if fetch.series else _copy_instance
                try:
                    # Closed here, not by the garbage collector: a download that stops
                    # must close its member before the ZIP closes.
                    async with aclosing(copy(zf, sink, retrieved, fetch.members)) as copied:
                        async for out in copied:
                            yield out
                finally:
                    await retrieved.close()
        yield sink.drain()  # the central directory
    finally:
        for task in upcoming:
            await _abandon(task)


def _plan(studies: Sequence[_Study]) -> list[_Fetch]:
    """One request per series, named members in listing order (as the names always were)."""
    used: set[str] = set()
    fetches: list[_Fetch] = []
    for study in studies:
        for series, items in groupby(study.instances, key=_series_of):
            members = {
                dj.text(item, "SOPInstanceUID") or "": _unique(
                    _member_name(study.folder, item), used
                )
                for item in items
            }
            path = f"studies/{study.uid}/series/{series}"
            if len(members) > 1 and series not in study.mixed:
                fetches.append(_Fetch(path, members, series=True))
            else:
                fetches.extend(
                    _Fetch(f"{path}/instances/{uid}", {uid: name}, series=False)
                    for uid, name in members.items()
                )
    return fetches


async def _copy_instance(
    zf: zipfile.ZipFile, sink: _Sink, retrieved: Retrieved, members: dict[str, str]
) -> AsyncGenerator[bytes, None]:
    """The one part of an instance's answer into its member."""
    (name,) = members.values()
    body = SinglePart(retrieved.media_type)
    with zf.open(name, "w", force_zip64=True) as member:
        async for chunk in retrieved.chunks:
            for piece in body.feed(chunk):
                member.write(piece)
            if sink.full():
                yield sink.drain()
        body.finish()
    if sink.full():
        yield sink.drain()  # the member's data descriptor


async def _copy_series(
    zf: zipfile.ZipFile, sink: _Sink, retrieved: Retrieved, members: dict[str, str]
) -> AsyncGenerator[bytes, None]:
    """Each part of a series' answer into the member its file meta names, as it streams."""
    parts, splitter = Parts(retrieved.media_type), _Splitter(zf, members)
    try:
        async for chunk in retrieved.chunks:
            for piece in parts.feed(chunk):
                splitter.feed(piece)
            if sink.full():
                yield sink.drain()
        parts.finish()
    finally:
        splitter.close()
    if missing := members.keys() - splitter.copied:
        raise NotFound(f"The archive no longer holds {len(missing)} of the listed instances.")
    if sink.full():
        yield sink.drain()


class _Splitter:
    """The parts of a series' answer into their ZIP members.

    Only the first bytes of a part (its file meta, a few hundred bytes) wait here
    until the part is named; the rest goes straight into the member. A part not
    in ``members`` (stored since the listing, or one the caller may not see) and a
    second copy of one are dropped.
    """

    def __init__(self, zf: zipfile.ZipFile, members: dict[str, str]) -> None:
        self._zf, self._members = zf, members
        self._head = bytearray()
        self._member: IO[bytes] | None = None
        self._dropping = False
        self.copied: set[str] = set()

    def feed(self, piece: bytes | None) -> None:
        """A piece of the current part's body, or None where the part ends."""
        if self._member is not None and piece is not None:
            self._member.write(piece)
            return
        if not self._dropping and self._member is None:
            if piece is not None:
                self._head += piece
            self._name(complete=piece is None)
        if piece is None:
            self.close()
            self._dropping = False

    def _name(self, complete: bool) -> None:
        uid = named_instance(self._head, complete)
        if uid is None:
            return  # not enough of the part yet
        name = self._members.get(uid)
        if name is None or uid in self.copied:
            self._dropping = True
        else:
            self.copied.add(uid)
            self._member = self._zf.open(name, "w", force_zip64=True)
            self._member.write(self._head)
        self._head = bytearray()

    def close(self) -> None:
        """Close the member being written (its data descriptor goes to the sink)."""
        if self._member is not None:
            self._member.close()
            self._member = None


def _request(upstream: Upstream, fetch: _Fetch) -> asyncio.Task[Retrieved]:
    return asyncio.ensure_future(upstream.retrieve(fetch.path, AS_STORED))


async def _abandon(task: asyncio.Task[Retrieved]) -> None:
    """A request made ahead that will not be read (the download stopped): release it."""
    if task.cancel():
        return  # it will not complete, so there is nothing to release
    if not task.cancelled() and task.exception() is None:
        await task.result().close()


async def _visible_instances(
    upstream: Upstream, uid: str, visibility: Visibility
) -> tuple[list[DicomJson], set[str]]:
    """The study's instances the caller may see, in ZIP order; and the series that
    also hold instances the caller may not see."""
    found: dict[str, DicomJson] = {}
    mixed: set[str] = set()
    for filters in visibility.narrow({"StudyInstanceUID": uid}):
        for item in await upstream.search_instances(filters, FIELDS):
            if dj.text(item, "StudyInstanceUID") != uid:
                continue
            series, instance = dj.text(item, "SeriesInstanceUID"), dj.text(item, "SOPInstanceUID")
            if not visibility.permits(item):
                mixed.add(series or "")
                continue
            # These go into a WADO-RS path: anything but a UID could point elsewhere.
            if not (series and instance and dj.is_uid(series) and dj.is_uid(instance)):
                raise UpstreamBadResponse("The archive listed an instance without valid UIDs.")
            found.setdefault(instance, item)
    return sorted(found.values(), key=_order), mixed


def _series_of(item: DicomJson) -> str:
    return dj.text(item, "SeriesInstanceUID") or ""


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
