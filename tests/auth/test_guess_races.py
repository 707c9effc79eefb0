"""Guesses that arrive together: the account lock and the per-address limit still hold.

Each guess takes its try with one conditional UPDATE before its secret is
checked, so parallel requests (here ``asyncio.gather`` over separate browsers
from one address) cannot get more tries than sequential ones. On SQLite and
on PostgreSQL.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import select

from gateway.auth.clients import ClientKind
from gateway.store.models import Account, AttemptWindow
from tests.auth.test_authorize import PASSPHRASE, REDIRECT
from tests.auth.test_oauth_api import Harness
from tests.portal.support import (
    DATABASES,
    Clock,
    create_share,
    enroll,
    portal_harness,
    portal_sign_in,
    shareable,
)
from tests.support.browsers import Browser, counted_argon2

LIMIT = 10
PARALLEL = 60


def harness_with(
    request: pytest.FixtureRequest, tmp_path: Path, data_dir: Path, limit: int
) -> Iterator[Harness]:
    with portal_harness(
        tmp_path, data_dir, Clock(), request.param, secret_attempts_per_ip=limit
    ) as made:
        yield made


@pytest.fixture(params=DATABASES)
def roomy(
    request: pytest.FixtureRequest, tmp_path: Path, embedded_data_dir: Path
) -> Iterator[Harness]:
    """A gateway whose per-address limit is out of the way: only the account lock counts."""
    yield from harness_with(request, tmp_path, embedded_data_dir, 1000)


@pytest.fixture(params=DATABASES)
def limited(
    request: pytest.FixtureRequest, tmp_path: Path, embedded_data_dir: Path
) -> Iterator[Harness]:
    yield from harness_with(request, tmp_path, embedded_data_dir, LIMIT)


def stored_account(harness: Harness, account_id: str) -> Account:
    async def load() -> Account:
        async with harness.services.database.sessions() as session:
            found = await session.get(Account, account_id)
            assert found is not None
            return found

    return harness.call(load)  # type: ignore[no-any-return]


def failures_counted(harness: Harness, surface: str) -> int:
    async def load() -> int:
        async with harness.services.database.sessions() as session:
            windows = await session.scalars(
                select(AttemptWindow).where(AttemptWindow.key.startswith(f"{surface}:"))
            )
            return sum(w.failures for w in windows)

    return harness.call(load)  # type: ignore[no-any-return]


def together(harness: Harness, browsers: list[Browser], **fields: str) -> list[int]:
    """Every browser posts its form at once; the statuses."""

    async def run() -> list[int]:
        try:
            answers = await asyncio.gather(*(b.post(**fields) for b in browsers))
            return [a.status_code for a in answers]
        finally:
            for browser in browsers:
                await browser.aclose()

    return harness.call(run)  # type: ignore[no-any-return]


def portal_browsers(harness: Harness, count: int) -> list[Browser]:
    async def prepare() -> list[Browser]:
        return [await Browser(harness).portal_form() for _ in range(count)]

    return harness.call(prepare)  # type: ignore[no-any-return]


def test_parallel_wrong_passphrases_lock_the_account(roomy: Harness) -> None:
    patient = enroll(roomy)
    browsers = portal_browsers(roomy, 20)
    statuses = together(
        roomy, browsers, mode="patient", access_code=patient.code, passphrase="wrong passphrase"
    )
    assert statuses == [401] * 20
    account = stored_account(roomy, patient.account_id)
    assert account.locked_until is not None
    assert account.locked_until.replace(tzinfo=UTC) > datetime.now(UTC)
    # The right passphrase, after them, is refused: the account is locked.
    assert portal_sign_in(roomy.client, patient.code) == 401


def test_five_wrong_answers_in_a_row_lock_and_a_right_one_resets(roomy: Harness) -> None:
    patient = enroll(roomy)
    for _ in range(4):
        assert portal_sign_in(roomy.client, patient.code, "wrong passphrase") == 401
    # The fifth try locks as it is taken; its right answer lifts the lock and resets the count.
    assert portal_sign_in(roomy.client, patient.code) == 303
    account = stored_account(roomy, patient.account_id)
    assert (account.failed_attempts, account.locked_until) == (0, None)
    roomy.client.cookies.clear()
    for _ in range(5):
        assert portal_sign_in(roomy.client, patient.code, "wrong passphrase") == 401
    assert stored_account(roomy, patient.account_id).locked_until is not None
    assert portal_sign_in(roomy.client, patient.code) == 401


def test_parallel_portal_sign_ins_from_one_address_get_only_the_limit(limited: Harness) -> None:
    browsers = portal_browsers(limited, PARALLEL)
    with counted_argon2() as work:
        statuses = together(
            limited, browsers, mode="patient", access_code="12345678", passphrase="wrong!"
        )
    assert statuses.count(401) == LIMIT and statuses.count(429) == PARALLEL - LIMIT
    assert work.take()["verify"] == LIMIT
    assert failures_counted(limited, "sign-in") == LIMIT


def test_parallel_oauth_sign_ins_from_one_address_get_only_the_limit(limited: Harness) -> None:
    app = limited.call(
        limited.services.auth.clients.add,
        name="Guessing app",
        kind=ClientKind.public,
        redirect_uris=[REDIRECT],
    ).client.client_id

    async def prepare() -> list[Browser]:
        return [await Browser(limited).oauth_form(app) for _ in range(PARALLEL)]

    browsers = limited.call(prepare)
    with counted_argon2() as work:
        statuses = together(
            limited, browsers, mode="patient", access_code="12345678", passphrase="wrong!"
        )
    assert statuses.count(401) == LIMIT and statuses.count(429) == PARALLEL - LIMIT
    assert work.take()["verify"] == LIMIT


def test_parallel_pins_from_one_address_get_only_the_limit(limited: Harness) -> None:
    patient = enroll(limited)
    assert portal_sign_in(limited.client, patient.code) == 303
    study = shareable(limited.client)[:1]
    links = []
    for _ in range(PARALLEL // 4):  # four guesses per link: no link locks itself
        _, _, link, pin = create_share(limited.client, study)
        assert link and pin
        links.append((link, "000000" if pin != "000000" else "999999"))

    async def prepare() -> list[Browser]:
        return [await Browser(limited).pin_form(link) for link, _ in links for _ in range(4)]

    browsers = limited.call(prepare)
    wrong = [pin for _, pin in links for _ in range(4)]

    async def guess() -> list[int]:
        try:
            answers = await asyncio.gather(
                *(b.post(pin=p) for b, p in zip(browsers, wrong, strict=True))
            )
            return [a.status_code for a in answers]
        finally:
            for browser in browsers:
                await browser.aclose()

    with counted_argon2() as work:
        statuses = limited.call(guess)
    assert statuses.count(401) == LIMIT and statuses.count(429) == PARALLEL - LIMIT
    assert work.take()["verify"] == LIMIT
    assert failures_counted(limited, "share-pin") == LIMIT


def test_right_answers_give_their_try_back(limited: Harness) -> None:
    """Only failures use the address's budget, even when right answers come in parallel."""
    patient = enroll(limited)
    for _ in range(LIMIT - 1):
        assert portal_sign_in(limited.client, f"{secrets.randbelow(10**8):08d}", "wrong!") == 401
    browsers = portal_browsers(limited, 4)
    # The account allows these four at once, and each right one gives its try back.
    statuses = together(
        limited, browsers, mode="patient", access_code=patient.code, passphrase=PASSPHRASE
    )
    assert statuses == [303] * 4
    assert failures_counted(limited, "sign-in") == LIMIT - 1
    assert portal_sign_in(limited.client, "12345678", "wrong!") == 401
    limited.client.cookies.clear()
    assert portal_sign_in(limited.client, patient.code) == 429


def test_a_short_passphrase_at_activation_uses_no_try(limited: Harness) -> None:
    account = limited.call(
        limited.services.auth.accounts.enroll_patient, "p-short", "1961-04-12", "Short"
    )
    browsers = portal_browsers(limited, 1)
    statuses = together(
        limited,
        browsers,
        mode="activate",
        access_code=account.login,
        birth_date="1961-04-12",
        passphrase="short",
    )
    assert statuses == [400]
    assert failures_counted(limited, "sign-in") == 0
