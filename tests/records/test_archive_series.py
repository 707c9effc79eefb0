"""The share ZIP lists series, asks for each once and splits the answer as it streams
(issue 12).

One series-level QIDO per study, one WADO-RS request per series, always in any
transfer syntax; each part named by its own header (UIDs, patient, instance
number), whatever its transfer syntax and however the answer is chunked; a
part of another study, series or patient stops the download before any of it
is written; an answer that ends early fails the download; memory stays about
one chunk.
"""

from __future__ import annotations

import asyncio
import logging
import socketserver
import threading
import tracemalloc
import warnings
import zipfile
import zlib
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from io import BytesIO
from pathlib import Path

import orjson
import pytest
from pydicom import dcmread
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    generate_uid,
)

from fixtures.generate import BENCH_PATIENT_ID
from gateway.dicomweb import dicomjson as dj
from gateway.dicomweb.dicomjson import DicomJson
from gateway.dicomweb.file_store import FileStoreUpstream
from gateway.dicomweb.http_upstream import HttpUpstream
from gateway.dicomweb.part_header import MAX_HEADER_BYTES
from gateway.dicomweb.upstream import Retrieved, Upstream
from gateway.errors import UpstreamBadResponse
from gateway.records import archive as zip_archive
from gateway.records.access import EVERYTHING, Visibility
from gateway.records.archive import study_archive
from tests.support.catalog import by_patient, read_catalog
from tests.support.series_pacs import SeriesPacs, part10, uid_of

BENCH = ("HOSP-A", BENCH_PATIENT_ID)
AS_STORED = "transfer-syntax=*"


class Counted:
    """An upstream whose requests are recorded: QIDO levels, and WADO-RS (path, Accept)."""

    def __init__(self, inner: Upstream) -> None:
        self.inner, self.name = inner, inner.name
        self.requests: list[tuple[str, str]] = []
        self.searches: list[str] = []

    async def search_instances(
        self, filters: Mapping[str, str], fields: Sequence[str] = (), limit: int | None = None
    ) -> list[DicomJson]:
        self.searches.append("instances")
        return await self.inner.search_instances(filters, fields, limit)

    async def search_series(
        self, filters: Mapping[str, str], fields: Sequence[str] = (), limit: int | None = None
    ) -> list[DicomJson]:
        self.searches.append("series")
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
        # zipfile's CRC-32 is ISA-L's in this process (records/archive.py): zlib's too.
        for info in archive.infolist():
            assert zlib.crc32(archive.read(info)) == info.CRC
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
    # The series are listed, one query per study; no instance is.
    assert counted.searches == ["series"] * len(uids)
    series = {s for f in studies for s in f.series}
    assert len(counted.requests) == len(series)
    assert all(AS_STORED in accept for _, accept in counted.requests)
    assert {path.split("/")[3] for path, _ in counted.requests} == series
    assert all(path.count("/") == 3 for path, _ in counted.requests)  # studies/x/series/y
    # Every member holds the instance its name says (its number, the last 8 digits of its
    # UID), in the folder of its series' number and modality.
    for name, raw in found.items():
        ds = dcmread(BytesIO(raw), stop_before_pixels=True)
        folder, leaf = name.rsplit("/", 1)
        assert leaf == f"{int(ds.get('InstanceNumber') or 0):05d}_" + (
            str(ds.SOPInstanceUID).replace(".", "")[-8:] + ".dcm"
        )
        assert folder.endswith(f"/{int(ds.get('SeriesNumber') or 0):03d}_{ds.Modality}")


# -- a store of our own: series that hold other patients' instances -------------------

ALICE, NAMESAKE, BOB = ("HOSP-A", "SPLIT-1"), ("HOSP-B", "SPLIT-1"), ("HOSP-A", "SPLIT-2")


@pytest.fixture(scope="module")
def mixed_store(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str, dict[str, bytes]]:
    """One study: series .1 is Alice's alone, series .2 is Alice's and Bob's."""
    study = generate_uid()
    s1, s2 = (f"{generate_uid()[:50]}.{n}" for n in (1, 2))
    # (Bob's number gives his pixels rows of their own: see part10.)
    layout = [(s1, 1, ALICE), (s1, 2, ALICE), (s2, 1, ALICE), (s2, 99, BOB), (s2, 3, ALICE)]
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
    return root, study, {uid_of(raw): raw for patient, raw in files if patient == BOB}


def test_a_series_with_another_patients_instance_stops_the_download(
    mixed_store, caplog: pytest.LogCaptureFixture
) -> None:  # type: ignore[no-untyped-def]
    root, study, bobs = mixed_store
    # The store lists series .2 as one patient's (whichever instance it reads first), so
    # one of its parts is of another patient than listed: the download stops there.
    for visibility in (Visibility(patients=frozenset({ALICE})), EVERYTHING):
        out: list[bytes] = []

        async def run(visibility: Visibility = visibility, out: list[bytes] = out) -> None:
            store = FileStoreUpstream(root)
            try:
                async for chunk in study_archive(store, [study], visibility):
                    out.append(chunk)
            finally:
                await store.aclose()

        caplog.clear()
        with caplog.at_level(logging.ERROR):
            try:
                asyncio.run(run())
                stopped = False
            except UpstreamBadResponse:
                stopped = True
        if visibility is EVERYTHING:
            assert stopped
        if stopped:
            assert "another study, series or patient" in caplog.text
        else:
            # Only for Alice, and only when the store listed series .2 as Bob's (then
            # it is left out, whole): never a part of Bob's.
            assert len(members(b"".join(out))) == 2
        sent = b"".join(out)
        for uid, raw in bobs.items():
            assert uid.encode() not in sent
            assert raw[-4096:] not in sent  # not a byte of his pixels either


# -- fakes for what a real store will not do: odd answers, and memory -------------------

STUDY, SERIES = "1.2.3", "1.2.3.4"


def fake_download(fake: SeriesPacs, visibility: Visibility = EVERYTHING) -> bytes:
    async def run() -> bytes:
        archive = study_archive(fake, [fake.study], visibility)  # type: ignore[arg-type]
        return b"".join([chunk async for chunk in archive])

    return asyncio.run(run())


def small_parts(count: int, size: int = 1024, syntax: str = ExplicitVRLittleEndian) -> list[bytes]:
    return [part10(STUDY, SERIES, n, ALICE, size, syntax) for n in range(1, count + 1)]


@pytest.mark.parametrize("chunk", [1, 7, 130, 1 << 20])
def test_parts_are_split_whatever_the_chunking(chunk: int) -> None:
    parts = small_parts(3)
    fake = SeriesPacs(STUDY, {SERIES: parts}, ALICE, chunk)
    found = members(fake_download(fake))
    assert sorted(found.values()) == sorted(parts)
    assert [path for path, _ in fake.requests] == ["studies/1.2.3/series/1.2.3.4"]
    assert fake.closed == 1


@pytest.mark.parametrize(
    "syntax",
    [
        ImplicitVRLittleEndian,
        ExplicitVRBigEndian,
        DeflatedExplicitVRLittleEndian,
        "1.2.840.10008.1.2.4.50",  # JPEG baseline: its data set is explicit VR little endian
        "1.2.826.0.1.3680043.8.498.1",  # a private syntax: likewise (PS3.5 10)
    ],
)
@pytest.mark.parametrize("chunk", [3, 1 << 16])
def test_every_transfer_syntax_is_named_by_its_header(syntax: str, chunk: int) -> None:
    parts = small_parts(3, syntax=syntax)
    fake = SeriesPacs(STUDY, {SERIES: [parts[0], *small_parts(1), *parts[1:]]}, ALICE, chunk)
    found = members(fake_download(fake, Visibility(patients=frozenset({ALICE}))))
    assert len(found) == 4
    by_uid = {uid_of(raw): name for name, raw in found.items()}
    for number, raw in enumerate(parts, 1):
        assert by_uid[uid_of(raw)].endswith(f"/001_CT/{number:05d}_{uid_of(raw)[-8:]}.dcm")
        assert found[by_uid[uid_of(raw)]] == raw


def test_a_long_header_is_read_whole_before_the_part_is_named() -> None:
    # 300 kB of elements before the Instance Number, in pieces of 100 kB.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom: longer than LT allows
        long = part10(STUDY, SERIES, 2, ALICE, 1024, head={"PatientComments": "x" * 300_000})
    parts = [*small_parts(1), long]
    found = members(fake_download(SeriesPacs(STUDY, {SERIES: parts}, ALICE, 100_000)))
    assert sorted(found.values()) == sorted(parts)
    assert any(name.endswith(f"/00002_{uid_of(long)[-8:]}.dcm") for name in found)


def test_a_header_longer_than_the_limit_fails() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        huge = part10(
            STUDY, SERIES, 2, ALICE, 1024, head={"PatientComments": "x" * MAX_HEADER_BYTES}
        )
    fake = SeriesPacs(STUDY, {SERIES: [huge]}, ALICE, 1 << 18)
    with pytest.raises(UpstreamBadResponse):
        fake_download(fake)
    assert fake.closed == 1


def test_repeated_parts_are_dropped() -> None:
    parts = small_parts(3)
    fake = SeriesPacs(STUDY, {SERIES: [parts[0], parts[1], parts[0], parts[2]]}, ALICE)
    assert sorted(members(fake_download(fake)).values()) == sorted(parts)


OTHER_STUDY = part10("1.2.99", SERIES, 42, ALICE, 4096)
OTHER_SERIES = part10(STUDY, "1.2.3.99", 42, ALICE, 4096)
OTHER_PATIENT = part10(STUDY, SERIES, 42, BOB, 4096)
NAMESAKE_PART = part10(STUDY, SERIES, 42, NAMESAKE, 4096)  # same PatientID, other issuer
NO_PATIENT = part10(STUDY, SERIES, 42, None, 4096)


@pytest.mark.parametrize("chunk", [5, 1 << 16])
@pytest.mark.parametrize(
    "intruder", [OTHER_STUDY, OTHER_SERIES, OTHER_PATIENT, NAMESAKE_PART, NO_PATIENT]
)
@pytest.mark.parametrize(
    "visibility", [EVERYTHING, Visibility(patients=frozenset({ALICE}), studies=frozenset({STUDY}))]
)
def test_a_part_of_another_study_series_or_patient_stops_the_download(
    intruder: bytes, visibility: Visibility, chunk: int, caplog: pytest.LogCaptureFixture
) -> None:
    parts = small_parts(2)
    fake = SeriesPacs(STUDY, {SERIES: [parts[0], intruder, parts[1]]}, ALICE, chunk)
    out: list[bytes] = []

    async def run() -> None:
        async for piece in study_archive(fake, [STUDY], visibility):  # type: ignore[arg-type]
            out.append(piece)

    with caplog.at_level(logging.ERROR), pytest.raises(UpstreamBadResponse):
        asyncio.run(run())
    assert uid_of(intruder) in caplog.text
    sent = b"".join(out)
    assert uid_of(intruder).encode() not in sent
    assert intruder[-4096:] not in sent
    assert fake.closed == 1


@pytest.mark.parametrize(
    "bad",
    [
        b"",  # an empty part
        b"\0" * 128 + b"DICM" + b"\2\0\0\0UL\4\0" + b"\xff\xff\0\0",  # meta longer than the part
        b"not a Part 10 file at all, but long enough to be read as one" * 10,
        b"\0" * 128 + b"DICM" + b"\2\0\0\0UL\4\0\x0a\0\0\0" + b"\2\0\2\0UI\2\0" + b"1\0",
        small_parts(1)[0][:500],  # cut before its Study Instance UID
    ],
)
def test_a_part_that_names_no_instance_fails(bad: bytes) -> None:
    parts = small_parts(2)
    fake = SeriesPacs(STUDY, {SERIES: [parts[0], bad, parts[1]]}, ALICE)
    with pytest.raises(UpstreamBadResponse):
        fake_download(fake)
    assert fake.closed == 1


def test_memory_stays_about_one_chunk() -> None:
    # 4 instances of 8 MiB in one series answer, in 64 KiB chunks.
    parts = [part10(STUDY, SERIES, n, ALICE, 8 << 20) for n in range(1, 5)]
    fake = SeriesPacs(STUDY, {SERIES: parts}, ALICE)
    expected = sum(len(p) for p in parts)
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
    assert total > expected
    # The fake's own parts are not traced (made before); what is traced is what the
    # archive holds: what it gathers before a write (FLUSH_BYTES) and a few chunks,
    # never an instance (8 MiB) or the series (32 MiB).
    assert peak < 3 * zip_archive.FLUSH_BYTES + (1 << 20), peak
    assert len(fake.requests) == 1


def test_it_goes_out_in_pieces_of_about_flush_bytes() -> None:
    parts = [part10(STUDY, SERIES, n, ALICE, 1 << 20) for n in range(1, 9)]
    fake = SeriesPacs(STUDY, {SERIES: parts}, ALICE, chunk=100_000)

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


class CuttingPacs(socketserver.StreamRequestHandler):
    """QIDO lists the series; its answer is whole, or cut after ``cut`` bytes in the
    way ``mode`` says."""

    mode, cut = "whole", 0

    def handle(self) -> None:
        request_line = self.rfile.readline().decode("latin-1")
        while self.rfile.readline() not in (b"\r\n", b"\n", b""):
            pass
        path = request_line.split(" ")[1].split("?")[0] if " " in request_line else "/"
        if path.endswith("/series"):  # QIDO
            body = orjson.dumps([_listed()])
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


def _listed() -> DicomJson:
    return {
        dj.tag("StudyInstanceUID"): dj.element("UI", CUT_STUDY),
        dj.tag("SeriesInstanceUID"): dj.element("UI", CUT_SERIES),
        dj.tag("Modality"): dj.element("CS", "CT"),
        dj.tag("IssuerOfPatientID"): dj.element("LO", ALICE[0]),
        dj.tag("PatientID"): dj.element("LO", ALICE[1]),
    }


@pytest.fixture(scope="module")
def cutting_pacs() -> Iterator[tuple[type[CuttingPacs], str]]:
    handler = type("Handler", (CuttingPacs,), {})
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


def test_a_whole_series_answer_over_http(cutting_pacs) -> None:  # type: ignore[no-untyped-def]
    handler, url = cutting_pacs
    handler.mode = "whole"
    found = members(_http_download(url))
    assert sorted(found.values()) == sorted(CUT_PARTS)
    assert Counter(name.rsplit("/", 1)[0] for name in found) == {"01_undated_study/000_CT": 3}


@pytest.mark.parametrize("cut", [0.2, 0.5, 0.999])
@pytest.mark.parametrize("mode", ["close", "length", "chunked"])
def test_a_series_answer_cut_short_never_ends_as_an_archive(
    cutting_pacs, mode: str, cut: float
) -> None:  # type: ignore[no-untyped-def]
    handler, url = cutting_pacs
    handler.mode, handler.cut = mode, int(len(_cut_whole()) * cut)
    with pytest.raises(UpstreamBadResponse):
        _http_download(url)


def test_a_cut_between_two_parts_fails_too(cutting_pacs) -> None:  # type: ignore[no-untyped-def]
    handler, url = cutting_pacs
    whole = _cut_whole()
    # Just after the second part's closing CRLF: two whole members, then nothing.
    second_end = whole.index(CUT_PARTS[1]) + len(CUT_PARTS[1]) + 2
    handler.mode, handler.cut = "close", second_end
    with pytest.raises(UpstreamBadResponse):
        _http_download(url)
