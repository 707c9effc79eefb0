"""Failed guesses per client address: portal sign-in, OAuth sign-in and share PINs answer 429."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from urllib.parse import urlencode

import pytest
from sqlalchemy import update

from gateway.auth.clients import ClientKind
from gateway.store.models import AttemptWindow, utcnow
from tests.auth.test_authorize import PASSPHRASE, REDIRECT, authorize_params, hidden, pkce
from tests.auth.test_oauth_api import Harness
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

LIMIT = 3


@pytest.fixture(params=DATABASES)
def harness(
    request: pytest.FixtureRequest, tmp_path: Path, embedded_data_dir: Path
) -> Iterator[Harness]:
    with portal_harness(
        tmp_path, embedded_data_dir, Clock(), request.param, secret_attempts_per_ip=LIMIT
    ) as made:
        yield made


@pytest.fixture
def patient(harness: Harness) -> Patient:
    return enroll(harness)


def test_portal_sign_in_waits_after_too_many_failures(harness: Harness, patient: Patient) -> None:
    client = harness.client
    for _ in range(LIMIT):
        assert portal_sign_in(client, "12345678", "wrong passphrase!") == 401
    page = client.get("/portal/signin")
    blocked = client.post(
        "/portal/signin",
        data={
            "csrf_token": hidden(page.text, "csrf_token"),
            "mode": "patient",
            "access_code": patient.code,
            "passphrase": PASSPHRASE,
        },
        follow_redirects=False,
    )
    # Even the right passphrase waits: the address, not the account, is throttled.
    assert blocked.status_code == 429
    assert 0 < int(blocked.headers["retry-after"]) <= 900
    assert "Too many failed attempts" in blocked.text
    # When the window is over, the patient gets in.
    _age_windows(harness)
    assert portal_sign_in(client, patient.code) == 303


def test_oauth_sign_in_shares_the_sign_in_counter(harness: Harness, patient: Patient) -> None:
    client = harness.client
    for _ in range(LIMIT):
        assert portal_sign_in(client, "12345678", "wrong passphrase!") == 401
    app = harness.call(
        harness.services.auth.clients.add,
        name="Throttled app",
        kind=ClientKind.public,
        redirect_uris=[REDIRECT],
    ).client.client_id
    _, challenge = pkce()
    client.cookies.clear()
    started = client.get(
        "/oauth/authorize?" + urlencode(authorize_params(app, challenge)), follow_redirects=False
    )
    page = client.get(started.headers["location"]).text
    blocked = client.post(
        "/oauth/signin",
        data={
            "csrf_token": hidden(page, "csrf_token"),
            "request": hidden(page, "request"),
            "mode": "patient",
            "access_code": patient.code,
            "passphrase": PASSPHRASE,
        },
        follow_redirects=False,
    )
    assert blocked.status_code == 429 and "retry-after" in blocked.headers


def test_share_pins_have_their_own_counter(harness: Harness, patient: Patient) -> None:
    client = harness.client
    assert portal_sign_in(client, patient.code) == 303
    links = []
    for _ in range(2):
        _, _, link, pin = create_share(client, shareable(client)[:1])
        assert link and pin
        links.append((link, pin))
    wrong = lambda pin: "000000" if pin != "000000" else "999999"  # noqa: E731
    # Guesses spread over two links (each far from its own lock) still hit the address limit.
    assert enter_pin(client, links[0][0], wrong(links[0][1])).status_code == 401
    assert enter_pin(client, links[1][0], wrong(links[1][1])).status_code == 401
    assert enter_pin(client, links[0][0], wrong(links[0][1])).status_code == 401
    blocked = enter_pin(client, links[1][0], links[1][1])
    assert blocked.status_code == 429 and "retry-after" in blocked.headers
    # The portal's sign-in counter is another one.
    client.cookies.clear()
    assert portal_sign_in(client, patient.code) == 303


def test_the_wait_is_said_in_whole_minutes_rounded_up(harness: Harness, patient: Patient) -> None:
    client = harness.client
    for _ in range(LIMIT):
        assert portal_sign_in(client, "12345678", "wrong passphrase!") == 401
    for age, words in (
        (timedelta(minutes=13, seconds=1), "Try again in 2 minutes."),  # 119 s left
        (timedelta(minutes=14, seconds=30), "Try again in 1 minute."),
    ):
        _age_windows(harness, age)
        page = client.get("/portal/signin")
        blocked = client.post(
            "/portal/signin",
            data={
                "csrf_token": hidden(page.text, "csrf_token"),
                "mode": "patient",
                "access_code": patient.code,
                "passphrase": PASSPHRASE,
            },
        )
        assert blocked.status_code == 429 and words in blocked.text, blocked.text


def _age_windows(harness: Harness, age: timedelta = timedelta(minutes=16)) -> None:
    async def run() -> None:
        async with harness.services.database.sessions() as session:
            await session.execute(update(AttemptWindow).values(window_start=utcnow() - age))
            await session.commit()

    harness.call(run)
