"""The share ZIP asks for each series once and splits the answer as it streams (issue 12).

One WADO-RS request per series (an instance-level one for a series of one
instance, or for a series in which the listing found instances the caller may
not see), always in any transfer syntax; each part named by its file meta;
parts the listing did not name are dropped; an answer that ends early or
lacks a listed instance fails the download; memory stays about one chunk.
"""

from __future__ import annotations

import asyncio
import socketserver
import threading
import tracemalloc
import zipfile
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from io import BytesIO
from pathlib import Path

import orjson
import pytest
from pydicom import Dataset, dcmread
from pydicom.dataset import FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

from fixtures.generate import BENCH_PATIENT_ID
from gateway.dicomweb import dicomjson as dj
from gateway.dicomweb.dicomjson import DicomJson
from gateway.dicomweb.file_store import FileStoreUpstream
from gateway.dicomweb.http_upstream import HttpUpstream
from gateway.dicomweb.upstream import Retrieved, Upstream
from gateway.errors import NotFound, UpstreamBadResponse
from gateway.records import archive as zip_archive
from gateway.records.access import EVERYTHING, Visibility
from gateway.records.archive import study_archive
from tests.support.catalog import by_patient, read_catalog

BENCH = ("HOSP-A", BENCH_PATIENT_ID)
AS_STORED = "transfer-syntax=*"


class Counted:
    """An upstream whose WADO-RS requests are recorded (path, Accept)."""

    def __init__(self, inner: Upstream) -> None:
        self.inner, self.name = inner, inner.name
        self.requests: list[tuple[str, str]] = []

    async def search_instances(
        self, filters: Mapping[str, str], fields: Sequence[str] = (), limit: int | None = None
    ) -> list[DicomJson]:
        return await self.inner.search_instances(filters, fields, limit)

    async def search_series(
        self, filters: Mapping[str, str], fields: Sequence[str] = (), limit: int | None = None
    ) -> list[DicomJson]:
        return await self.inner.search_series(filters, fields, limit)

    async def retrieve(self, path: str, accept: str) -> Retrieved:
        self.requests.append((path, accept))
        return await self.inner.retrieve(path, accept)

    async def aclose(self) -> None:
        await self.inner.aclose()


def download(
    make: Callable[[], Upstream], uids: Sequence[str], visibility: Visibility = EVERYTHING
) -> tuple[bytes, Counted]:
    async def run() -> tuple[bytes, Counted]:
        counted = Counted(make())
        try:
            archive = study_archive(counted, uids, visibility)  # type: ignore[arg-type]
            return b"".join([chunk async for chunk in archive]), counted
        finally:
            await counted.aclose()

    return asyncio.run(run())


def members(body: bytes) -> dict[str, bytes]:
    with zipfile.ZipFile(BytesIO(body)) as archive:
        assert archive.testzip() is None
        return {n: archive.read(n) for n in archive.namelist() if n.endswith(".dcm")}


@pytest.fixture(params=["embedded", pytest.param("orthanc", marks=pytest.mark.orthanc)])
def make_upstream(request: pytest.FixtureRequest) -> Callable[[], Upstream]:
    if request.param == "embedded":
        data_dir: Path = request.getfixturevalue("embedded_data_dir")
        return lambda: FileStoreUpstream(data_dir / "dicom")
    url = request.getfixturevalue("seeded_orthanc").dicomweb_url
    return lambda: HttpUpstream(url)


def test_one_request_per_series(make_upstream: Callable[[], Upstream], fixture_files) -> None:  # type: ignore[no-untyped-def]
    studies = by_patient(read_catalog(fixture_files))[BENCH]
    assert any(f.instances > len(f.series) for f in studies), "no series of several instances"
    uids = [f.uid for f in studies]
    body, counted = download(make_upstream, uids)
    found = members(body)
    assert len(found) == sum(f.instances for f in studies)
    series = {s for f in studies for s in f.series}
    assert len(counted.requests) == len(series)
    assert all(AS_STORED in accept for _, accept in counted.requests)
    # A series of several instances is asked for at series level, and split.
    sizes = Counter(str(dcmread(BytesIO(b)).SeriesInstanceUID) for b in found.values())
    for path, _ in counted.requests:
        asked = path.split("/")[3]
        assert asked in series
        assert path.endswith(f"/series/{asked}") == (sizes[asked] > 1), path
    # Every member holds the instance its name says (the last 8 digits of its UID).
    for name, raw in found.items():
        uid = str(dcmread(BytesIO(raw), stop_before_pixels=True).SOPInstanceUID)
        assert name.removesuffix(".dcm").split("_")[-1] == uid.replace(".", "")[-8:]


# -- a store of our own: series that hold other patients' instances -------------------


def part10(study: str, series: str, number: int, patient: tuple[str, str], size: int) -> bytes:
    ds = Dataset()
    ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
    ds.IssuerOfPatientID, ds.PatientID = patient
    ds.PatientName, ds.Modality, ds.StudyDate = "Split^Series", "CT", "20240102"
    ds.SeriesNumber, ds.InstanceNumber = int(series.rsplit(".", 1)[1]) % 100, number
    ds.Rows, ds.Columns = size // 1024, 512  # sizes are whole rows of 16-bit pixels
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.PixelData = (bytes([number % 256]) + bytes(range(255))) * (size // 256)
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    out = BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def uid_of(raw: bytes) -> str:
    return str(dcmread(BytesIO(raw), stop_before_pixels=True).SOPInstanceUID)


ALICE, NAMESAKE, BOB = ("HOSP-A", "SPLIT-1"), ("HOSP-B", "SPLIT-1"), ("HOSP-A", "SPLIT-2")


@pytest.fixture(scope="module")
def mixed_store(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str, dict[str, bytes]]:
    """One study: series .1 is Alice's and her namesake's (same PatientID, other issuer),
    series .2 is Alice's and Bob's (another PatientID), series .3 is Alice's alone."""
    study = generate_uid()
    s1, s2, s3 = (f"{generate_uid()[:50]}.{n}" for n in (1, 2, 3))
    layout = [
        (s1, 1, ALICE),
        (s1, 2, NAMESAKE),
        (s1, 3, ALICE),
        (s2, 1, ALICE),
        (s2, 2, BOB),
        (s2, 3, ALICE),
        (s3, 1, ALICE),
        (s3, 2, ALICE),
    ]
    files = [(patient, part10(study, series, n, patient, 4096)) for series, n, patient in layout]
    root = tmp_path_factory.mktemp("mixed") / "dicom"

    async def seed() -> None:
        store = FileStoreUpstream(root)
        try:
            result = await store.store_encoded([raw for _, raw in files])
        finally:
            await store.aclose()
        assert not result.failed, result.failed

    asyncio.run(seed())
    by_uid = {uid_of(raw): raw for _, raw in files}
    owners = {uid_of(raw): patient for patient, raw in files}
    return root, study, {u: r for u, r in by_uid.items() if owners[u] == ALICE}


def test_only_listed_instances_go_in_and_others_are_never_asked_for(mixed_store) -> None:  # type: ignore[no-untyped-def]
    root, study, alices = mixed_store
    alice_only = Visibility(patients=frozenset({ALICE}))
    body, counted = download(lambda: FileStoreUpstream(root), [study], alice_only)
    found = members(body)
    assert sorted(found.values()) == sorted(alices.values())
    for uid in alices:
        assert uid.encode() in body
    paths = [path for path, _ in counted.requests]
    # Series .1: the listing (narrowed by PatientID) saw the namesake's instance and
    # refused it, so its series is asked for instance by instance: never that one.
    # Series .2: Bob's instance is not even listed (another PatientID), so the series
    # is asked for whole and his part is dropped as it streams. Series .3: whole.
    series_level = sorted(p.rsplit(".", 1)[1] for p in paths if "/instances/" not in p)
    instance_level = [p for p in paths if "/instances/" in p]
    assert series_level == ["2", "3"]
    assert len(instance_level) == 2
    assert all(p.split("/instances/")[1] in alices for p in instance_level)


def test_everything_in_the_series_for_an_unrestricted_caller(mixed_store) -> None:  # type: ignore[no-untyped-def]
    root, study, _ = mixed_store
    body, counted = download(lambda: FileStoreUpstream(root), [study])
    assert len(members(body)) == 8
    assert len(counted.requests) == 3


# -- fakes for what a real store will not do: odd answers, and memory -------------------


class SeriesAnswer:
    """A study of one series whose WADO-RS answer is ``parts`` (Part 10 bytes), in
    ``chunk``-byte pieces; ``listed`` are the instances its QIDO names."""

    name = "fake"
    study, series = "1.2.3", "1.2.3.4"

    def __init__(self, listed: Sequence[str], parts: Sequence[bytes], chunk: int = 1 << 16):
        self.listed, self.parts, self.chunk = list(listed), list(parts), chunk
        self.requests: list[str] = []
        self.closed = 0

    async def search_instances(
        self, filters: Mapping[str, str], fields: Sequence[str] = (), limit: int | None = None
    ) -> list[DicomJson]:
        return [
            {
                dj.tag("StudyInstanceUID"): dj.element("UI", self.study),
                dj.tag("SeriesInstanceUID"): dj.element("UI", self.series),
                dj.tag("SOPInstanceUID"): dj.element("UI", uid),
                dj.tag("InstanceNumber"): dj.element("IS", n),
            }
            for n, uid in enumerate(self.listed, 1)
        ]

    def body(self) -> Iterator[bytes]:
        for part in self.parts:
            yield b"--b0und\r\nContent-Type: application/dicom\r\n\r\n"
            for start in range(0, len(part), self.chunk):
                yield part[start : start + self.chunk]
            yield b"\r\n"
        yield b"--b0und--\r\n"

    async def retrieve(self, path: str, accept: str) -> Retrieved:
        self.requests.append(path)
        assert AS_STORED in accept

        async def chunks() -> AsyncIterator[bytes]:
            for piece in self.body():
                yield piece

        async def close() -> None:
            self.closed += 1

        media_type = 'multipart/related; type="application/dicom"; boundary=b0und'
        return Retrieved(media_type, chunks(), close)


def fake_download(fake: SeriesAnswer) -> bytes:
    async def run() -> bytes:
        archive = study_archive(fake, [fake.study], EVERYTHING)  # type: ignore[arg-type]
        return b"".join([chunk async for chunk in archive])

    return asyncio.run(run())


def small_parts(count: int, size: int = 1024) -> list[bytes]:
    return [part10("1.2.3", "1.2.3.4", n, ALICE, size) for n in range(1, count + 1)]


@pytest.mark.parametrize("chunk", [1, 7, 130, 1 << 20])
def test_parts_are_split_whatever_the_chunking(chunk: int) -> None:
    parts = small_parts(3)
    fake = SeriesAnswer([uid_of(p) for p in parts], parts, chunk)
    found = members(fake_download(fake))
    assert sorted(found.values()) == sorted(parts)
    assert fake.requests == ["studies/1.2.3/series/1.2.3.4"]
    assert fake.closed == 1


def test_unlisted_and_repeated_parts_are_dropped() -> None:
    parts = small_parts(4)
    listed = [uid_of(p) for p in parts[:3]]
    fake = SeriesAnswer(listed, [parts[0], parts[3], parts[1], parts[0], parts[2]])
    body = fake_download(fake)
    assert sorted(members(body).values()) == sorted(parts[:3])
    assert uid_of(parts[3]).encode() not in body


def test_a_listed_instance_missing_from_the_answer_fails() -> None:
    parts = small_parts(3)
    fake = SeriesAnswer([uid_of(p) for p in parts], parts[:2])
    with pytest.raises(NotFound):
        fake_download(fake)
    assert fake.closed == 1


@pytest.mark.parametrize(
    "bad",
    [
        b"",  # an empty part
        b"\0" * 128 + b"DICM" + b"\2\0\0\0UL\4\0" + b"\xff\xff\0\0",  # meta longer than the part
        b"not a Part 10 file at all, but long enough to be read as one" * 10,
        b"\0" * 128 + b"DICM" + b"\2\0\0\0UL\4\0\x0a\0\0\0" + b"\2\0\2\0UI\2\0" + b"1\0",
    ],
)
def test_a_part_that_names_no_instance_fails(bad: bytes) -> None:
    parts = small_parts(2)
    fake = SeriesAnswer([uid_of(p) for p in parts], [parts[0], bad, parts[1]])
    with pytest.raises(UpstreamBadResponse):
        fake_download(fake)
    assert fake.closed == 1


def test_memory_stays_about_one_chunk() -> None:
    # 4 instances of 8 MiB in one series answer, in 64 KiB chunks.
    parts = [part10("1.2.3", "1.2.3.4", n, ALICE, 8 << 20) for n in range(1, 5)]
    fake = SeriesAnswer([uid_of(p) for p in parts], parts)
    expected = {uid_of(p): len(p) for p in parts}
    del parts

    async def run() -> tuple[int, int]:
        total = 0
        tracemalloc.start()
        try:
            async for chunk in study_archive(fake, [fake.study], EVERYTHING):  # type: ignore[arg-type]
                total += len(chunk)
            return total, tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()

    total, peak = asyncio.run(run())
    assert total > sum(expected.values())
    # The fake's own parts are not traced (made before); what is traced is what the
    # archive holds: what it gathers before a write (FLUSH_BYTES) and a few chunks,
    # never an instance (8 MiB) or the series (32 MiB).
    assert peak < 3 * zip_archive.FLUSH_BYTES + (1 << 20), peak
    assert len(fake.requests) == 1


def test_it_goes_out_in_pieces_of_about_flush_bytes() -> None:
    parts = [part10("1.2.3", "1.2.3.4", n, ALICE, 1 << 20) for n in range(1, 9)]
    fake = SeriesAnswer([uid_of(p) for p in parts], parts, chunk=100_000)

    async def run() -> list[int]:
        stream = study_archive(fake, [fake.study], EVERYTHING)  # type: ignore[arg-type]
        return [len(chunk) async for chunk in stream]

    sizes = asyncio.run(run())
    assert sum(sizes) > 8 << 20
    assert len(sizes) > 8  # streamed: out long before the series' answer ends
    assert max(sizes) < zip_archive.FLUSH_BYTES + 100_000 + 1024


# -- a real socket server: a series answer cut short over HTTP -------------------------

CUT_STUDY, CUT_SERIES = "1.2.826.0.1.3680043.8.498.201", "1.2.826.0.1.3680043.8.498.202"
CUT_PARTS = [part10(CUT_STUDY, CUT_SERIES, n, ALICE, 64 << 10) for n in (1, 2, 3)]
CUT_BOUNDARY = "series-boundary-5e1d"


def _cut_whole() -> bytes:
    head = f"--{CUT_BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n".encode()
    return b"".join(head + p + b"\r\n" for p in CUT_PARTS) + f"--{CUT_BOUNDARY}--\r\n".encode()


class SeriesPacs(socketserver.StreamRequestHandler):
    """QIDO lists the three instances; the series answer is whole, or cut after ``cut``
    bytes in the way ``mode`` says."""

    mode, cut = "whole", 0

    def handle(self) -> None:
        request_line = self.rfile.readline().decode("latin-1")
        while self.rfile.readline() not in (b"\r\n", b"\n", b""):
            pass
        path = request_line.split(" ")[1].split("?")[0] if " " in request_line else "/"
        if path.endswith("/instances"):  # QIDO
            body = orjson.dumps([_listed(uid_of(p), n) for n, p in enumerate(CUT_PARTS, 1)])
            self.wfile.write(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/dicom+json\r\n"
                + f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
                + body
            )
            return
        whole = _cut_whole()
        media = f'multipart/related; type="application/dicom"; boundary={CUT_BOUNDARY}'
        head = f"HTTP/1.1 200 OK\r\nContent-Type: {media}\r\nConnection: close\r\n"
        cut = whole[: self.cut]
        if self.mode == "whole":
            self.wfile.write(head.encode() + b"\r\n" + whole)
        elif self.mode == "close":
            self.wfile.write(head.encode() + b"\r\n" + cut)
        elif self.mode == "length":
            self.wfile.write(head.encode() + f"Content-Length: {len(whole)}\r\n\r\n".encode() + cut)
        else:
            chunk = f"{len(cut):x}\r\n".encode() + cut + b"\r\n"
            self.wfile.write(head.encode() + b"Transfer-Encoding: chunked\r\n\r\n" + chunk)
        self.wfile.flush()


def _listed(uid: str, number: int) -> DicomJson:
    return {
        dj.tag("StudyInstanceUID"): dj.element("UI", CUT_STUDY),
        dj.tag("SeriesInstanceUID"): dj.element("UI", CUT_SERIES),
        dj.tag("SOPInstanceUID"): dj.element("UI", uid),
        dj.tag("InstanceNumber"): dj.element("IS", number),
        dj.tag("Modality"): dj.element("CS", "CT"),
    }


@pytest.fixture(scope="module")
def series_pacs() -> Iterator[tuple[type[SeriesPacs], str]]:
    handler = type("Handler", (SeriesPacs,), {})
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield handler, f"http://127.0.0.1:{server.server_address[1]}/dicom-web"
    server.shutdown()
    server.server_close()


def _http_download(url: str) -> bytes:
    async def run() -> bytes:
        upstream = HttpUpstream(url)
        try:
            archive = study_archive(upstream, [CUT_STUDY], EVERYTHING)
            return b"".join([chunk async for chunk in archive])
        finally:
            await upstream.aclose()

    return asyncio.run(run())


def test_a_whole_series_answer_over_http(series_pacs) -> None:  # type: ignore[no-untyped-def]
    handler, url = series_pacs
    handler.mode = "whole"
    found = members(_http_download(url))
    assert sorted(found.values()) == sorted(CUT_PARTS)


@pytest.mark.parametrize("cut", [0.2, 0.5, 0.999])
@pytest.mark.parametrize("mode", ["close", "length", "chunked"])
def test_a_series_answer_cut_short_never_ends_as_an_archive(
    series_pacs, mode: str, cut: float
) -> None:  # type: ignore[no-untyped-def]
    handler, url = series_pacs
    handler.mode, handler.cut = mode, int(len(_cut_whole()) * cut)
    with pytest.raises(UpstreamBadResponse):
        _http_download(url)


def test_a_cut_between_two_parts_fails_too(series_pacs) -> None:  # type: ignore[no-untyped-def]
    handler, url = series_pacs
    whole = _cut_whole()
    # Just after the second part's closing CRLF: two whole members, then nothing.
    second_end = whole.index(CUT_PARTS[1]) + len(CUT_PARTS[1]) + 2
    handler.mode, handler.cut = "close", second_end
    with pytest.raises(UpstreamBadResponse):
        _http_download(url)
