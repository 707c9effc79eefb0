"""Whole studies as one ZIP of DICOM Part 10 files, streamed: the share-link download.

Each study's series are listed with series-level QIDO (narrowed by, and
re-checked against, the request's visibility). Each series is then fetched
with one WADO-RS request and its multipart answer split as it streams: the
first bytes of every part wait until its own header (``read_header``: its
UIDs, patient and instance number) names its ZIP member, then the rest is
copied into the member as it arrives, so memory stays around a megabyte
(``FLUSH_BYTES`` and a chunk) whatever the size of the studies. A part whose
header names another study, series or patient than the one listed, or one the
caller may not see, stops the download with an error: none of its bytes is
written.
"""

from __future__ import annotations

import asyncio
import logging
import re
import unicodedata
import zipfile
from collections import deque
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import IO

from isal import isal_zlib

from gateway.dicomweb import dicomjson as dj
from gateway.dicomweb.dicomjson import DicomJson, PatientKey, patient_key
from gateway.dicomweb.instances import AS_STORED, Parts
from gateway.dicomweb.part_header import InstanceHeader, read_header
from gateway.dicomweb.upstream import Retrieved, Upstream
from gateway.errors import UpstreamBadResponse
from gateway.records.access import CHECK_FIELDS, Visibility

logger = logging.getLogger(__name__)
_LISTED = ("SeriesInstanceUID", "SeriesNumber", "Modality", "NumberOfSeriesRelatedInstances")
FIELDS = tuple(dict.fromkeys((*CHECK_FIELDS, *_LISTED, "StudyDate", "StudyDescription")))
UNSAFE = re.compile(r"[^A-Za-z0-9]+")
# Requests made ahead of the one being copied. One hides the round trip; four were
# no faster on 2 cores (bench/share_download.py), and each holds a connection.
AHEAD = 1
# Sorts unnumbered series after the numbered ones.
LAST = 1 << 31
# The ZIP goes out in pieces of about this size, not one per upstream chunk: each write
# is a trip through the middleware, uvicorn and the socket. With 256 KiB upstream reads
# (http_upstream.py) it took the gateway from about 3.2 to 1.9-2.5 CPU seconds per GB
# (bench/share_download.py; the reads alone: 2.6, these writes alone: 3.0). Memory per
# download: about twice this.
FLUSH_BYTES = 512 << 10
# zipfile computes each member's CRC-32 with zlib's, which runs at 1.4-2.3 GB/s here:
# 0.4-0.7 CPU seconds per GB, a fifth of the gateway's work on a download. ISA-L's
# (python-isal) gives the same values at about 20 GB/s. zipfile has no setting for it
# but this module attribute; every ZIP the process writes or reads gets the same CRCs.
zipfile.crc32 = isal_zlib.crc32  # type: ignore[attr-defined]


@dataclass
class _Study:
    uid: str
    folder: str
    date: str | None
    description: str | None
    series: list[DicomJson]  # the listed series the caller may see, in ZIP order

    @property
    def count(self) -> int | None:
        """How many instances its series hold, when the archive said for each."""
        counts = [dj.integer(s, "NumberOfSeriesRelatedInstances") for s in self.series]
        return None if None in counts else sum(c or 0 for c in counts)


@dataclass(frozen=True)
class _Fetch:
    """One WADO-RS request of the download: a series, and whose its parts must be."""

    study: str
    series: str
    patient: PatientKey | None  # as listed (and permitted)
    folder: str  # where its members go: "01_20240102_ct-chest/002_CT"

    @property
    def path(self) -> str:
        return f"studies/{self.study}/series/{self.series}"


@dataclass
class _Names:
    """The members written so far, by name and by SOP Instance UID."""

    used: set[str] = field(default_factory=set)
    copied: set[str] = field(default_factory=set)


class _Sink:
    """A write-only file with no tell() or seek(): zipfile then writes data
    descriptors after each member instead of seeking back to patch headers."""

    def __init__(self) -> None:
        self._pieces: list[bytes | memoryview] = []
        self._size = 0

    def write(self, data: bytes | bytearray | memoryview) -> int:
        # Views of the upstream's chunks are kept as they are, not copied: those chunks
        # never change. Only a bytearray (a header gathered from pieces) is copied.
        self._pieces.append(bytes(data) if isinstance(data, bytearray) else data)
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
        series = await _visible_series(upstream, uid, visibility)
        if series:
            date = next((d for s in series if (d := dj.text(s, "StudyDate"))), None)
            described = next((d for s in series if (d := dj.text(s, "StudyDescription"))), None)
            date = date if date and re.fullmatch(r"[0-9]{8}", date) else None
            folder = f"{len(studies) + 1:02d}_{date or 'undated'}_{_slug(described, 'study')}"
            studies.append(_Study(uid, folder, date, described, series))

    sink, names = _Sink(), _Names()
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
                splitter = _Splitter(zf, fetch, names, visibility)
                try:
                    # Closed here, not by the garbage collector: a download that stops
                    # must close its member before the ZIP closes.
                    async with aclosing(_copy_series(sink, retrieved, splitter)) as copied:
                        async for out in copied:
                            yield out
                finally:
                    await retrieved.close()
        yield sink.drain()  # the central directory
    finally:
        for task in upcoming:
            await _abandon(task)


def _plan(studies: Sequence[_Study]) -> list[_Fetch]:
    """One request per series, study by study, series by series."""
    return [
        _Fetch(
            study=study.uid,
            series=dj.text(item, "SeriesInstanceUID") or "",
            patient=_normal(patient_key(item)),
            folder=f"{study.folder}/{_series_folder(item)}",
        )
        for study in studies
        for item in study.series
    ]


async def _copy_series(
    sink: _Sink, retrieved: Retrieved, splitter: _Splitter
) -> AsyncGenerator[bytes, None]:
    """Each part of a series' answer into the member its header names, as it streams."""
    parts = Parts(retrieved.media_type)
    try:
        async for chunk in retrieved.chunks:
            for piece in parts.feed(chunk):
                splitter.feed(piece)
            if sink.full():
                yield sink.drain()
        parts.finish()
    finally:
        splitter.close()
    if sink.full():
        yield sink.drain()


class _Splitter:
    """The parts of a series' answer into their ZIP members.

    Only the first bytes of a part (its header, a few kilobytes) wait here until
    they name the part; the rest goes straight into the member. A part of another
    study, series or patient raises before any of it is written; a second copy of
    an instance is dropped.
    """

    def __init__(
        self, zf: zipfile.ZipFile, fetch: _Fetch, names: _Names, visibility: Visibility
    ) -> None:
        self._zf, self._fetch, self._names, self._visibility = zf, fetch, names, visibility
        self._head: memoryview | bytearray = memoryview(b"")
        self._member: IO[bytes] | None = None
        self._dropping = False

    def feed(self, piece: memoryview | None) -> None:
        """A piece of the current part's body, or None where the part ends."""
        if self._member is not None and piece is not None:
            self._member.write(piece)
            return
        if not self._dropping and self._member is None:
            if piece is not None:
                self._gather(piece)
            self._name(complete=piece is None)
        if piece is None:
            self.close()
            self._dropping = False

    def _gather(self, piece: memoryview) -> None:
        if not self._head:
            self._head = piece  # most often the whole header: kept, not copied
        elif isinstance(self._head, bytearray):
            self._head += piece
        else:
            self._head = bytearray(self._head) + piece

    def _name(self, complete: bool) -> None:
        header = read_header(self._head, complete)
        if header is None:
            return  # not enough of the part yet
        self._check(header)
        if header.sop_instance in self._names.copied:
            self._dropping = True
        else:
            self._names.copied.add(header.sop_instance)
            self._member = self._zf.open(self._member_name(header), "w", force_zip64=True)
            self._member.write(self._head)
        self._head = memoryview(b"")

    def _check(self, header: InstanceHeader) -> None:
        fetch = self._fetch
        if (
            header.study != fetch.study
            or header.series != fetch.series
            or _normal(header.patient) != fetch.patient
            or not self._visibility.permits(header.as_json())
        ):
            logger.error(
                "the image archive answered %s with instance %s of another study, series "
                "or patient; the download stops",
                fetch.path,
                header.sop_instance,
            )
            raise UpstreamBadResponse("The archive sent an instance of another study or patient.")

    def _member_name(self, header: InstanceHeader) -> str:
        number = max(header.number or 0, 0)
        suffix = header.sop_instance.replace(".", "")[-8:]
        return _unique(f"{self._fetch.folder}/{number:05d}_{suffix}.dcm", self._names.used)

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


async def _visible_series(upstream: Upstream, uid: str, visibility: Visibility) -> list[DicomJson]:
    """The study's series the caller may see, in ZIP order."""
    found: dict[str, DicomJson] = {}
    for filters in visibility.narrow({"StudyInstanceUID": uid}):
        for item in await upstream.search_series(filters, FIELDS):
            if dj.text(item, "StudyInstanceUID") != uid or not visibility.permits(item):
                continue
            # It goes into a WADO-RS path: anything but a UID could point elsewhere.
            series = dj.text(item, "SeriesInstanceUID")
            if not (series and dj.is_uid(series)):
                raise UpstreamBadResponse("The archive listed a series without a valid UID.")
            found.setdefault(series, item)
    return sorted(found.values(), key=_order)


def _order(item: DicomJson) -> tuple[int, str]:
    number = dj.integer(item, "SeriesNumber")
    return (LAST if number is None else number, dj.text(item, "SeriesInstanceUID") or "")


def _series_folder(item: DicomJson) -> str:
    number = max(dj.integer(item, "SeriesNumber") or 0, 0)
    return f"{number:03d}_{_slug(dj.text(item, 'Modality'), 'OT').upper()}"


def _normal(key: PatientKey | None) -> PatientKey | None:
    """Leading and trailing spaces of a PatientID or issuer carry no meaning (LO, PS3.5)."""
    return None if key is None else (key[0].strip(), key[1].strip())


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
        count = "" if study.count is None else f"  ({study.count} file{'s' * (study.count != 1)})"
        lines.append(f"{study.folder}/  {date}  {description}{count}")
    if not studies:
        lines.append("No studies are included.")
    return "\n".join(lines) + "\n"
