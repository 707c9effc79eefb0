"""The embedded store: a folder of DICOM Part 10 files, for one machine and the demo.

Writes go through dicomweb-client's ``DICOMfileClient``. Its sqlite index
only knows a handful of attributes (no StudyDescription, no time zone, no
date ranges), so QIDO here is answered from a header index of our own and
the PS3.4 matcher of :mod:`gateway.dicomweb.matching`.

``DICOMfileClient`` keeps a sqlite connection that belongs to the thread that
opened it, so every call into it, and the header index, runs on one
dedicated worker thread; the event loop never blocks on the disk.
"""

from __future__ import annotations

import asyncio
import logging
import re
import secrets
import time
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path
from typing import TypeVar

import anyio
import orjson
from dicomweb_client.file import DICOMfileClient
from pydicom import Dataset, dcmread
from pydicom.errors import InvalidDicomError

from gateway.dicomweb import bulkdata, dicomjson
from gateway.dicomweb.bulkdata import requested_transfer_syntax
from gateway.dicomweb.dicomjson import (
    INSTANCE_FIELDS,
    SERIES_FIELDS,
    STUDY_FIELDS,
    DicomJson,
    element,
    tag,
)
from gateway.dicomweb.matching import matches
from gateway.dicomweb.upstream import Retrieved, StoreResult
from gateway.errors import NotAcceptable, NotFound, UpstreamUnavailable

logger = logging.getLogger(__name__)
T = TypeVar("T")

BINARY_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "UN"})
# External tools may drop files into the folder; look again at most this often.
RESCAN_SECONDS = 2.0
CHUNK = 1 << 20
DEFER_BYTES = 64 << 10
TRANSFER_SYNTAX = "00020010"


@dataclass
class _IndexedFile:
    mtime_ns: int
    size: int
    header: DicomJson
    # (tag, VR) of the top-level binary elements, which metadata names by BulkDataURI.
    bulk: tuple[tuple[str, str], ...] = ()


def header_json(dataset: Dataset) -> DicomJson:
    """The dataset as DICOM JSON without bulk data (pixels, overlays, blobs)."""
    trimmed = Dataset()
    for data_element in dataset:
        if data_element.VR not in BINARY_VRS:
            trimmed.add(data_element)
    return trimmed.to_json_dict(bulk_data_threshold=1 << 30, suppress_invalid_tags=True)


def bulk_elements(dataset: Dataset) -> tuple[tuple[str, str], ...]:
    return tuple(
        (f"{element.tag:08X}", str(element.VR)) for element in dataset if element.VR in BINARY_VRS
    )


class FileStoreUpstream:
    name = "embedded"

    def __init__(self, root: Path) -> None:
        self.root = root.resolve()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="file-store")
        self._client: DICOMfileClient | None = None
        self._files: dict[Path, _IndexedFile] = {}
        self._scanned_at = 0.0
        self._stale = True

    async def _run(self, function: Callable[[], T]) -> T:
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._executor, function)
        except OSError as exc:
            logger.error("embedded store failed: %s", exc)
            raise UpstreamUnavailable("The embedded image store cannot be read.") from None

    # -- header index (worker thread only) -------------------------------

    def _file_client(self) -> DICOMfileClient:
        if self._client is None:
            self.root.mkdir(parents=True, exist_ok=True)
            self._client = DICOMfileClient(url=self.root.as_uri(), update_db=True)
        return self._client

    def _refresh(self) -> None:
        if not self._stale and time.monotonic() - self._scanned_at < RESCAN_SECONDS:
            return
        self.root.mkdir(parents=True, exist_ok=True)
        seen: dict[Path, _IndexedFile] = {}
        for path in sorted(self.root.rglob("*")):
            if path.name.startswith(".") or not path.is_file():
                continue
            stat = path.stat()
            known = self._files.get(path)
            if known and known.mtime_ns == stat.st_mtime_ns and known.size == stat.st_size:
                seen[path] = known
                continue
            indexed = _read_header(path, stat.st_mtime_ns, stat.st_size)
            if indexed is not None:
                seen[path] = indexed
        self._files = seen
        self._scanned_at = time.monotonic()
        self._stale = False

    def _instances(self) -> list[DicomJson]:
        self._refresh()
        return [indexed.header for indexed in self._files.values()]

    # -- QIDO --------------------------------------------------------------

    def _query(
        self,
        level: str,
        filters: Mapping[str, str],
        fields: Sequence[str],
        limit: int | None,
    ) -> list[DicomJson]:
        records = aggregate(self._instances(), level)
        wanted = {"study": STUDY_FIELDS, "series": SERIES_FIELDS, "instance": INSTANCE_FIELDS}
        everything = any(field.lower() == "all" for field in fields)
        names = [*wanted[level], *(f for f in fields if f.lower() != "all")]
        results = []
        for record in records:
            if not matches(record, filters):
                continue
            results.append(record if everything else _only_known(record, names))
            if limit is not None and len(results) >= limit:
                break
        return results

    async def search_studies(
        self, filters: Mapping[str, str], fields: Sequence[str] = (), limit: int | None = None
    ) -> list[DicomJson]:
        return await self._run(lambda: self._query("study", filters, fields, limit))

    async def search_series(
        self, filters: Mapping[str, str], fields: Sequence[str] = (), limit: int | None = None
    ) -> list[DicomJson]:
        return await self._run(lambda: self._query("series", filters, fields, limit))

    async def search_instances(
        self, filters: Mapping[str, str], fields: Sequence[str] = (), limit: int | None = None
    ) -> list[DicomJson]:
        return await self._run(lambda: self._query("instance", filters, fields, limit))

    # -- STOW --------------------------------------------------------------

    def _store(self, datasets: Sequence[Dataset]) -> StoreResult:
        result = StoreResult()
        acceptable = []
        for dataset in datasets:
            uid = str(getattr(dataset, "SOPInstanceUID", "") or "?")
            problem = _storage_problem(dataset)
            if problem:
                result.failed[uid] = problem
            else:
                acceptable.append(dataset)
        if acceptable:
            self._file_client().store_instances(acceptable)
            result.stored.extend(str(dataset.SOPInstanceUID) for dataset in acceptable)
            self._stale = True
        return result

    async def store_instances(self, datasets: Sequence[Dataset]) -> StoreResult:
        return await self._run(lambda: self._store(datasets))

    async def store_encoded(self, parts: Sequence[bytes]) -> StoreResult:
        # DICOMfileClient stores datasets, so the embedded store decodes them here.
        return await self._run(lambda: self._store([dcmread(BytesIO(part)) for part in parts]))

    # -- WADO ------------------------------------------------------------------

    def _locate(self, uids: Sequence[str]) -> list[tuple[Path, _IndexedFile]]:
        self._refresh()
        keys = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")
        found = [
            (path, indexed)
            for path, indexed in self._files.items()
            if all(dicomjson.text(indexed.header, k) == v for k, v in zip(keys, uids, strict=False))
        ]
        return sorted(found, key=lambda item: _instance_sort_key(item[1].header))

    async def retrieve(self, path: str, accept: str) -> Retrieved:
        parts = path.split("/")
        # studies/{uid}[/series/{uid}[/instances/{uid}]] then metadata, frames/{list} or bulk/{tags}
        uids = parts[1:6:2]
        resource = parts[len(uids) * 2 :]
        located = await self._run(lambda: self._locate(uids))
        if not located:
            raise NotFound("Not found in the embedded store.")
        if resource == ["metadata"]:
            body = orjson.dumps([_metadata(indexed) for _, indexed in located])
            return Retrieved("application/dicom+json", _once(body), _nothing)
        if resource and resource[0] in ("frames", "bulk"):
            return await self._run(lambda: _pixel_parts(located[0][0], resource, accept))
        wanted = requested_transfer_syntax(accept)
        if wanted:
            stored = {dicomjson.text(i.header, "TransferSyntaxUID") or "" for _, i in located}
            if stored != {wanted}:
                raise NotAcceptable(
                    f"The embedded store holds these instances as {', '.join(sorted(stored))} "
                    f"and cannot transcode them to {wanted}."
                )
        boundary = secrets.token_hex(16)
        media_type = f'multipart/related; type="application/dicom"; boundary={boundary}'
        return Retrieved(media_type, _multipart([p for p, _ in located], boundary), _nothing)

    async def check(self) -> None:
        await self._run(self._file_client)

    async def aclose(self) -> None:
        self._executor.shutdown(wait=True)


async def _multipart(paths: Sequence[Path], boundary: str) -> AsyncIterator[bytes]:
    """Part after part, each file read in chunks: memory stays flat whatever the study size."""
    for path in paths:
        yield f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()
        handle = await anyio.open_file(path, "rb")
        try:
            while chunk := await handle.read(CHUNK):
                yield chunk
        finally:
            await handle.aclose()
        yield b"\r\n"
    yield f"--{boundary}--\r\n".encode()


async def _once(body: bytes) -> AsyncIterator[bytes]:
    yield body


async def _nothing() -> None:
    return None


def _metadata(indexed: _IndexedFile) -> DicomJson:
    header = {k: v for k, v in indexed.header.items() if not k.startswith("0002")}
    study, series, instance = (
        dicomjson.text(header, key) or ""
        for key in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")
    )
    for bulk_tag, vr in indexed.bulk:
        # Relative: the DICOMweb route points it at the gateway's public address.
        uri = bulkdata.bulk_path(study, series, instance, bulk_tag)
        header[bulk_tag] = {"vr": vr, "BulkDataURI": uri}
    return dict(sorted(header.items()))


def _pixel_parts(path: Path, resource: Sequence[str], accept: str) -> Retrieved:
    """Frames or one bulk data element of the file at ``path``, as a multipart body."""
    dataset = dcmread(path)
    if resource[0] == "frames":
        numbers = bulkdata.parse_frame_list(resource[1] if len(resource) > 1 else "")
        values, syntax = bulkdata.frames_of(dataset, numbers, accept)
    else:
        tag_path = "/".join(resource[1:])
        if (
            tag_path.upper() == "7FE00010"
            and bulkdata.is_encapsulated(dataset)
            and "PixelData" in dataset
        ):
            count = int(getattr(dataset, "NumberOfFrames", 1) or 1)
            values, syntax = bulkdata.frames_of(dataset, range(1, count + 1), accept)
        else:
            values, syntax = [bulkdata.element_bytes(dataset, tag_path)], ""
    part_type = "application/octet-stream" + (f"; transfer-syntax={syntax}" if syntax else "")
    boundary = secrets.token_hex(16)
    body = b"".join(
        f"--{boundary}\r\nContent-Type: {part_type}\r\n\r\n".encode() + value + b"\r\n"
        for value in values
    )
    body += f"--{boundary}--\r\n".encode()
    media_type = f'multipart/related; type="{part_type}"; boundary={boundary}'
    return Retrieved(media_type, _once(body), _nothing)


def _instance_sort_key(header: DicomJson) -> tuple[str, int, str]:
    return (
        dicomjson.text(header, "SeriesInstanceUID") or "",
        dicomjson.integer(header, "InstanceNumber") or 0,
        dicomjson.text(header, "SOPInstanceUID") or "",
    )


def _read_header(path: Path, mtime_ns: int, size: int) -> _IndexedFile | None:
    try:
        # Large values (pixels) are skipped, not read: only their tag and VR are kept.
        dataset = dcmread(path, defer_size=DEFER_BYTES)
    except (InvalidDicomError, OSError, ValueError, EOFError, AttributeError):
        logger.debug("not a DICOM file, skipped: %s", path)
        return None
    if not all(hasattr(dataset, name) for name in ("StudyInstanceUID", "SeriesInstanceUID")):
        return None
    if not hasattr(dataset, "SOPInstanceUID"):
        return None
    header = header_json(dataset)
    syntax = getattr(getattr(dataset, "file_meta", None), "TransferSyntaxUID", None)
    if syntax:
        # Kept for transfer syntax negotiation; metadata answers leave it out.
        header[TRANSFER_SYNTAX] = element("UI", str(syntax))
    return _IndexedFile(mtime_ns, size, header, bulk_elements(dataset))


def _storage_problem(dataset: Dataset) -> str | None:
    for name in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID"):
        value = str(getattr(dataset, name, "") or "")
        # UIDs become path components: anything but digits and dots is refused.
        if not dicomjson.is_uid(value):
            return f"{name} is missing or not a valid UID"
    if not getattr(dataset, "file_meta", None) or "TransferSyntaxUID" not in dataset.file_meta:
        return "no transfer syntax in the file meta information"
    return None


def aggregate(instances: Iterable[DicomJson], level: str) -> list[DicomJson]:
    """Study- or series-level records with the counts QIDO computes (PS3.18 10.6.3.3)."""
    if level == "instance":
        return list(instances)
    key_name = "StudyInstanceUID" if level == "study" else "SeriesInstanceUID"
    groups: dict[str, list[DicomJson]] = {}
    for instance in instances:
        key = dicomjson.text(instance, key_name)
        if key:
            groups.setdefault(key, []).append(instance)
    records = []
    for members in groups.values():
        record = dicomjson.merge(*members)
        count = str(len(members))
        if level == "study":
            series = {dicomjson.text(m, "SeriesInstanceUID") for m in members}
            modalities = sorted({m for m in (dicomjson.text(x, "Modality") for x in members) if m})
            record[tag("NumberOfStudyRelatedSeries")] = element("IS", str(len(series)))
            record[tag("NumberOfStudyRelatedInstances")] = element("IS", count)
            record[tag("ModalitiesInStudy")] = element("CS", *modalities)
        else:
            record[tag("NumberOfSeriesRelatedInstances")] = element("IS", count)
        records.append(record)
    return records


def _only_known(record: DicomJson, names: Sequence[str]) -> DicomJson:
    keys = set()
    for name in names:
        try:
            keys.add(tag(name))
        except KeyError:
            if re.fullmatch(r"[0-9A-Fa-f]{8}", name):
                keys.add(name.upper())
    return {key: value for key, value in record.items() if key in keys}
