"""The study index's change feed: Orthanc's /changes, one poller at a time across replicas."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.uid import generate_uid
from starlette.testclient import TestClient

from fixtures.generate import BENCH_PATIENT_ID
from gateway.app import create_app
from gateway.dicomweb.http_upstream import HttpUpstream
from gateway.records.index_feed import ChangeFollower
from gateway.services import Services
from gateway.store.database import Database
from gateway.store.study_index import StudyIndex
from tests.auth.test_oauth_api import Harness, bearer
from tests.conftest import make_settings, migrate
from tests.portal.support import DATABASES, Clock
from tests.records.test_study_index import BASE, MINE, SCOPES, database_url


@dataclass
class Page:
    patient_ids: set[str] = field(default_factory=set)
    study_uids: set[str] = field(default_factory=set)
    last: int = 0
    done: bool = True


class ListedChanges:
    """A change feed held in a list: what the lease and the cursor are tested with (the
    real Orthanc feed is tested below)."""

    def __init__(self) -> None:
        self.changes: list[str] = ["old-1", "old-2"]  # PatientIDs, numbered from 1
        self.asked: list[int] = []

    async def last(self) -> int:
        return len(self.changes)

    async def since(self, cursor: int, limit: int = 100) -> Page:
        self.asked.append(cursor)
        batch = self.changes[cursor : cursor + limit]
        return Page(set(batch), set(), cursor + len(batch), cursor + limit >= len(self.changes))

    async def aclose(self) -> None:
        pass


@pytest.fixture(params=DATABASES)
def index(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StudyIndex]:
    with database_url(request.param, tmp_path) as url:
        migrate(make_settings(tmp_path, database_url=url))
        database = Database(url)
        yield StudyIndex(database.sessions)
        asyncio.run(database.dispose())


def test_one_replica_polls_and_the_next_takes_over(index: StudyIndex) -> None:
    feed = ListedChanges()
    now = [datetime(2030, 1, 1, tzinfo=UTC)]
    first, second = (
        ChangeFollower("orthanc", feed, index, interval=1.0, clock=lambda: now[0]) for _ in range(2)
    )
    key = ("", "MRN-7")

    async def run() -> None:
        await index.replace(key, [], now[0], generation=0)
        assert (await index.read(key)).revalidated_at is not None
        assert await first.poll_once() == 0  # starts at the newest change
        assert await second.poll_once() is None  # the lease is the first's
        feed.changes += ["MRN-7", "MRN-8"]
        assert await first.poll_once() == 1
        assert (await index.read(key)).revalidated_at is None
        assert await index.cursor("orthanc") == 4
        now[0] += timedelta(seconds=4)
        assert await second.poll_once() is None  # still within the lease (5 polls)
        now[0] += timedelta(seconds=2)
        feed.changes.append("MRN-9")
        assert await second.poll_once() == 0  # took over, from the cursor
        assert feed.asked[-1] == 4 and await index.cursor("orthanc") == 5
        assert await first.poll_once() is None

    asyncio.run(run())


@pytest.mark.orthanc
@pytest.mark.slow
def test_orthanc_changes_show_a_direct_arrival_within_seconds(
    tmp_path: Path, fixture_files: list[Path]
) -> None:
    from tests.support.orthanc import run_orthanc

    mine = [
        p
        for p in fixture_files
        if dcmread(p, stop_before_pixels=True).PatientID == BENCH_PATIENT_ID
    ]
    with run_orthanc(tmp_path / "orthanc") as orthanc:

        async def store(datasets: list) -> None:  # type: ignore[type-arg]
            upstream = HttpUpstream(orthanc.dicomweb_url)
            try:
                assert not (await upstream.store_instances(datasets)).failed
            finally:
                await upstream.aclose()

        asyncio.run(store([dcmread(p) for p in mine]))
        settings = make_settings(
            tmp_path,
            dicomweb_url=orthanc.dicomweb_url,
            database_url=f"sqlite+aiosqlite:///{tmp_path / 'g.db'}",
            auth_required=True,
            public_url=BASE,
            release_delay_hours=0,
            index_freshness_seconds=3600,  # only the feed can show the new study in time
            index_change_feed="orthanc",
            index_feed_seconds=0.2,
        )
        migrate(settings)
        services = Services.build(settings, clock=Clock())
        with TestClient(create_app(settings, services=services), base_url=BASE) as client:
            harness = Harness(client, services)
            system = harness.backend_token("system/*.rs")
            patient = client.get(
                f"/fhir/Patient?identifier={BENCH_PATIENT_ID}", headers=bearer(system)
            ).json()["entry"][0]["resource"]["id"]
            token = bearer(harness.patient_token(patient, SCOPES))

            def listed() -> set[str]:
                answer = client.get(MINE, headers=token)
                assert answer.status_code == 200, answer.text
                return {e["resource"]["id"] for e in answer.json()["entry"]}

            before = listed()
            assert len(before) == 10
            image = next(p for p in mine if "PixelData" in dcmread(p))
            extra = dcmread(image)
            extra.StudyInstanceUID = generate_uid()
            extra.SeriesInstanceUID = generate_uid()
            extra.SOPInstanceUID = extra.file_meta.MediaStorageSOPInstanceUID = generate_uid()
            asyncio.run(store([extra]))  # straight to Orthanc, not through the gateway
            deadline = time.monotonic() + 15
            while str(extra.StudyInstanceUID) not in (now := listed()):
                assert time.monotonic() < deadline, "the change feed did not show the study"
                time.sleep(0.2)
            assert now == before | {str(extra.StudyInstanceUID)}
