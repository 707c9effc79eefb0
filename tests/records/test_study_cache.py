"""The study detail cache (in the database): used only while the PACS's counts still agree."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.uid import generate_uid
from starlette.testclient import TestClient

from gateway.app import create_app
from gateway.dicomweb.dicomjson import element, tag
from gateway.records.study_cache import StudyDetailCache
from gateway.store.database import Database
from gateway.store.study_index import StudyIndex
from tests.conftest import make_settings, migrate


def study(uid: str, series: int | None, instances: int | None) -> dict:
    data = {tag("StudyInstanceUID"): element("UI", uid)}
    if series is not None:
        data[tag("NumberOfStudyRelatedSeries")] = element("IS", str(series))
    if instances is not None:
        data[tag("NumberOfStudyRelatedInstances")] = element("IS", str(instances))
    return data


@pytest.fixture
def cache_on(tmp_path: Path) -> Iterator[tuple[StudyIndex, list[datetime]]]:
    """A migrated SQLite database's study index, and a clock the test moves."""
    url = f"sqlite+aiosqlite:///{tmp_path / 'cache.db'}"
    migrate(make_settings(tmp_path, database_url=url))
    database = Database(url)
    yield StudyIndex(database.sessions), [datetime(2030, 1, 1, tzinfo=UTC)]
    asyncio.run(database.dispose())


def _cache(index: StudyIndex, now: list[datetime], ttl: float, size: int) -> StudyDetailCache:
    return StudyDetailCache(index, ttl, size, lambda: now[0])


def test_hit_only_while_counts_agree(cache_on) -> None:  # type: ignore[no-untyped-def]
    index, now = cache_on
    cache = _cache(index, now, ttl=60, size=10)

    async def run() -> None:
        await cache.put_many([(study("1.2", 1, 3), [{"i": 1}])])
        assert (await cache.get_many([study("1.2", 1, 3)]))["1.2"].instances == [{"i": 1}]
        assert await cache.get_many([study("1.2", 1, 4)]) == {}  # an instance arrived

    asyncio.run(run())


def test_no_counts_means_no_caching_and_ttl_and_size_bound(cache_on) -> None:  # type: ignore[no-untyped-def]
    index, now = cache_on
    cache = _cache(index, now, ttl=60, size=2)

    async def run() -> None:
        await cache.put_many([(study("1.1", None, None), [])])
        assert await cache.get_many([study("1.1", None, None)]) == {}
        for uid in ("1.3", "1.4", "1.5"):
            now[0] += timedelta(seconds=1)
            await cache.put_many([(study(uid, 1, 1), [])])
        assert await cache.get_many([study("1.3", 1, 1)]) == {}  # evicted, the oldest stored
        assert set(await cache.get_many([study("1.4", 1, 1), study("1.5", 1, 1)])) == {
            "1.4",
            "1.5",
        }
        now[0] += timedelta(seconds=61)
        assert await cache.get_many([study("1.5", 1, 1)]) == {}

    asyncio.run(run())
    assert not _cache(index, now, ttl=0, size=5).enabled


def test_a_new_instance_shows_on_the_next_search(tmp_path: Path, fixture_files: list[Path]) -> None:
    settings = make_settings(tmp_path)
    migrate(settings)
    source = dcmread(fixture_files[0])
    (settings.dicom_dir).mkdir(parents=True)
    source.save_as(settings.dicom_dir / "first.dcm", enforce_file_format=True)
    uid = str(source.StudyInstanceUID)
    with TestClient(create_app(settings)) as client:
        before = client.get(f"/fhir/ImagingStudy?_id={uid}").json()["entry"][0]["resource"]
        assert before["numberOfInstances"] == 1
        client.get(f"/fhir/ImagingStudy?_id={uid}")  # now cached
        extra = dcmread(fixture_files[0])
        extra.SOPInstanceUID = extra.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        extra.InstanceNumber = 99
        extra.save_as(settings.dicom_dir / "second.dcm", enforce_file_format=True)
        time.sleep(2.1)  # the embedded store looks at its folder again after 2 s
        after = client.get(f"/fhir/ImagingStudy?_id={uid}").json()["entry"][0]["resource"]
        assert after["numberOfInstances"] == 2
        numbers = [i["number"] for s in after["series"] for i in s["instance"]]
        assert 99 in numbers
