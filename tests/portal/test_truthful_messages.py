"""What the portal says after an action is what happened.

Withdrawing something that is not yours, or is already withdrawn, says so; a
form with a stale CSRF token keeps the patient signed in and shows the form
again; and a share link that does not open looks the same whatever the reason
(unknown, expired, withdrawn or locked), while the patient's own Shares page
still tells these apart.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from gateway.auth.clients import ClientKind
from tests.auth.test_authorize import REDIRECT, hidden
from tests.auth.test_oauth_api import Harness
from tests.portal.support import (
    Clock,
    Patient,
    create_share,
    enroll,
    enter_pin,
    portal_harness,
    portal_sign_in,
    shareable,
)

NOTHING = "Nothing to withdraw"
UNKNOWN_ID = "0123456789abcdef0123456789abcdef"


@pytest.fixture(scope="module")
def clock() -> Clock:
    return Clock()


@pytest.fixture(scope="module")
def harness(
    tmp_path_factory: pytest.TempPathFactory, embedded_data_dir: Path, clock: Clock
) -> Iterator[Harness]:
    workdir = tmp_path_factory.mktemp("truthful")
    with portal_harness(workdir, embedded_data_dir, clock, release_waiver_allowed=False) as made:
        yield made


@pytest.fixture(scope="module")
def jane(harness: Harness) -> Patient:
    return enroll(harness, "Jane Doe")


@pytest.fixture(scope="module")
def john(harness: Harness) -> Patient:
    return enroll(harness, "John Roe")


@pytest.fixture
def client(harness: Harness, jane: Patient) -> TestClient:
    harness.client.cookies.clear()
    assert portal_sign_in(harness.client, jane.code) == 303
    return harness.client


def allow_app(harness: Harness, patient: Patient, name: str) -> str:
    """A grant of ``patient`` to a new app, as the consent page makes it; its id."""
    app = harness.call(
        harness.services.auth.clients.add,
        name=name,
        kind=ClientKind.public,
        redirect_uris=[REDIRECT],
    ).client.client_id
    harness.call(
        harness.services.auth.tokens.create_code,
        client_id=app,
        account_id=patient.account_id,
        scope=["launch/patient", "patient/ImagingStudy.rs"],
        context={"patient": patient.fhir_id},
        redirect_uri=REDIRECT,
        code_challenge="x" * 43,
        nonce=None,
    )
    grants = harness.call(harness.services.auth.tokens.grants_of, patient.account_id)
    return str(next(grant.id for grant, app_name, _ in grants if app_name == name))


def live_grants(harness: Harness, patient: Patient) -> set[str]:
    grants = harness.call(harness.services.auth.tokens.grants_of, patient.account_id)
    return {grant.id for grant, _, _ in grants}


def post(client: TestClient, path: str, csrf: str | None = None, **fields: str):  # type: ignore[no-untyped-def]
    if csrf is None:
        csrf = hidden(client.get("/portal/").text, "csrf_token")
    return client.post(path, data={"csrf_token": csrf, **fields}, follow_redirects=False)


def share_id_of(client: TestClient, label: str) -> str:
    listing = client.get("/portal/shares").text
    row = listing.split(f"<strong>{label}</strong>", 1)[1].split("</tr>", 1)[0]
    found = re.search(r"/portal/shares/([0-9a-f]+)/revoke", row)
    assert found, row
    return found.group(1)


def test_withdrawing_an_app_says_what_happened(
    harness: Harness, client: TestClient, jane: Patient, john: Patient
) -> None:
    mine = allow_app(harness, jane, "Jane's viewer")
    theirs = allow_app(harness, john, "John's viewer")
    for grant in (UNKNOWN_ID, theirs):
        answer = post(client, f"/portal/apps/{grant}/revoke")
        assert answer.status_code == 404, grant
        assert NOTHING in answer.text and "Access withdrawn" not in answer.text
    assert theirs in live_grants(harness, john)

    done = post(client, f"/portal/apps/{mine}/revoke")
    assert done.status_code == 303
    page = client.get(done.headers["location"]).text
    assert "Access withdrawn from Jane&#39;s viewer." in page
    assert mine not in live_grants(harness, jane)
    # Twice: the second time, nothing was withdrawn, and it says so.
    again = post(client, f"/portal/apps/{mine}/revoke")
    assert again.status_code == 404 and NOTHING in again.text

    # The address alone never makes the page claim a withdrawal.
    for query in ("revoked=1", f"withdrawn={theirs}", f"withdrawn={UNKNOWN_ID}"):
        assert "withdrawn" not in client.get(f"/portal/apps?{query}").text.lower(), query


def test_withdrawing_a_share_says_what_happened(
    harness: Harness, client: TestClient, john: Patient
) -> None:
    studies = shareable(client)[:1]
    _, _, link, _ = create_share(client, studies, label="Dr. Mine")
    assert link
    mine = share_id_of(client, "Dr. Mine")
    theirs = harness.call(
        harness.services.shares.create,
        account_id=john.account_id,
        patient_fhir_id=john.fhir_id,
        studies=studies,
        days=7,
        label="Dr. Theirs",
    ).share.id
    for share in (UNKNOWN_ID, theirs):
        answer = post(client, f"/portal/shares/{share}/revoke")
        assert answer.status_code == 404, share
        assert NOTHING in answer.text and "was withdrawn" not in answer.text
    stored = harness.call(harness.services.shares.get, theirs)
    assert stored.revoked_at is None

    done = post(client, f"/portal/shares/{mine}/revoke")
    assert done.status_code == 303
    assert "The share link for Dr. Mine was withdrawn." in client.get(done.headers["location"]).text
    again = post(client, f"/portal/shares/{mine}/revoke")
    assert again.status_code == 404 and NOTHING in again.text
    for query in ("revoked=1", f"withdrawn={theirs}", f"withdrawn={UNKNOWN_ID}"):
        assert "was withdrawn" not in client.get(f"/portal/shares?{query}").text, query


@pytest.mark.parametrize(
    ("path", "page"),
    [
        ("/portal/apps/{grant}/revoke", "Apps that can see your images"),
        ("/portal/shares/{share}/revoke", "Share studies with a physician"),
        ("/portal/shares", "Share studies with a physician"),
        ("/portal/waive", "Please try again"),
        ("/portal/signout", "Please try again"),
    ],
)
def test_a_stale_form_keeps_the_session_and_shows_the_form_again(
    harness: Harness, client: TestClient, jane: Patient, path: str, page: str
) -> None:
    grant = allow_app(harness, jane, f"Viewer for {path}")
    _, _, link, _ = create_share(client, shareable(client)[:1], label=f"Stale {path}")
    assert link
    share = share_id_of(client, f"Stale {path}")
    current = hidden(client.get("/portal/").text, "csrf_token")
    shares_before = client.get("/portal/shares").text.count("<tr>")

    answer = post(
        client, path.format(grant=grant, share=share), csrf="stale", study=shareable(client)[0]
    )
    assert answer.status_code == 400
    assert page in answer.text and "Please try again" in answer.text
    assert "passphrase" not in answer.text  # not the sign-in page
    assert hidden(answer.text, "csrf_token") == current  # a form that works
    # Nothing was done, and the patient is still signed in.
    assert client.get("/portal/", follow_redirects=False).status_code == 200
    assert grant in live_grants(harness, jane)
    shares = client.get("/portal/shares").text
    assert shares.count("<tr>") == shares_before
    assert f"/portal/shares/{share}/revoke" in shares


def test_a_waiver_that_is_not_offered_is_not_silently_ignored(client: TestClient) -> None:
    answer = post(client, "/portal/waive")
    assert answer.status_code == 403
    assert "not offered" in answer.text


def test_links_that_do_not_open_all_look_the_same(
    harness: Harness, client: TestClient, clock: Clock
) -> None:
    studies = shareable(client)[:1]
    links = {}
    for label in ("Withdrawn", "Locked", "Expired"):
        _, _, link, pin = create_share(client, studies, days="1", label=f"Looks {label}")
        assert link and pin
        links[label] = (link, pin)
    withdrawn = post(client, f"/portal/shares/{share_id_of(client, 'Looks Withdrawn')}/revoke")
    assert withdrawn.status_code == 303
    link, pin = links["Locked"]
    wrong = "000000" if pin != "000000" else "111111"
    for _ in range(4):
        assert enter_pin(client, link, wrong).status_code == 401
    last_guess = enter_pin(client, link, wrong)

    unknown = client.get("/share/" + "A" * 43)
    assert unknown.status_code == 404
    # The guess that locked the link gets the same page as any link that does not open.
    assert (last_guess.status_code, last_guess.text) == (404, unknown.text)
    clock.advance(days=1, seconds=1)
    try:
        for label, (link, _) in links.items():
            answer = client.get(link)
            assert (answer.status_code, answer.text) == (404, unknown.text), label
            tried = client.post(link, data={"pin": "123456"}, follow_redirects=False)
            assert (tried.status_code, tried.text) == (404, unknown.text), label
        # The patient's own list still tells them apart.
        listing = client.get("/portal/shares").text
        for state in ("Withdrawn", "Locked after 5 wrong PINs", "Expired"):
            assert state in listing, state
    finally:
        clock.advance(days=-1, seconds=-1)


def test_closing_shared_studies_says_what_happened(harness: Harness, client: TestClient) -> None:
    _, _, link, pin = create_share(client, shareable(client)[:1], label="Close test")
    assert link and pin
    assert enter_pin(client, link, pin).status_code == 303
    stale = client.post("/share/view/close", data={"csrf_token": "stale"})
    assert stale.status_code == 400 and "closed" not in stale.text
    assert client.get("/share/view").status_code == 200  # still open
    view = client.get("/share/view").text
    closed = client.post("/share/view/close", data={"csrf_token": hidden(view, "csrf_token")})
    assert closed.status_code == 200 and "You closed the shared studies" in closed.text
    assert client.get("/share/view").status_code == 401


def test_activity_does_not_call_a_refused_withdrawal_done(
    tmp_path: Path, embedded_data_dir: Path
) -> None:
    with portal_harness(
        tmp_path, embedded_data_dir, Clock(), release_waiver_allowed=False
    ) as fresh:
        client = fresh.client
        assert portal_sign_in(client, enroll(fresh).code) == 303
        assert post(client, f"/portal/apps/{UNKNOWN_ID}/revoke").status_code == 404
        assert post(client, f"/portal/shares/{UNKNOWN_ID}/revoke").status_code == 404
        assert post(client, "/portal/waive").status_code == 403
        activity = client.get("/portal/activity").text
    for done in ("You withdrew an app", "You withdrew a share link", "You chose to see new"):
        assert done not in activity, done
    for tried in (
        "You tried to withdraw an app&#39;s access: nothing to withdraw",
        "You tried to withdraw a share link: nothing to withdraw",
        "You asked to see new results at once: not offered here",
    ):
        assert tried in activity, tried
