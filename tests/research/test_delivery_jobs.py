"""Research delivery on the transfer engine: a job per donated study, de-identified by the
job's transform, resumed after the gateway is killed without sending an instance twice,
cancelled by withdrawal, and visible to staff and in the patient's Activity.

The research archive is the counting STOW-RS receiver of ``tests/sites`` (a real HTTP
server), so the test knows how often each instance arrived.
"""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydicom import dcmread

from gateway.audit import Auditor
from gateway.donation.consents import ALL, Consents, Donor
from gateway.donation.deliveries import Deliveries
from gateway.donation.projects import Projects
from gateway.store.database import Database
from gateway.store.patients import PatientIndex
from gateway.transfers.queue import TransferQueue
from tests.auth.test_backend_access import backend_token as harness_token
from tests.auth.test_oauth_api import Harness, bearer
from tests.portal.support import Patient, enroll, hidden, portal_sign_in
from tests.sites.receiver import Receiver, Running
from tests.sites.test_two_sites import backend_token, jobs, wait_for
from tests.support.catalog import by_patient, read_catalog
from tests.support.gateway_process import GatewayProcess
from tests.support.stores import private_store

pytestmark = pytest.mark.slow
OPTIONS = ["retain-longitudinal-modified-dates", "clean-descriptors"]


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    found = Receiver()
    with Running(found):
        yield found


def _originals(fixture_files: list[Path], study: str) -> dict[str, bytes]:
    """SOP Instance UID -> the instance as stored, of one study."""
    found = {}
    for path in fixture_files:
        ds = dcmread(path, stop_before_pixels=True)
        if str(ds.StudyInstanceUID) == study:
            found[str(ds.SOPInstanceUID)] = path.read_bytes()
    return found


def test_a_delivery_cut_by_killing_the_gateway_resumes_without_sending_twice(
    tmp_path: Path, embedded_data_dir: Path, fixture_files: list[Path], receiver: Receiver
) -> None:
    # HOSP-A IS-1005's MR study; HOSP-B has another patient with the same PatientID.
    key = ("HOSP-A", "IS-1005")
    study = by_patient(read_catalog(fixture_files))[key][0]
    originals = _originals(fixture_files, study.uid)
    assert len(originals) == study.instances >= 6

    data = tmp_path / "a-data"
    shutil.copytree(embedded_data_dir / "dicom", data / "dicom")
    site = GatewayProcess(
        tmp_path / "a",
        data_dir=str(data),
        release_delay_hours="0",
        research_sweep_seconds="0.5",
        transfer_poll_seconds="0.3",
        transfer_batch="2",
        transfer_lease_seconds="5",
        transfer_backoff_seconds="0.5",
        transfer_backoff_max_seconds="1",
    )
    site.start()
    database_url = site.env["GATEWAY_DATABASE_URL"]

    async def donate() -> tuple[Any, str]:
        database = Database(database_url)
        try:
            project = await Projects(database.sessions).add(
                name="Brain MR cohort",
                protocol_id="BMR-1",
                archive_url=f"{receiver.url}/dicom-web",
                options=OPTIONS,
            )
            fhir_id = (await PatientIndex(database.sessions).ids_for([key]))[key]
            await Consents(database.sessions).donate(project.id, Donor(fhir_id, *key), [study.uid])
            return project, fhir_id
        finally:
            await database.dispose()

    async def state() -> tuple[list[Any], list[Any]]:
        database = Database(database_url)
        try:
            rows = await Deliveries(database.sessions).of_project(project.id)
            events, _ = await Auditor(database.sessions).search(patients=frozenset({fhir_id}))
            return rows, events
        finally:
            await database.dispose()

    try:
        # Two instances are acknowledged, then the archive holds the next request while
        # the gateway is killed: the job is left running, its lease held by a dead process.
        receiver.stall_after = 2
        project, fhir_id = asyncio.run(donate())
        wait_for(lambda: receiver.stalled, "the delivery to reach the third instance")
        (held,) = jobs(site)
        assert (held["status"], held["sent"], held["transform"]) == ("running", 2, "research-deid")
        assert held["to"] == f"research/{project.id}" and held["total"] == len(originals)
        site.kill()
        receiver.stall_after = None
        site.start()

        def delivered_row() -> Any:
            rows, _ = asyncio.run(state())
            return rows[0] if rows and rows[0].status == "delivered" else None

        row = wait_for(delivered_row, "the delivery to be resumed and finished")
        # Each instance arrived once, as its de-identified copy, and all of them did.
        assert set(receiver.received.values()) == {1}, "an acknowledged instance went twice"
        assert set(receiver.received) == {project.new_uid(uid) for uid in originals}
        assert (row.sent, row.excluded, row.refused) == (len(originals), 0, 0)
        assert row.pseudonymous_study_uid == project.new_uid(study.uid)
        (finished,) = jobs(site)
        assert finished["status"] == "done" and finished["tries"] == 0

        # Staff see it in the deliveries listing; the patient in their Activity.
        admin = backend_token(site, "admin/research")
        listed = httpx.get(
            f"{site.url}/admin/research/projects/{project.id}/deliveries",
            headers={"Authorization": f"Bearer {admin}"},
        ).json()["deliveries"]
        assert [(d["status"], d["instances"], d["studyInstanceUID"]) for d in listed] == [
            ("delivered", len(originals), project.new_uid(study.uid))
        ]
        assert study.uid not in str(listed)
        _, events = asyncio.run(state())
        delivered = [e for e in events if (e.category, e.action) == ("research", "deliver")]
        assert len(delivered) == 1 and delivered[0].outcome == 200
        assert f"{len(originals)} of {len(originals)} instances stored" in delivered[0].detail
    finally:
        site.stop()


@contextmanager
def _donated_all(
    tmp_path: Path, fixture_files: list[Path], receiver: Receiver
) -> Iterator[tuple[Harness, Patient, Any]]:
    """A gateway (no background worker: the test runs its steps) over three studies of the
    patient ``enroll`` signs up (IS-1001), who donated all of them to a project in the
    portal; the donation's three deliveries are queued."""
    three = {s.uid for s in by_patient(read_catalog(fixture_files))[("HOSP-A", "IS-1001")][:3]}
    datasets = [d for d in map(dcmread, fixture_files) if str(d.StudyInstanceUID) in three]
    with private_store(
        ("embedded", "sqlite"),
        tmp_path,
        datasets,
        research_sweep_seconds=0,
        transfer_worker=False,
        transfer_batch=50,
    ) as harness:
        services = harness.services
        patient = enroll(harness, "Dora Donor")
        project = harness.call(
            services.donation.projects.add,
            name="Chest CT cohort",
            protocol_id="CCT-1",
            archive_url=f"{receiver.url}/dicom-web",
            options=OPTIONS,
        )
        assert portal_sign_in(harness.client, patient.code) == 303
        page = harness.client.get("/portal/research")
        answer = harness.client.post(
            f"/portal/research/{project.id}/donate",
            data={"csrf_token": hidden(page.text, "csrf_token"), "study": [ALL]},
            follow_redirects=False,
        )
        assert answer.status_code == 303
        # The donation queued its deliveries in the background; a pass queues none twice.
        wait_for(
            lambda: len(harness.call(services.donation.deliveries.of_project, project.id)) == 3,
            "the donation's deliveries to be queued",
        )
        assert harness.call(services.donation.deliver) == 0
        yield harness, patient, project


def test_removing_the_project_cancels_its_deliveries(
    tmp_path: Path, fixture_files: list[Path], receiver: Receiver
) -> None:
    with _donated_all(tmp_path, fixture_files, receiver) as (harness, _, project):
        admin = bearer(harness_token(harness, "admin/research"))
        removed = harness.client.delete(f"/admin/research/projects/{project.id}", headers=admin)
        assert removed.status_code == 204
        rows = harness.call(harness.services.donation.deliveries.of_project, project.id)
        assert [(r.status, r.error) for r in rows] == [("stopped", "the project was removed")] * 3
        assert not harness.call(harness.services.worker.run_once)
        assert sum(receiver.received.values()) == 0


def test_withdrawal_cancels_queued_and_running_deliveries(
    tmp_path: Path, fixture_files: list[Path], receiver: Receiver
) -> None:
    with _donated_all(tmp_path, fixture_files, receiver) as (harness, patient, project):
        services = harness.services
        # One delivery goes all the way, one is running at another worker, one is queued.
        assert harness.call(services.worker.run_once)
        queue: TransferQueue = services.transfers
        running = harness.call(queue.claim, "another-worker", timedelta(seconds=60))
        assert running is not None
        rows = harness.call(services.donation.deliveries.of_project, project.id)
        assert sorted(r.status for r in rows) == ["delivered", "queued", "sending"]
        went = {r.study_uid for r in rows if r.status == "delivered"}
        arrived = sum(receiver.received.values())
        assert arrived > 0

        page = harness.client.get("/portal/research")
        (consent,) = [
            c
            for c in harness.call(services.donation.consents.of_patient, patient.fhir_id)
            if c.project_id == project.id
        ]
        answer = harness.client.post(
            f"/portal/research/donations/{consent.id}/withdraw",
            data={"csrf_token": hidden(page.text, "csrf_token")},
            follow_redirects=False,
        )
        assert answer.status_code == 303

        rows = harness.call(services.donation.deliveries.of_project, project.id)
        assert sorted(r.status for r in rows) == ["delivered", "stopped", "stopped"]
        # The worker holding the running one loses it at its next batch; nothing is due.
        assert not harness.call(queue.renew, running.id, "another-worker", timedelta(seconds=60))
        assert not harness.call(services.worker.run_once)
        assert sum(receiver.received.values()) == arrived
        # What went is listed for the project to delete; the stopped ones are not.
        gone = harness.call(
            services.donation.deliveries.of_project, project.id, withdrawn_only=True
        )
        assert {r.study_uid for r in gone} == went

        # Staff see every status; the patient's Activity tells the delivery and the withdrawal.
        admin = harness_token(harness, "admin/research")
        listed = harness.client.get(
            f"/admin/research/projects/{project.id}/deliveries", headers=bearer(admin)
        ).json()["deliveries"]
        assert sorted(d["status"] for d in listed) == ["delivered", "stopped", "stopped"]
        assert sorted(str(d["error"]) for d in listed) == [
            "None",
            "the consent was withdrawn",
            "the consent was withdrawn",
        ]
        activity = harness.client.get("/portal/activity")
        assert "A de-identified copy went to a research project" in activity.text
        assert "You withdrew a research donation" in activity.text
        assert "Chest CT cohort" in activity.text
        # Only de-identified copies went: no original SOP Instance UID arrived.
        (first,) = went
        assert set(receiver.received).isdisjoint(_originals(fixture_files, first))
