"""Every sign-in and every activation costs one argon2 computation, whatever the answer.

Timing must not tell a known access code from an unknown one, a locked account
from an open one, or a wrong birth date from a right one. Argon2 is the only
slow step, so the test counts argon2 computations per path (never time).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from tests.auth.test_authorize import PASSPHRASE, hidden
from tests.auth.test_oauth_api import Harness
from tests.portal.support import DATABASES, Clock, enroll, portal_harness, portal_sign_in
from tests.support.browsers import counted_argon2

BIRTH_DATE = "1961-04-12"


@pytest.fixture(params=DATABASES)
def harness(
    request: pytest.FixtureRequest, tmp_path: Path, embedded_data_dir: Path
) -> Iterator[Harness]:
    with portal_harness(
        tmp_path, embedded_data_dir, Clock(), request.param, secret_attempts_per_ip=1000
    ) as made:
        yield made


def activate(client: TestClient, code: str, birth_date: str = BIRTH_DATE) -> int:
    client.cookies.clear()
    page = client.get("/portal/signin")
    answer = client.post(
        "/portal/signin",
        data={
            "csrf_token": hidden(page.text, "csrf_token"),
            "mode": "activate",
            "access_code": code,
            "birth_date": birth_date,
            "passphrase": "a brand new passphrase",
        },
        follow_redirects=False,
    )
    return answer.status_code


def new_code(harness: Harness) -> str:
    account = harness.call(
        harness.services.auth.accounts.enroll_patient, "p-work", BIRTH_DATE, "Not yet active"
    )
    return str(account.login)


def locked_code(harness: Harness) -> str:
    patient = enroll(harness, "Locked Out")
    for _ in range(5):
        harness.client.cookies.clear()
        assert portal_sign_in(harness.client, patient.code, "wrong passphrase") == 401
    return patient.code


def test_sign_in_costs_one_argon2_verify_on_every_path(harness: Harness) -> None:
    client = harness.client
    patient = enroll(harness)
    inactive, locked = new_code(harness), locked_code(harness)
    paths = {
        "right": (patient.code, PASSPHRASE, 303),
        "wrong passphrase": (patient.code, "wrong passphrase", 401),
        "unknown code": ("12345678", PASSPHRASE, 401),
        "not activated yet": (inactive, PASSPHRASE, 401),
        "locked account": (locked, PASSPHRASE, 401),
    }
    with counted_argon2() as work:
        for name, (code, passphrase, status) in paths.items():
            client.cookies.clear()
            assert portal_sign_in(client, code, passphrase) == status, name
            assert work.take() == Counter(verify=1), name


def test_activation_costs_one_argon2_computation_on_every_path(harness: Harness) -> None:
    client = harness.client
    fresh, other = new_code(harness), new_code(harness)
    activated, locked = enroll(harness).code, locked_code(harness)
    paths = {
        "right": (fresh, BIRTH_DATE, 303),
        "wrong birth date": (other, "1970-01-01", 401),
        "unknown code": ("12345678", BIRTH_DATE, 401),
        "already activated": (activated, BIRTH_DATE, 401),
        "locked account": (locked, BIRTH_DATE, 401),
    }
    with counted_argon2() as work:
        for name, (code, birth_date, status) in paths.items():
            assert activate(client, code, birth_date) == status, name
            # One computation, as for a sign-in: the new passphrase's hash, made on every
            # path before anything is known, and kept only when the activation is right.
            assert work.take() == Counter(hash=1), name
