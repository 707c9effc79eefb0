"""The transfer queue on a real PostgreSQL: two workers (each with its own engine, as two
replicas have) never claim or run the same job, and a lapsed lease is taken over."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest

from gateway.audit import Auditor
from gateway.dicomweb.file_store import FileStoreUpstream
from gateway.store.database import Database
from gateway.transfers.queue import FINAL, TransferQueue
from gateway.transfers.transforms import Transforms
from gateway.transfers.worker import TransferWorker, WorkerOptions
from tests.sites.receiver import Receiver, Running
from tests.sites.test_push_worker import Destination, target
from tests.support.catalog import read_catalog
from tests.support.postgres import throwaway_database

pytestmark = [pytest.mark.slow, pytest.mark.postgres]


@pytest.fixture
def database_url() -> Iterator[str]:
    with throwaway_database() as url:
        yield url


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    found = Receiver()
    with Running(found):
        yield found


def test_two_claimers_never_take_the_same_job(database_url: str) -> None:
    async def scenario() -> None:
        first, second = Database(database_url), Database(database_url)
        await first.upgrade()
        queues = [TransferQueue(first.sessions), TransferQueue(second.sessions)]
        made = [
            await queues[0].enqueue(target_kind="organization", target_id="b", studies=[f"1.{n}"])
            for n in range(40)
        ]

        async def claimer(queue: TransferQueue, name: str) -> list[str]:
            taken = []
            while (job := await queue.claim(name, timedelta(seconds=60))) is not None:
                assert job.lease_holder == name and job.status == "running"
                taken.append(job.id)
            return taken

        # Four claimers on each engine, all at once.
        results = await asyncio.gather(*(claimer(queues[n % 2], f"worker-{n}") for n in range(8)))
        claimed = Counter(job for taken in results for job in taken)
        assert set(claimed) == {job.id for job in made}
        assert set(claimed.values()) == {1}, "a job was claimed twice"
        assert sum(1 for taken in results if taken) >= 2  # they really raced
        for n, taken in enumerate(results):
            for job_id in taken:
                held = await queues[1].get(job_id)
                assert held is not None and held.lease_holder == f"worker-{n}"
        await first.dispose()
        await second.dispose()

    asyncio.run(scenario())


def test_a_lapsed_lease_is_taken_over_and_a_live_one_is_not(database_url: str) -> None:
    async def scenario() -> None:
        database = Database(database_url)
        await database.upgrade()
        queue = TransferQueue(database.sessions)
        job = await queue.enqueue(target_kind="organization", target_id="b", studies=["1.2"])
        claimed = await queue.claim("crashed", timedelta(seconds=60))
        assert claimed is not None and claimed.id == job.id
        assert await queue.claim("other", timedelta(seconds=60)) is None
        later = claimed.next_try_at + timedelta(seconds=120)
        queue.clock = lambda: later
        taken = await queue.claim("other", timedelta(seconds=60))
        assert taken is not None and taken.id == job.id and taken.lease_holder == "other"
        # The crashed holder cannot renew, record or finish any more.
        assert not await queue.renew(job.id, "crashed", timedelta(seconds=60))
        assert not await queue.record(job.id, "crashed", [], 5)
        assert not await queue.finish(job.id, "crashed", "failed", "late")
        assert await queue.finish(job.id, "other", "done")
        await database.dispose()

    asyncio.run(scenario())


def test_two_workers_send_every_instance_once(
    database_url: str, embedded_data_dir: Path, fixture_files: list[Path], receiver: Receiver
) -> None:
    studies = sorted((uid, fact.instances) for uid, fact in read_catalog(fixture_files).items())
    chosen = studies[:8]
    total = sum(count for _, count in chosen)

    async def scenario() -> None:
        databases = [Database(database_url), Database(database_url)]
        await databases[0].upgrade()
        destination = Destination(target(receiver))
        workers = []
        for database in databases:
            workers.append(
                TransferWorker(
                    TransferQueue(database.sessions),
                    FileStoreUpstream(embedded_data_dir / "dicom"),
                    {"organization": destination},
                    Transforms(),
                    Auditor(database.sessions),
                    WorkerOptions(batch=2, poll=0.05, backoff=0.05, backoff_max=0.1),
                )
            )
        queue = workers[0].queue
        jobs = [
            await queue.enqueue(target_kind="organization", target_id="b", studies=[uid])
            for uid, _ in chosen
        ]
        for worker in workers:
            worker.start()
        try:
            for _ in range(2000):
                states = [(await queue.get(j.id)).status for j in jobs]  # type: ignore[union-attr]
                if all(state in FINAL for state in states):
                    break
                await asyncio.sleep(0.05)
        finally:
            for worker in workers:
                await worker.aclose()
        finished = [await queue.get(j.id) for j in jobs]
        assert all(j is not None and j.status == "done" for j in finished)
        assert len(receiver.received) == total
        assert set(receiver.received.values()) == {1}, "an instance went twice"
        for worker, database in zip(workers, databases, strict=True):
            await worker.upstream.aclose()
            await database.dispose()

    asyncio.run(scenario())
