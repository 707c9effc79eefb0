"""Share links, end to end in-process: made in the portal, opened with the PIN, viewed,
downloaded, locked by wrong PINs, withdrawn, expired; mailed through a real SMTP server."""

from __future__ import annotations

import re
import zipfile
from collections.abc import Iterator
from io import BytesIO
from pathlib import Path

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.handlers import Message
from fhir.resources.R4B.auditevent import AuditEvent
from fhir.resources.R4B.consent import Consent
from pydicom import dcmread
from sqlalchemy import select

from gateway.store.models import ShareLink
from tests.auth.test_oauth_api import Harness, bearer
from tests.conftest import free_port
from tests.portal.support import (
    DATABASES,
    Clock,
    Patient,
    create_share,
    enroll,
    enter_pin,
    portal_harness,
    portal_sign_in,
    shareable,
)


@pytest.fixture(scope="module")
def clock() -> Clock:
    return Clock()


@pytest.fixture(scope="module", params=DATABASES)
def harness(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    embedded_data_dir: Path,
    clock: Clock,
) -> Iterator[Harness]:
    workdir = tmp_path_factory.mktemp("shares")
    with portal_harness(workdir, embedded_data_dir, clock, request.param) as made:
        yield made


@pytest.fixture(scope="module")
def patient(harness: Harness) -> Patient:
    return enroll(harness)


@pytest.fixture
def signed_in(harness: Harness, patient: Patient) -> Harness:
    harness.client.cookies.clear()
    assert portal_sign_in(harness.client, patient.code) == 303
    return harness


def stored_shares(harness: Harness) -> list[ShareLink]:
    async def load() -> list[ShareLink]:
        async with harness.services.database.sessions() as session:
            return list(await session.scalars(select(ShareLink)))

    return harness.call(load)  # type: ignore[no-any-return]


def test_a_share_opens_with_its_pin_and_shows_only_its_studies(
    signed_in: Harness, patient: Patient
) -> None:
    client = signed_in.client
    studies = shareable(client)
    assert len(studies) == 10
    status, page, link, pin = create_share(
        client, studies[:2], days="7", label="Dr. Who, Trauma Centre"
    )
    assert status == 201 and link and pin, page
    assert link.startswith("https://gateway.example/share/")
    token = link.rsplit("/", 1)[1]
    # Only hashes are kept: neither the token nor the PIN is in the database.
    share = next(s for s in stored_shares(signed_in) if s.label == "Dr. Who, Trauma Centre")
    assert token not in (share.token_hash, share.pin_hash) and pin not in share.pin_hash
    # The list shows the share, but never the link or PIN again.
    listing = client.get("/portal/shares").text
    assert "Dr. Who, Trauma Centre" in listing and token not in listing and pin not in listing

    # The recipient: the PIN page, a wrong PIN, then the right one.
    pin_page = client.get(link)
    assert pin_page.status_code == 200
    assert "frame-ancestors 'none'" in pin_page.headers["content-security-policy"]
    assert pin_page.headers["cache-control"] == "no-store"
    wrong = enter_pin(client, link, "000000" if pin != "000000" else "111111")
    assert wrong.status_code == 401 and "4 tries left" in wrong.text
    opened = enter_pin(client, link, pin)
    assert opened.status_code == 303 and opened.headers["location"].endswith("/share/view")
    overview = client.get("/share/view")
    assert overview.status_code == 200
    shown = set(re.findall(r'href="[^"]*/share/view/studies/([0-9.]+)"', overview.text))
    assert shown == set(studies[:2])

    # A study page with its images, each image behind the share's own gate.
    study_page = client.get(f"/share/view/studies/{studies[0]}")
    assert study_page.status_code == 200
    images = re.findall(r'src="https://gateway.example(/share/dicomweb/[^"]+)"', study_page.text)
    assert images
    for path in images[:3]:
        image = client.get(path.replace("&amp;", "&"))
        assert image.status_code == 200 and image.headers["content-type"] == "image/jpeg"
    # Another study of the same patient is not part of the share, by page or by image URL.
    other = studies[2]
    assert client.get(f"/share/view/studies/{other}").status_code == 404
    assert client.get(f"/share/view/studies/{other}/download").status_code == 404
    foreign = images[0].replace(studies[0], other)
    assert client.get(foreign).status_code == 404

    # The download: a ZIP of exactly the shared studies' DICOM files.
    download = client.get("/share/view/download")
    assert download.status_code == 200 and download.headers["content-type"] == "application/zip"
    archive = zipfile.ZipFile(BytesIO(download.content))
    members = [n for n in archive.namelist() if n.endswith(".dcm")]
    assert members
    in_zip = {str(dcmread(BytesIO(archive.read(n))).StudyInstanceUID) for n in members}
    assert in_zip == set(studies[:2])

    # The patient withdraws it: refused at the recipient's next request, everywhere.
    share_id = re.findall(r'/portal/shares/([0-9a-f]+)/revoke"', listing)[0]
    form = client.get("/portal/shares").text
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', form)
    assert csrf
    withdrawn = client.post(
        f"/portal/shares/{share_id}/revoke",
        data={"csrf_token": csrf.group(1)},
        follow_redirects=False,
    )
    assert withdrawn.status_code == 303
    assert client.get("/share/view").status_code == 401
    assert client.get(images[0].replace("&amp;", "&")).status_code == 401
    assert client.get("/share/view/download").status_code == 401
    assert client.get(link).status_code == 404
    assert "Withdrawn" in client.get("/portal/shares").text

    # The patient sees each of these in Activity, the recipient named by the share's label.
    activity = client.get("/portal/activity").text
    for line in (
        "You created a share link",
        "A wrong PIN was entered for your share link",
        "Opened your share link with the PIN",
        "Looked at a shared study",
        "Viewed or downloaded images",
        "Downloaded shared studies",
        "You withdrew a share link",
        "Share link: Dr. Who, Trauma Centre",
    ):
        assert line in activity, line
    # The same records, as FHIR AuditEvents: the recipient is named by the share's id.
    system = signed_in.backend_token("system/*.rs")
    bundle = client.get(
        f"/fhir/AuditEvent?patient={patient.fhir_id}&_count=200", headers=bearer(system)
    ).json()
    events = [e["resource"] for e in bundle["entry"]]
    by_share = [
        e
        for e in events
        if any(
            a["who"].get("identifier", {}).get("value") == share.id
            and a["who"]["identifier"]["system"] == "urn:image-share:share-link"
            for a in e["agent"]
        )
    ]
    actions = {e["subtype"][0]["code"] for e in by_share}
    assert {"pin-failure", "open", "view", "download", "retrieve"} <= actions, actions
    exports = [e for e in by_share if e["type"]["code"] == "110106"]
    assert exports and all(e["outcome"] in ("0", "4") for e in by_share)
    for event in by_share:
        AuditEvent.model_validate(event)
    mine = {e["subtype"][0]["code"] for e in events if e["type"]["code"] == "110106"}
    assert {"create", "revoke"} <= mine


def test_five_wrong_pins_lock_the_link_for_good(signed_in: Harness) -> None:
    client = signed_in.client
    _, _, link, pin = create_share(client, shareable(client)[:1], label="Lock test")
    assert link and pin
    wrong = "123456" if pin != "123456" else "654321"
    for left in (4, 3, 2, 1):
        answer = enter_pin(client, link, wrong)
        assert answer.status_code == 401 and f"{left} tr" in answer.text
    locked = enter_pin(client, link, wrong)
    # To the recipient, a locked link is one more link that does not open.
    assert locked.status_code == 404 and "locked" in locked.text
    # Even the right PIN does not open it now.
    assert client.get(link).status_code == 404
    assert client.post(link, data={"pin": pin}, follow_redirects=False).status_code == 404
    assert "Locked after 5 wrong PINs" in client.get("/portal/shares").text


def test_a_share_ends_when_it_expires(signed_in: Harness, clock: Clock) -> None:
    client = signed_in.client
    _, _, link, pin = create_share(client, shareable(client)[:1], days="1", label="Expiry")
    assert link and pin
    assert enter_pin(client, link, pin).status_code == 303
    assert client.get("/share/view").status_code == 200
    clock.advance(days=1, seconds=1)
    try:
        assert client.get("/share/view").status_code == 401
        assert client.get(link).status_code == 404
        assert "Expired" in client.get("/portal/shares").text
    finally:
        clock.advance(days=-1, seconds=-1)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"days": "7"}, "Choose at least one study"),
        ({"days": "400"}, "from 1 to 90 days"),
        ({"days": "seven"}, "from 1 to 90 days"),
        ({"days": "7", "label": "x" * 201}, "at most 200 characters"),
    ],
)
def test_bad_share_requests_are_refused_with_a_reason(
    signed_in: Harness, fields: dict[str, str], message: str
) -> None:
    client = signed_in.client
    studies = [] if "Choose" in message else shareable(client)[:1]
    before = len(stored_shares(signed_in))
    status, page, link, pin = create_share(client, studies, **fields)
    assert status == 400 and message in page and link is None and pin is None
    assert len(stored_shares(signed_in)) == before


def test_a_study_of_someone_else_cannot_be_shared(signed_in: Harness) -> None:
    client = signed_in.client
    mine = shareable(client)[:1]
    status, page, _, _ = create_share(client, [*mine, "1.2.3.4.5.6.7.8.9"], days="7")
    assert status == 400 and "cannot be shared" in page


def test_unknown_links_and_forged_forms_are_refused(signed_in: Harness) -> None:
    client = signed_in.client
    assert client.get("/share/" + "A" * 43).status_code == 404
    assert client.get("/share/not-a-token").status_code == 404
    _, _, link, pin = create_share(client, shareable(client)[:1], label="CSRF")
    assert link and pin
    client.get(link)
    forged = client.post(link, data={"pin": pin}, follow_redirects=False)
    assert forged.status_code == 400
    # Without a share session, the share pages and images say so rather than redirect.
    client.cookies.clear()
    assert client.get("/share/view").status_code == 401
    assert client.get("/portal/shares", follow_redirects=False).status_code == 303


def test_a_share_is_a_consent_until_withdrawn(signed_in: Harness, patient: Patient) -> None:
    client = signed_in.client
    studies = shareable(client)[:2]
    _, _, link, _ = create_share(client, studies, label="Consent check")
    assert link
    system = signed_in.backend_token("system/*.rs")
    bundle = client.get(f"/fhir/Consent?patient={patient.fhir_id}", headers=bearer(system)).json()
    mine = next(
        e["resource"]
        for e in bundle["entry"]
        if e["resource"]["provision"]["actor"][0]["reference"]["display"] == "Consent check"
    )
    Consent.model_validate(mine)
    assert mine["id"].startswith("share-") and mine["status"] == "active"
    assert [d["reference"]["reference"] for d in mine["provision"]["data"]] == [
        f"ImagingStudy/{uid}" for uid in studies
    ]
    share_id = mine["id"].removeprefix("share-")
    assert signed_in.call(signed_in.services.shares.revoke, share_id, patient.account_id)
    again = client.get(f"/fhir/Consent/{mine['id']}", headers=bearer(system)).json()
    assert again["status"] == "inactive"
    other = signed_in.patient_token("someone-else", "launch/patient patient/Consent.rs")
    assert client.get(f"/fhir/Consent/{mine['id']}", headers=bearer(other)).status_code == 404


@pytest.fixture
def smtp_server() -> Iterator[tuple[int, list[object]]]:
    received: list[object] = []

    class Keep(Message):
        def handle_message(self, message: object) -> None:
            received.append(message)

    port = free_port()
    controller = Controller(Keep(), hostname="127.0.0.1", port=port)
    controller.start()
    try:
        yield port, received
    finally:
        controller.stop()


def test_the_link_is_mailed_but_never_the_pin(
    tmp_path: Path,
    embedded_data_dir: Path,
    smtp_server: tuple[int, list[object]],
) -> None:
    port, received = smtp_server
    with portal_harness(
        tmp_path,
        embedded_data_dir,
        Clock(),
        smtp_host="127.0.0.1",
        smtp_port=port,
        smtp_security="none",
        smtp_from="Image Share <images@hospital.example>",
    ) as mailing:
        patient = enroll(mailing, "Mail Patient")
        assert portal_sign_in(mailing.client, patient.code) == 303
        status, page, link, pin = create_share(
            mailing.client,
            shareable(mailing.client)[:1],
            label="Dr. Mail",
            email="dr.mail@clinic.example",
        )
        assert status == 201 and link and pin, page
        assert "We emailed the link to" in page
        assert len(received) == 1
        message = received[0]
        body = message.get_payload(decode=True).decode()  # type: ignore[attr-defined]
        assert message["To"] == "dr.mail@clinic.example"  # type: ignore[index]
        assert link in body and pin not in body and "PIN" in body
        # A bad address is refused before anything is made or mailed.
        status, page, _, _ = create_share(
            mailing.client, shareable(mailing.client)[:1], email="not an address"
        )
        assert status == 400 and "email address" in page and len(received) == 1


def test_nothing_happens_that_cannot_be_recorded(
    signed_in: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = signed_in.client
    studies = shareable(client)[:1]
    _, _, link, pin = create_share(client, studies, label="Audit down")
    assert link and pin
    before = len(stored_shares(signed_in))

    class AuditDatabaseDown:
        """Every way the auditor reaches its database (sessions, its engine, and the
        autocommit engine single rows go through) fails."""

        def __call__(self, *args: object, **kwargs: object) -> None:
            raise RuntimeError("the audit database is down")

        begin = connect = __call__

    audit = signed_in.services.audit
    for way in ("sessions", "_engine", "_single"):
        monkeypatch.setattr(audit, way, AuditDatabaseDown())
    # The right PIN does not open the share when the opening cannot be recorded.
    opened = enter_pin(client, link, pin)
    assert opened.status_code == 500 and "could not be recorded" in opened.text
    assert "gateway_share" not in opened.headers.get("set-cookie", "")
    assert client.get("/share/view").status_code == 401
    # Nor does a new share work: its link and PIN are never shown, and it is withdrawn.
    status, _, made_link, made_pin = create_share(client, studies, label="Not made")
    assert status == 500 and made_link is None and made_pin is None
    monkeypatch.undo()
    assert enter_pin(client, link, pin).status_code == 303
    unshown = [s for s in stored_shares(signed_in) if s.label == "Not made"]
    assert len(unshown) == 1 and unshown[0].revoked_at is not None
    assert len(stored_shares(signed_in)) == before + 1
