"""The push worker against a real HTTP STOW-RS receiver: resume without duplicates after
the receiver was down and the worker was replaced (a restart), backoff, refused
instances counted (partial, never silent), OAuth client credentials, and a job of a
withdrawn consent stopped. The queue runs on SQLite here; the two-site test runs it
in real gateway processes."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import pytest
from pydantic import SecretStr

from gateway.audit import AuditEntry, Auditor
from gateway.dicomweb.file_store import FileStoreUpstream
from gateway.store.database import Database
from gateway.store.models import TransferJob
from gateway.transfers.queue import TransferQueue
from gateway.transfers.stow import StowTarget
from gateway.transfers.transforms import Transforms
from gateway.transfers.worker import TransferWorker, WorkerOptions, push_entry
from tests.sites.receiver import CLIENT_ID, CLIENT_SECRET, Receiver, Running
from tests.support.catalog import by_patient, read_catalog


@dataclass
class Destination:
    target_: StowTarget
    wanted_for: int | None = None  # the consent holds for this many checks, then ends
    checks: int = 0

    async def target(self, job: TransferJob) -> StowTarget | None:
        return self.target_

    async def wanted(self, job: TransferJob) -> bool:
        self.checks += 1
        return self.wanted_for is None or self.checks <= self.wanted_for

    async def ended(self, job: TransferJob, status: str, detail: str) -> AuditEntry:
        return push_entry(job, status, detail)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    found = Receiver()
    with Running(found):
        yield found


@pytest.fixture
def studies(fixture_files: list[Path]) -> tuple[list[str], int]:
    """Two studies of one patient, and how many instances they hold."""
    two = by_patient(read_catalog(fixture_files))[("HOSP-A", "IS-1003")][:2]
    return [s.uid for s in two], sum(s.instances for s in two)


class Site:
    def __init__(self, tmp_path: Path, data_dir: Path, destination: Destination) -> None:
        self.database = Database(f"sqlite+aiosqlite:///{tmp_path / 'a.db'}")
        self.upstream = FileStoreUpstream(data_dir / "dicom")
        self.queue = TransferQueue(self.database.sessions)
        self.destination = destination

    def worker(self, **options: float) -> TransferWorker:
        """A new worker, as a restarted process would have (another lease holder)."""
        settings = {"batch": 1, "attempts": 5, "backoff": 0.01, "backoff_max": 0.05, **options}
        return TransferWorker(
            self.queue,
            self.upstream,
            {"organization": self.destination},
            Transforms(),
            Auditor(self.database.sessions),
            WorkerOptions(**settings),  # type: ignore[arg-type]
        )

    async def until_final(self, worker: TransferWorker, job_id: str) -> TransferJob:
        for _ in range(500):
            await worker.run_once()
            job = await self.queue.get(job_id)
            assert job is not None
            if job.status not in ("queued", "running"):
                return job
            await asyncio.sleep(0.01)
        raise AssertionError("the job did not end")


def run(coroutine):  # type: ignore[no-untyped-def]
    return asyncio.run(coroutine)


def target(receiver: Receiver, **more: object) -> StowTarget:
    more.setdefault("auth", "none")
    return StowTarget(url=f"{receiver.url}/dicom-web", **more)  # type: ignore[arg-type]


def test_a_push_resumes_after_the_receiver_was_down_and_a_restart_without_duplicates(
    tmp_path: Path, embedded_data_dir: Path, receiver: Receiver, studies: tuple[list[str], int]
) -> None:
    uids, total = studies

    async def scenario() -> None:
        site = Site(tmp_path, embedded_data_dir, Destination(target(receiver)))
        await site.database.upgrade()
        job = await site.queue.enqueue(
            target_kind="organization", target_id="b", studies=uids, patient="p1"
        )
        first = site.worker()
        # Two instances go through, then the receiver goes down.
        receiver.down_after = 2
        assert await first.run_once()
        held = await site.queue.get(job.id)
        assert held is not None and held.status == "queued" and held.attempts == 1
        assert "503" in held.last_error and held.sent == 2 and held.total == total
        # The first worker dies holding nothing; a new one (a restart) resumes the job.
        receiver.down, receiver.down_after = False, None
        finished = await site.until_final(site.worker(), job.id)
        assert finished.status == "done", finished.last_error
        assert finished.sent == finished.total == total
        assert len(receiver.received) == total
        assert set(receiver.received.values()) == {1}, "an acknowledged instance went twice"
        await site.upstream.aclose()
        await site.database.dispose()

    run(scenario())


def test_a_lapsed_lease_is_taken_over_and_a_live_one_is_not(
    tmp_path: Path, embedded_data_dir: Path, receiver: Receiver, studies: tuple[list[str], int]
) -> None:
    async def scenario() -> None:
        site = Site(tmp_path, embedded_data_dir, Destination(target(receiver)))
        await site.database.upgrade()
        job = await site.queue.enqueue(
            target_kind="organization", target_id="b", studies=studies[0]
        )
        claimed = await site.queue.claim("crashed", timedelta(seconds=60))
        assert claimed is not None and claimed.id == job.id
        assert await site.queue.claim("other", timedelta(seconds=60)) is None
        lapsed = await site.queue.claim("crashed", timedelta(seconds=-1)) is None
        assert lapsed  # still held by the live lease
        site.queue.clock = lambda: claimed.next_try_at + timedelta(seconds=120)  # type: ignore[assignment]
        taken = await site.queue.claim("other", timedelta(seconds=60))
        assert taken is not None and taken.lease_holder == "other"
        assert not await site.queue.renew(job.id, "crashed", timedelta(seconds=60))
        await site.upstream.aclose()
        await site.database.dispose()

    run(scenario())


def test_refused_instances_make_a_partial_transfer_and_are_counted(
    tmp_path: Path,
    embedded_data_dir: Path,
    receiver: Receiver,
    studies: tuple[list[str], int],
    fixture_files: list[Path],
) -> None:
    uids, total = studies
    from pydicom import dcmread

    one = next(
        str(ds.SOPInstanceUID)
        for ds in (dcmread(p, stop_before_pixels=True) for p in fixture_files)
        if str(ds.StudyInstanceUID) == uids[0]
    )
    receiver.refuse = {one}

    async def scenario() -> None:
        site = Site(tmp_path, embedded_data_dir, Destination(target(receiver)))
        await site.database.upgrade()
        job = await site.queue.enqueue(
            target_kind="organization", target_id="b", studies=uids, patient="p1"
        )
        finished = await site.until_final(site.worker(batch=4), job.id)
        assert finished.status == "partial"
        assert (finished.sent, finished.failed, finished.total) == (total - 1, 1, total)
        items = {i.sop_uid: i for i in await site.queue.items(job.id)}
        assert items[one].state == "refused" and "272" in items[one].reason
        events, _ = await Auditor(site.database.sessions).search(patients=frozenset({"p1"}))
        assert [e.action for e in events] == ["push-partial"]
        assert "1 refused" in events[0].detail
        await site.upstream.aclose()
        await site.database.dispose()

    run(scenario())


def test_oauth_client_credentials_and_giving_up_after_the_tries(
    tmp_path: Path, embedded_data_dir: Path, receiver: Receiver, studies: tuple[list[str], int]
) -> None:
    receiver.oauth = True
    good = target(
        receiver,
        auth="oauth",
        token_url=f"{receiver.url}/token",
        client_id=CLIENT_ID,
        secret=SecretStr(CLIENT_SECRET),
    )
    assert CLIENT_SECRET not in repr(good)

    async def scenario() -> None:
        site = Site(tmp_path, embedded_data_dir, Destination(good))
        await site.database.upgrade()
        job = await site.queue.enqueue(
            target_kind="organization", target_id="b", studies=studies[0]
        )
        finished = await site.until_final(site.worker(batch=50), job.id)
        assert finished.status == "done" and receiver.tokens_issued == 1
        # A receiver down for good: the tries run out and the job fails, with the reason.
        receiver.down = True
        again = await site.queue.enqueue(
            target_kind="organization", target_id="b", studies=studies[0]
        )
        failed = await site.until_final(site.worker(attempts=3), again.id)
        assert failed.status == "failed" and "gave up after 3 tries" in failed.last_error
        # Wrong credentials are refused at once: no retry helps.
        site.destination.target_ = target(
            receiver,
            auth="oauth",
            token_url=f"{receiver.url}/token",
            client_id=CLIENT_ID,
            secret=SecretStr("wrong"),
        )
        receiver.down = False
        refused = await site.queue.enqueue(
            target_kind="organization", target_id="b", studies=studies[0]
        )
        ended = await site.until_final(site.worker(), refused.id)
        assert ended.status == "failed" and ended.attempts == 0
        assert "refused the client credentials" in ended.last_error
        await site.upstream.aclose()
        await site.database.dispose()

    run(scenario())


def test_a_withdrawn_consent_stops_the_push(
    tmp_path: Path, embedded_data_dir: Path, receiver: Receiver, studies: tuple[list[str], int]
) -> None:
    async def scenario() -> None:
        destination = Destination(target(receiver))
        site = Site(tmp_path, embedded_data_dir, destination)
        await site.database.upgrade()
        job = await site.queue.enqueue(
            target_kind="organization", target_id="b", studies=studies[0]
        )
        destination.wanted_for = 2  # the first check, then one batch; then it is withdrawn
        finished = await site.until_final(site.worker(), job.id)
        assert finished.status == "cancelled" and finished.sent == 1
        assert sum(receiver.received.values()) == 1
        await site.upstream.aclose()
        await site.database.dispose()

    run(scenario())
