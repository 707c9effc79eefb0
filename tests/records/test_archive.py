"""The streamed ZIP of whole studies, on the embedded store and on Orthanc alike."""

from __future__ import annotations

import asyncio
import zipfile
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from io import BytesIO
from pathlib import Path

import pytest
from pydicom import dcmread

from fixtures.generate import BENCH_PATIENT_ID
from gateway.dicomweb import dicomjson as dj
from gateway.dicomweb.file_store import FileStoreUpstream
from gateway.dicomweb.upstream import Retrieved, Upstream
from gateway.errors import UpstreamBadResponse
from gateway.records import archive as zip_archive
from gateway.records.access import EVERYTHING, Visibility
from gateway.records.archive import study_archive
from tests.support.catalog import StudyFacts, by_patient, read_catalog
from tests.support.series_pacs import MEDIA_TYPE, SeriesPacs, multipart, part10

MakeUpstream = Callable[[], Upstream]
BENCH = ("HOSP-A", BENCH_PATIENT_ID)


@pytest.fixture(params=["embedded", pytest.param("orthanc", marks=pytest.mark.orthanc)])
def make_upstream(request: pytest.FixtureRequest) -> MakeUpstream:
    """A factory: each asyncio.run gets its own upstream (HTTP clients are loop-bound)."""
    if request.param == "embedded":
        data_dir: Path = request.getfixturevalue("embedded_data_dir")
        return lambda: FileStoreUpstream(data_dir / "dicom")
    from gateway.dicomweb.http_upstream import HttpUpstream

    url = request.getfixturevalue("seeded_orthanc").dicomweb_url
    return lambda: HttpUpstream(url)


@pytest.fixture(scope="module")
def catalog(fixture_files: list[Path]) -> dict[str, StudyFacts]:
    return read_catalog(fixture_files)


@pytest.fixture(scope="module")
def originals(fixture_files: list[Path]) -> dict[str, Path]:
    return {str(dcmread(p, stop_before_pixels=True).SOPInstanceUID): p for p in fixture_files}


def two_studies(catalog: dict[str, StudyFacts]) -> list[str]:
    """Two multi-instance studies of the bench patient."""
    studies = [f for f in by_patient(catalog)[BENCH] if f.instances > 1]
    return [studies[0].uid, studies[1].uid]


def chunks_of(
    make: MakeUpstream, uids: Sequence[str], visibility: Visibility = EVERYTHING
) -> list[bytes]:
    async def run() -> list[bytes]:
        upstream = make()
        try:
            return [chunk async for chunk in study_archive(upstream, uids, visibility)]
        finally:
            await upstream.aclose()

    return asyncio.run(run())


def open_zip(chunks: list[bytes]) -> zipfile.ZipFile:
    archive = zipfile.ZipFile(BytesIO(b"".join(chunks)))
    assert archive.testzip() is None
    assert archive.namelist()[0] == "README.txt"
    return archive


def dcm_names(archive: zipfile.ZipFile) -> list[str]:
    return [n for n in archive.namelist() if n.endswith(".dcm")]


def qido_sop_uids(make: MakeUpstream, uids: Sequence[str]) -> set[str]:
    async def run() -> set[str]:
        upstream = make()
        try:
            found = set()
            for uid in uids:
                for item in await upstream.search_instances(
                    {"StudyInstanceUID": uid}, ["SOPInstanceUID"]
                ):
                    found.add(dj.text(item, "SOPInstanceUID") or "")
            return found
        finally:
            await upstream.aclose()

    return asyncio.run(run())


def test_two_studies_of_one_patient(make_upstream: MakeUpstream, catalog, originals) -> None:
    uids = two_studies(catalog)
    chunks = chunks_of(make_upstream, uids)
    archive = open_zip(chunks)
    datasets = {name: dcmread(BytesIO(archive.read(name))) for name in dcm_names(archive)}
    assert {str(d.SOPInstanceUID) for d in datasets.values()} == qido_sop_uids(make_upstream, uids)
    assert {str(d.StudyInstanceUID) for d in datasets.values()} == set(uids)
    with_pixels = next((n, d) for n, d in datasets.items() if "PixelData" in d)
    name, dataset = with_pixels
    assert dataset.PixelData == dcmread(originals[str(dataset.SOPInstanceUID)]).PixelData
    assert name.startswith(("01_", "02_"))
    readme = archive.read("README.txt").decode()
    assert "DICOM Part 10" in readme
    for uid in uids:
        facts = catalog[uid]
        assert str(facts.first.StudyDescription) in readme
        assert f"({facts.instances} files)" in readme
    # Members come study by study and series by series. Within a series they come in
    # the order the archive sends its answer (one request per series); their names
    # carry the instance number, so a listing of the files sorts them.
    series_keys = [(n.split("/")[0], int(d.get("SeriesNumber") or 0)) for n, d in datasets.items()]
    assert series_keys == sorted(series_keys)
    by_name = [
        (n.split("/")[0], int(d.get("SeriesNumber") or 0), int(d.get("InstanceNumber") or 0))
        for n, d in sorted(datasets.items())
    ]
    assert by_name == sorted(by_name)


def test_nothing_of_another_patient_leaks(make_upstream: MakeUpstream, catalog) -> None:
    uids = two_studies(catalog)
    # Same PatientID as a HOSP-A patient, other issuer: narrowing by PatientID alone
    # would match, so only the per-instance re-check keeps the HOSP-A studies out.
    namesake = by_patient(catalog)[("HOSP-A", "IS-1005")][0].uid
    other = Visibility(patients=frozenset({("HOSP-B", "IS-1005")}))
    archive = open_zip(chunks_of(make_upstream, [*uids, namesake], other))
    assert dcm_names(archive) == []
    assert "No studies" in archive.read("README.txt").decode()


def test_only_the_visible_study(make_upstream: MakeUpstream, catalog) -> None:
    uids = two_studies(catalog)
    only_first = Visibility(studies=frozenset({uids[0]}))
    archive = open_zip(chunks_of(make_upstream, uids, only_first))
    names = dcm_names(archive)
    assert len(names) == catalog[uids[0]].instances
    assert {str(dcmread(BytesIO(archive.read(n))).StudyInstanceUID) for n in names} == {uids[0]}


def test_unknown_and_empty_study_lists_give_a_valid_zip(make_upstream: MakeUpstream) -> None:
    assert dcm_names(open_zip(chunks_of(make_upstream, []))) == []
    assert dcm_names(open_zip(chunks_of(make_upstream, ["1.2.3.4.5.6.7"]))) == []


def test_names_are_safe_and_unique(make_upstream: MakeUpstream, catalog) -> None:
    uids = [facts.uid for facts in by_patient(catalog)[BENCH]]
    names = open_zip(chunks_of(make_upstream, uids)).namelist()
    assert len(names) == len(set(names))
    for name in names:
        assert name.isascii() and name.isprintable()
        assert not name.startswith("/") and "\\" not in name
        assert ".." not in name.split("/") and ".." not in name


def test_it_streams(make_upstream: MakeUpstream, catalog, monkeypatch) -> None:
    # Every piece goes out as soon as it is copied (the default gathers 512 KiB first,
    # more than these small studies hold: tests/records/test_archive_series.py).
    monkeypatch.setattr(zip_archive, "FLUSH_BYTES", 0)
    uid = max(by_patient(catalog)[BENCH], key=lambda f: f.instances).uid
    chunks = chunks_of(make_upstream, [uid])
    # README, then at least one piece per series' answer, then the central directory.
    assert len(chunks) > len(catalog[uid].series) + 1
    assert len(dcm_names(open_zip(chunks))) == catalog[uid].instances


# -- a fake PACS: odd answers, and requests made ahead ----------------------------------

STUDY, SERIES = "1.2.3", "1.2.3.4"


def fake_archive(fake: SeriesPacs) -> bytes:
    async def run() -> bytes:
        return b"".join([c async for c in study_archive(fake, [fake.study], EVERYTHING)])  # type: ignore[arg-type]

    return asyncio.run(run())


@pytest.mark.parametrize("chunk", [1, 5, 64, 1 << 20])
def test_part_body_is_extracted_whatever_the_chunking(chunk: int) -> None:
    # Bytes that look like the start of a boundary must stay in the body.
    tricky = bytes(range(256)) * 4 + b"\r\n--b0un" + b"\r\n-" + b"tail"
    payload = part10(STUDY, SERIES, 1, None, 512, head={"ImageComments": tricky.hex()})
    payload = payload + b"\r\n--b0un\r\n-"  # (trailing bytes after the data set, kept)
    fake = SeriesPacs(STUDY, {SERIES: [payload]}, None, chunk)
    archive = open_zip([fake_archive(fake)])
    assert [archive.read(n) for n in dcm_names(archive)] == [payload]
    assert fake.closed == 1


WHOLE = b"".join(multipart([part10(STUDY, SERIES, 1, None, 2048)]))


@pytest.mark.parametrize(
    "body",
    [
        WHOLE[:-20],  # cut before the closing boundary
        WHOLE[:200],  # cut in the part's header
        b"",
        b"not multipart at all",
        WHOLE[: WHOLE.index(b"\r\n--b0und--")] + b"\r\n--b0und\r\n\r\n\r\n--b0und--\r\n",  # empty
    ],
)
def test_a_malformed_body_raises_and_closes(body: bytes) -> None:
    fake = SeriesPacs(STUDY, {SERIES: [body]}, None)
    fake.retrieve = _raw_answer(fake, body)  # type: ignore[method-assign]
    with pytest.raises(UpstreamBadResponse):
        fake_archive(fake)
    assert fake.closed == 1


def _raw_answer(fake: SeriesPacs, body: bytes) -> Callable[[str, str], Awaitable[Retrieved]]:
    """An answer that is ``body`` as it is, not a multipart body made of it."""

    async def retrieve(path: str, accept: str) -> Retrieved:
        async def chunks() -> AsyncIterator[bytes]:
            for start in range(0, len(body), 64):
                yield body[start : start + 64]

        async def close() -> None:
            fake.closed += 1

        return Retrieved(MEDIA_TYPE, chunks(), close)

    return retrieve


def many_series(count: int) -> SeriesPacs:
    """``count`` series of one small instance each (one request each)."""
    series = {
        f"{SERIES}.{n}": [part10(STUDY, f"{SERIES}.{n}", 1, None, 512)] for n in range(1, count + 1)
    }
    return SeriesPacs(STUDY, series, None, chunk=100)


def test_requests_made_ahead_are_bounded_and_released(monkeypatch) -> None:
    monkeypatch.setattr(zip_archive, "FLUSH_BYTES", 0)  # each member goes out as it is copied
    whole = many_series(6)
    archive = open_zip([fake_archive(whole)])
    assert len(dcm_names(archive)) == 6
    assert whole.open == 0 and whole.most_open <= 2  # the one copied, and the next

    async def stop_after_first_member(fake: SeriesPacs) -> None:
        stream = study_archive(fake, [fake.study], EVERYTHING)  # type: ignore[arg-type]
        async for chunk in stream:
            if b"/00001_" in chunk:  # the first member went out
                break
        for _ in range(5):  # the network's waits: the request made ahead gets its answer
            await asyncio.sleep(0)
        assert fake.open == 2
        await stream.aclose()  # the recipient went away

    stopped = many_series(6)
    asyncio.run(stop_after_first_member(stopped))
    assert stopped.opened < 6 and stopped.open == 0
