"""``gateway serve`` SIGKILLed mid-request, then started again: nothing half done survives.

On a file SQLite database and on PostgreSQL, a real gateway process is killed
at random moments (seeded) and restarted on the same port, database and data
folder, as a supervisor would:

- during STOW-RS uploads whose bodies stream slowly: every instance a 200
  acknowledged is retrievable after the restart;
- around the consent that creates a grant: a grant exists iff its audit record
  does (no half grant, no phantom record), and the pending request is either
  still usable (no grant was made) or consumed together with a grant; a code
  the app received before the kill still redeems.
"""

from __future__ import annotations

import asyncio
import random
import re
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import httpx
import pytest
from pydicom import dcmread
from pydicom.uid import generate_uid
from sqlalchemy import func, select

from fixtures.generate import BENCH_PATIENT_ID
from gateway.dicomweb.file_store import FileStoreUpstream
from gateway.store.database import Database
from gateway.store.models import AuditRecord, Grant
from tests.auth.test_authorize import REDIRECT, authorize_params, pkce
from tests.faults.support import (
    PASSPHRASE,
    Backend,
    Findings,
    add_public_client,
    enroll_patient,
    hidden,
)
from tests.support.gateway_process import GatewayProcess
from tests.support.tcp_proxy import TcpProxy, tcp_proxy

pytestmark = [pytest.mark.slow]
DATABASES = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
STOW_TRIALS = 2
CONSENT_TRIALS = 4
SEED = 20261130


@dataclass
class Deployment:
    gateway: GatewayProcess
    database_url: str  # direct, for the test's own reads and set-up
    data_dir: Path
    proxy: TcpProxy | None  # PostgreSQL is reached through it, so its statements can be counted


@pytest.fixture(params=DATABASES)
def deployment(
    request: pytest.FixtureRequest, tmp_path: Path, fixture_files: list[Path]
) -> Iterator[Deployment]:
    data_dir = tmp_path / "var"

    async def seed() -> None:
        store = FileStoreUpstream(data_dir / "dicom")
        try:
            datasets = [dcmread(p) for p in fixture_files]
            chosen = [ds for ds in datasets if str(ds.PatientID) == BENCH_PATIENT_ID][:20]
            result = await store.store_instances(chosen)
            assert not result.failed
        finally:
            await store.aclose()

    asyncio.run(seed())
    with ExitStack() as stack:
        proxy = None
        if request.param == "sqlite":
            url = served = f"sqlite+aiosqlite:///{tmp_path / 'gateway.db'}"
        else:
            from tests.support.postgres import throwaway_database

            url = stack.enter_context(throwaway_database())
            proxy = stack.enter_context(tcp_proxy(("127.0.0.1", 5432)))
            served = url.replace("@127.0.0.1:5432/", f"@127.0.0.1:{proxy.port}/")
            assert served != url
        process = GatewayProcess(
            tmp_path / "gw",
            data_dir=str(data_dir),
            database_url=served,
            auth_required="true",
            release_delay_hours="0",
        )
        process.start()
        stack.callback(process.stop)
        yield Deployment(process, url, data_dir, proxy)


# -- STOW ---------------------------------------------------------------------------


def _stow_body(template: Any, boundary: str) -> tuple[bytes, str, list[str]]:
    """Three new instances of one new study: (body, study UID, SOP instance UIDs)."""
    study, series = generate_uid(), generate_uid()
    parts, uids = [], []
    for _ in range(3):
        ds = template.copy()
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        buffer = BytesIO()
        ds.save_as(buffer, enforce_file_format=True)
        parts.append(buffer.getvalue())
        uids.append(str(ds.SOPInstanceUID))
    body = b"".join(
        f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + part + b"\r\n"
        for part in parts
    )
    return body + f"--{boundary}--\r\n".encode(), study, uids


def _slowly(body: bytes, pieces: int = 20, pause: float = 0.01) -> Iterator[bytes]:
    step = max(1, len(body) // pieces)
    for start in range(0, len(body), step):
        time.sleep(pause)
        yield body[start : start + step]


def _upload_until_killed(
    base: str, bearer: dict[str, str], template: Any, acknowledged: dict[str, list[str]]
) -> None:
    boundary = "fault-test-boundary"
    headers = {
        **bearer,
        "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}',
        "Accept": "application/dicom+json",
    }
    while True:
        body, study, uids = _stow_body(template, boundary)
        try:
            answer = httpx.post(
                f"{base}/dicomweb/studies", content=_slowly(body), headers=headers, timeout=30
            )
        except httpx.TransportError:
            return
        if answer.status_code == 200:
            acknowledged[study] = uids


def test_every_acknowledged_stow_survives_a_kill(
    deployment: Deployment, fixture_files: list[Path]
) -> None:
    findings = Findings()
    chance = random.Random(SEED)
    gateway = deployment.gateway
    backend = Backend(deployment.database_url, deployment.data_dir)
    template = next(
        ds
        for ds in (dcmread(p) for p in fixture_files)
        if str(ds.PatientID) == BENCH_PATIENT_ID and "PixelData" in ds
    )
    acknowledged: dict[str, list[str]] = {}
    for trial in range(STOW_TRIALS):
        bearer = backend.token(gateway.url)
        uploads = threading.Thread(
            target=_upload_until_killed, args=(gateway.url, bearer, template, acknowledged)
        )
        uploads.start()
        delay = chance.uniform(0.15, 1.2)
        time.sleep(delay)
        gateway.kill()
        uploads.join(30)
        assert not uploads.is_alive(), "an upload hung after the gateway died"
        gateway.start()
        print(f"STOW trial {trial}: killed at {delay:.2f} s, {len(acknowledged)} acknowledged")
        bearer = backend.token(gateway.url)
        for study, uids in acknowledged.items():
            found = httpx.get(
                f"{gateway.url}/dicomweb/studies/{study}/instances", headers=bearer, timeout=30
            )
            stored = (
                {item["00080018"]["Value"][0] for item in found.json()}
                if found.status_code == 200
                else set()
            )
            findings.expect(
                set(uids) <= stored,
                f"trial {trial} (killed at {delay:.2f} s): acknowledged study {study} lost "
                f"{sorted(set(uids) - stored)} (QIDO {found.status_code})",
            )
    assert acknowledged, "no STOW was acknowledged before the kills: nothing was tested"
    findings.check()


# -- consent --------------------------------------------------------------------------


def _grants_and_records(url: str, client_id: str) -> tuple[int, int]:
    async def count() -> tuple[int, int]:
        database = Database(url)
        try:
            async with database.sessions() as session:
                grants = await session.scalar(
                    select(func.count()).select_from(Grant).where(Grant.client_id == client_id)
                )
                records = await session.scalar(
                    select(func.count())
                    .select_from(AuditRecord)
                    .where(
                        AuditRecord.client_id == client_id,
                        AuditRecord.category == "consent",
                        AuditRecord.action == "grant",
                    )
                )
                return int(grants or 0), int(records or 0)
        finally:
            await database.dispose()

    return asyncio.run(count())


class Launch:
    """One app's authorization, up to its consent form (a browser with its own cookies)."""

    def __init__(self, base: str, client_id: str, access_code: str) -> None:
        self.base, self.client_id = base, client_id
        self.verifier, challenge = pkce()
        self.browser = httpx.Client(base_url=base, timeout=30)
        params = authorize_params(client_id, challenge, aud=f"{base}/fhir")
        started = self.browser.get("/oauth/authorize?" + urlencode(params))
        assert started.status_code == 303, started.text
        page = self.browser.get(started.headers["location"]).text
        signed = self.browser.post(
            "/oauth/signin",
            data={
                "csrf_token": hidden(page, "csrf_token"),
                "request": hidden(page, "request"),
                "mode": "patient",
                "access_code": access_code,
                "passphrase": PASSPHRASE,
            },
        )
        assert signed.status_code == 303, signed.text
        consent = self.browser.get(signed.headers["location"]).text
        scopes = re.findall(r'name="scope" value="([^"]*)"', consent)
        self.form = {
            "csrf_token": hidden(consent, "csrf_token"),
            "request": hidden(consent, "request"),
            "decision": "approve",
            "scope": scopes,
        }

    def approve(self) -> httpx.Response:
        return self.browser.post("/oauth/consent", data=self.form)

    def redeem(self, location: str) -> int:
        code = parse_qs(urlsplit(location).query).get("code", [""])[0]
        answer = httpx.post(
            f"{self.base}/oauth/token",
            data={
                "grant_type": "authorization_code",
                "code": code,
                "redirect_uri": REDIRECT,
                "code_verifier": self.verifier,
                "client_id": self.client_id,
            },
            timeout=30,
        )
        return answer.status_code


class KillBefore:
    """Counts what the gateway sends its database; kills it just before the n-th send."""

    def __init__(self, gateway: GatewayProcess, at: int | None = None) -> None:
        self.gateway, self.at, self.sent = gateway, at, 0

    def __call__(self, data: bytes) -> bool:
        self.sent += 1
        if self.at is not None and self.sent >= self.at:
            self.gateway.kill()
            return False
        return True


class KillAfterCommits:
    """Watches a SQLite database's write-ahead log grow (one step per commit) and kills the
    gateway right after the n-th commit; without ``at``, only counts."""

    def __init__(self, gateway: GatewayProcess, wal: Path, at: int | None = None) -> None:
        self.gateway, self.wal, self.at, self.commits = gateway, wal, at, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def _size(self) -> int:
        try:
            return self.wal.stat().st_size
        except FileNotFoundError:
            return 0

    def _watch(self) -> None:
        size = self._size()
        while not self._stop.is_set():
            now = self._size()
            if now != size:
                size = now
                self.commits += 1
                if self.at is not None and self.commits >= self.at:
                    self.gateway.kill()
                    return
            time.sleep(0.0001)

    def __enter__(self) -> KillAfterCommits:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)


def test_a_kill_around_consent_leaves_no_half_grant(deployment: Deployment) -> None:
    """Kills between the database writes of a consent, at a random one of them (seeded):
    on PostgreSQL just before a statement the request sends (the proxy counts them), on
    SQLite just after a commit (its write-ahead log grows)."""
    findings = Findings()
    chance = random.Random(SEED)
    gateway, url, data_dir = deployment.gateway, deployment.database_url, deployment.data_dir
    proxy = deployment.proxy
    backend = Backend(url, data_dir, scope="system/*.rs")
    found = httpx.get(
        f"{gateway.url}/fhir/Patient?identifier={BENCH_PATIENT_ID}",
        headers=backend.token(gateway.url),
    ).json()
    access_code = enroll_patient(url, data_dir, found["entry"][0]["resource"]["id"])

    wal = Path(url.removeprefix("sqlite+aiosqlite:///") + "-wal")
    # An undisturbed consent: how many times it talks to PostgreSQL, or commits to SQLite.
    calibration = Launch(gateway.url, add_public_client(url, data_dir, REDIRECT), access_code)
    counter = KillBefore(gateway)
    if proxy is not None:
        proxy.intercept = counter
        assert calibration.approve().status_code == 302
        steps = counter.sent
    else:
        with KillAfterCommits(gateway, wal) as commits:
            assert calibration.approve().status_code == 302
            time.sleep(0.2)
        steps = commits.commits
    # One commit on SQLite once the grant, its record and the pending request go together.
    assert steps >= 1, "the consent wrote nothing to watch"

    for trial in range(CONSENT_TRIALS):
        client_id = add_public_client(url, data_dir, REDIRECT)
        launch = Launch(gateway.url, client_id, access_code)
        answers: list[httpx.Response | Exception] = []

        def approve(launch: Launch = launch, answers: list[Any] = answers) -> None:
            try:
                answers.append(launch.approve())
            except httpx.TransportError as exc:
                answers.append(exc)

        posting = threading.Thread(target=approve)
        if proxy is not None:
            # The grant is made in the second half of the request (after the jacket is read).
            at = chance.randint(max(1, steps // 2), steps)
            proxy.intercept = KillBefore(gateway, at)
            where = f"trial {trial} (killed before database send {at} of {steps})"
            posting.start()
            posting.join(30)
            proxy.intercept = None
        else:
            at = chance.randint(1, steps)
            where = f"trial {trial} (killed after commit {at} of {steps})"
            with KillAfterCommits(gateway, wal, at):
                posting.start()
                posting.join(30)
        gateway.kill()
        gateway.start()

        grants, records = _grants_and_records(url, client_id)
        answer = answers[0] if answers else None
        print(f"{where}: app got {answer!r}; {grants} grant(s), {records} consent record(s)")
        findings.expect(
            grants == records,
            f"{where}: {grants} grant(s) but {records} consent record(s) "
            "(a half grant or a phantom audit record)",
        )
        if isinstance(answer, httpx.Response) and answer.status_code == 302:
            findings.expect(
                launch.redeem(answer.headers["location"]) == 200,
                f"{where}: the code the app received before the kill does not redeem",
            )
            continue
        again = launch.approve()
        if again.status_code == 302:
            findings.expect(
                grants == 0, f"{where}: the request was still usable though a grant was made"
            )
            findings.expect(
                launch.redeem(again.headers["location"]) == 200,
                f"{where}: the retried consent's code does not redeem",
            )
            grants, records = _grants_and_records(url, client_id)
            findings.expect(
                (grants, records) == (1, 1),
                f"{where}: after the retry {grants} grant(s), {records} record(s)",
            )
        else:
            findings.expect(
                grants == 1,
                f"{where}: the pending request was consumed but {grants} grant(s) were made "
                f"(retry answered {again.status_code})",
            )
        launch.browser.close()
    calibration.browser.close()
    findings.check()
