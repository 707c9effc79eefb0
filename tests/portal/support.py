"""Shared by the portal tests: a gateway whose clock the test moves, and page helpers."""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient

from gateway.app import create_app
from gateway.services import Services
from tests.auth.test_authorize import PASSPHRASE, hidden, patient_fhir_id
from tests.auth.test_oauth_api import Harness
from tests.conftest import make_settings, migrate

BASE = "https://gateway.example"
DATABASES = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]


class Clock:
    """Now, as the gateway sees it; tests move it forward."""

    def __init__(self) -> None:
        self.now = datetime.now(UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> None:
        self.now += timedelta(**delta)


@dataclass
class Patient:
    code: str
    fhir_id: str
    account_id: str


@contextmanager
def portal_harness(
    workdir: Path, data_dir: Path, clock: Clock, database: str = "sqlite", **settings: Any
) -> Iterator[Harness]:
    """A gateway on the embedded store and SQLite, or a throwaway PostgreSQL database."""
    if database == "postgres":
        from tests.support.postgres import throwaway_database

        with throwaway_database() as url:
            with portal_harness(workdir, data_dir, clock, database_url=url, **settings) as made:
                yield made
        return
    settings.setdefault("release_delay_hours", 0)
    settings.setdefault("database_url", f"sqlite+aiosqlite:///{workdir / 'g.db'}")
    configured = make_settings(
        data_dir,
        auth_required=True,
        public_url=BASE,
        **settings,
    )
    migrate(configured)
    services = Services.build(configured, clock=clock)
    with TestClient(create_app(configured, services=services), base_url=BASE) as client:
        yield Harness(client, services)


def enroll(harness: Harness, name: str = "Jane Doe") -> Patient:
    fhir_id = patient_fhir_id(harness)
    account = harness.call(
        harness.services.auth.accounts.enroll_patient, fhir_id, "1961-04-12", name
    )
    harness.call(harness.services.auth.accounts.activate, account.login, "1961-04-12", PASSPHRASE)
    return Patient(account.login, fhir_id, account.id)


def portal_sign_in(client: TestClient, code: str, passphrase: str = PASSPHRASE) -> int:
    """Sign in to the portal in ``client``'s cookie jar; the answer's status."""
    page = client.get("/portal/signin")
    answer = client.post(
        "/portal/signin",
        data={
            "csrf_token": hidden(page.text, "csrf_token"),
            "mode": "patient",
            "access_code": code,
            "passphrase": passphrase,
        },
        follow_redirects=False,
    )
    return answer.status_code


def create_share(
    client: TestClient, studies: list[str], **fields: str
) -> tuple[int, str, str | None, str | None]:
    """Create a share from the portal: (status, page, link, PIN)."""
    form = client.get("/portal/shares").text
    answer = client.post(
        "/portal/shares",
        data={"csrf_token": hidden(form, "csrf_token"), "study": studies, **fields},
    )
    link = re.search(r'id="share-link">([^<]+)<', answer.text)
    pin = re.search(r'id="share-pin">([0-9]{6})<', answer.text)
    return (
        answer.status_code,
        answer.text,
        link.group(1) if link else None,
        pin.group(1) if pin else None,
    )


def shareable(client: TestClient) -> list[str]:
    return re.findall(r'name="study" value="([^"]+)"', client.get("/portal/shares").text)


def enter_pin(client: TestClient, link: str, pin: str) -> Any:
    page = client.get(link)
    return client.post(
        link,
        data={"csrf_token": hidden(page.text, "csrf_token"), "pin": pin},
        follow_redirects=False,
    )
