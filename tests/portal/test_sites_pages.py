"""The portal's "Send to a hospital" page, in-process over the embedded store: the form
(CSRF), bad input refused with a clear 400 page that creates nothing, a send's push
progress and final status (a real STOW-RS receiver), withdrawal, and the Activity."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.store.models import OrganizationSend, TransferJob
from tests.auth.test_oauth_api import Harness
from tests.portal.support import Clock, Patient, enroll, hidden, portal_harness, portal_sign_in
from tests.sites.receiver import Receiver, Running
from tests.support.catalog import by_patient, read_catalog

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    found = Receiver()
    with Running(found):
        yield found


@pytest.fixture(scope="module")
def harness(
    tmp_path_factory: pytest.TempPathFactory, embedded_data_dir: Path, receiver: Receiver
) -> Iterator[Harness]:
    workdir = tmp_path_factory.mktemp("sites")
    # The test runs the transfer worker's steps itself; one try, so a failure is final.
    with portal_harness(
        workdir, embedded_data_dir, Clock(), transfer_worker=False, transfer_attempts=1
    ) as made:
        made.call(
            made.services.auth.organizations.add,
            org_id="trauma",
            name="Trauma Centre",
            stow_url=f"{receiver.url}/dicom-web",
        )
        yield made


@pytest.fixture(scope="module")
def patient(harness: Harness) -> Patient:
    return enroll(harness)


@pytest.fixture
def page(harness: Harness, patient: Patient) -> str:
    harness.client.cookies.clear()
    assert portal_sign_in(harness.client, patient.code) == 303
    shown = harness.client.get("/portal/sites")
    assert shown.status_code == 200
    return shown.text


def _studies(page: str) -> list[str]:
    return re.findall(r'name="study" value="([^"]+)"', page)


def _sends(harness: Harness, patient: Patient) -> list[OrganizationSend]:
    return harness.call(harness.services.auth.sends.of_patient, patient.fhir_id)


def _jobs(harness: Harness, patient: Patient) -> list[TransferJob]:
    return harness.call(harness.services.transfers.jobs, patient=patient.fhir_id)


def test_bad_input_gets_a_clear_400_page_and_creates_nothing(
    harness: Harness, patient: Patient, page: str, fixture_files: list[Path]
) -> None:
    assert 'option value="trauma"' in page and "Trauma Centre" in page
    mine = _studies(page)
    assert len(mine) >= 2
    other = by_patient(read_catalog(fixture_files))[("HOSP-A", "IS-1002")][0].uid
    assert other not in mine
    csrf = hidden(page, "csrf_token")
    most = harness.services.auth.sends.max_days
    good = {"csrf_token": csrf, "organization": "trauma", "study": mine[:1], "days": "7"}
    cases = [
        ({"csrf_token": "stale"}, "Please try again"),
        ({"organization": "nowhere"}, "Choose the hospital to send to."),
        ({"organization": ""}, "Choose the hospital to send to."),
        ({"study": []}, "Choose at least one study to send."),
        ({"study": [mine[0], other]}, "One of the chosen studies cannot be sent."),
        ({"study": ["1.2.3.not-a-study"]}, "One of the chosen studies cannot be sent."),
        ({"days": "0"}, f"Access lasts from 1 to {most} days."),
        ({"days": str(most + 1)}, f"Access lasts from 1 to {most} days."),
        ({"days": "a week"}, f"Access lasts from 1 to {most} days."),
    ]
    for change, said in cases:
        answer = harness.client.post("/portal/sites", data={**good, **change})
        assert answer.status_code == 400, (change, answer.text[:300])
        assert said in answer.text, (change, said)
        assert 'role="alert"' in answer.text or "Please try again" in answer.text
    assert _sends(harness, patient) == [] and _jobs(harness, patient) == []
    trail, _ = harness.call(harness.services.audit.search, patients=frozenset({patient.fhir_id}))
    assert not [e for e in trail if e.category == "transfer"]


def test_a_send_shows_its_push_and_can_be_withdrawn(
    harness: Harness, patient: Patient, page: str, receiver: Receiver
) -> None:
    mine = _studies(page)
    answer = harness.client.post(
        "/portal/sites",
        data={
            "csrf_token": hidden(page, "csrf_token"),
            "organization": "trauma",
            "study": mine[:2],
            "days": "7",
        },
        follow_redirects=False,
    )
    assert answer.status_code == 303
    shown = harness.client.get("/portal/sites").text
    assert "Waiting to be sent: 0 of 0 images" in shown
    (send,) = _sends(harness, patient)

    # The worker sends it: the page says how many went.
    before = sum(receiver.received.values())
    assert harness.call(harness.services.worker.run_once)
    (job,) = _jobs(harness, patient)
    assert job.status == "done" and job.sent == job.total > 0
    assert sum(receiver.received.values()) - before == job.total
    shown = harness.client.get("/portal/sites").text
    assert f"Delivered: {job.total} of {job.total} images" in shown

    # A second send while the hospital's archive is down: the failure is shown, with why.
    receiver.down = True
    try:
        harness.client.post(
            "/portal/sites",
            data={
                "csrf_token": hidden(shown, "csrf_token"),
                "organization": "trauma",
                "study": mine[2:3],
                "days": "1",
            },
        )
        assert harness.call(harness.services.worker.run_once)
    finally:
        receiver.down = False
    shown = harness.client.get("/portal/sites").text
    assert re.search(r'class="error">Could not be delivered: 0 of \d+ images \(gave up', shown)

    # Withdrawal: a stale form does nothing, the right one withdraws, twice is a 404.
    assert f"/portal/sites/{send.id}/revoke" in shown
    stale = harness.client.post(
        f"/portal/sites/{send.id}/revoke",
        data={"csrf_token": "stale"},
    )
    assert stale.status_code == 400
    assert harness.call(harness.services.auth.sends.get, send.id).revoked_at is None
    withdrawn = harness.client.post(
        f"/portal/sites/{send.id}/revoke",
        data={"csrf_token": hidden(shown, "csrf_token")},
        follow_redirects=False,
    )
    assert withdrawn.status_code == 303
    after = harness.client.get("/portal/sites?withdrawn=1").text
    assert "The send was withdrawn." in after and "Withdrawn" in after
    again = harness.client.post(
        f"/portal/sites/{send.id}/revoke",
        data={"csrf_token": hidden(after, "csrf_token")},
    )
    assert again.status_code == 404 and "Nothing to withdraw" in again.text

    activity = harness.client.get("/portal/activity").text
    for said in (
        "Studies were sent to a hospital",
        "Studies were delivered to a hospital",
        "Studies could not be delivered to a hospital",
        "A send to a hospital was withdrawn",
    ):
        assert said in activity, said


def test_another_patients_send_cannot_be_withdrawn(
    harness: Harness, patient: Patient, page: str, fixture_files: list[Path]
) -> None:
    key = ("HOSP-A", "IS-1002")
    study = by_patient(read_catalog(fixture_files))[key][0].uid
    index = harness.services.records.jackets.index
    fhir_id = harness.call(index.ids_for, [key])[key]
    organization = harness.call(harness.services.auth.organizations.get, "trauma")
    theirs = harness.call(
        harness.services.sites.send,
        organization=organization,
        patient_fhir_id=fhir_id,
        patient_key=key,
        studies=[study],
        days=1,
    )
    answer = harness.client.post(
        f"/portal/sites/{theirs.send.id}/revoke", data={"csrf_token": hidden(page, "csrf_token")}
    )
    assert answer.status_code == 404
    assert harness.call(harness.services.auth.sends.get, theirs.send.id).revoked_at is None
    assert theirs.send.id not in harness.client.get("/portal/sites").text
