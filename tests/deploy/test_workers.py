"""``gateway serve --workers 2``: real worker processes on one socket, on SQLite and on
PostgreSQL. Every request goes on a fresh connection, many at once, so the kernel
spreads them over both workers; whatever one worker did, the other must honour."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from joserfc import jwt
from joserfc.jwk import RSAKey

from gateway.auth.client_auth import JWT_BEARER
from gateway.auth.clients import ClientKind
from gateway.auth.service import AuthServices
from gateway.store.database import Database
from tests.auth.test_authorize import hidden
from tests.conftest import free_port, make_settings
from tests.portal.support import DATABASES
from tests.support.postgres import throwaway_database

pytestmark = [pytest.mark.slow]
ATTEMPTS = 4
SPREAD = 40  # requests at once, each on its own connection


class Served:
    def __init__(self, url: str, database_url: str, data_dir: Path) -> None:
        self.url = url
        self.database_url = database_url
        self.data_dir = data_dir

    def fresh(self) -> httpx.Client:
        """A client that opens a new connection for every request."""
        return httpx.Client(
            base_url=self.url, timeout=30, limits=httpx.Limits(max_keepalive_connections=0)
        )

    def spread(self, method: str, path: str, **options: Any) -> list[httpx.Response]:
        def one(_: int) -> httpx.Response:
            with self.fresh() as client:
                return client.request(method, path, **options)

        with ThreadPoolExecutor(max_workers=8) as pool:
            return list(pool.map(one, range(SPREAD)))


@pytest.fixture(params=DATABASES)
def served(
    request: pytest.FixtureRequest, tmp_path: Path, embedded_data_dir: Path
) -> Iterator[Served]:
    if request.param == "sqlite":
        yield from _serve(
            tmp_path, f"sqlite+aiosqlite:///{tmp_path / 'gateway.db'}", embedded_data_dir
        )
    else:
        with throwaway_database() as url:
            yield from _serve(tmp_path, url, embedded_data_dir)


def _serve(workdir: Path, database_url: str, data_dir: Path) -> Iterator[Served]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    env.update(
        {
            "GATEWAY_DATA_DIR": str(data_dir),
            "GATEWAY_DATABASE_URL": database_url,
            "GATEWAY_AUTH_REQUIRED": "true",
            "GATEWAY_PUBLIC_URL": url,
            "GATEWAY_SECRET_ATTEMPTS_PER_IP": str(ATTEMPTS),
            "GATEWAY_LOG_LEVEL": "warning",
        }
    )
    log = workdir / "serve.log"
    command = [sys.executable, "-m", "gateway", "serve", "--port", str(port), "--workers", "2"]
    with log.open("wb") as out:
        process = subprocess.Popen(
            [*command, "--migrate"], env=env, stdout=out, stderr=subprocess.STDOUT
        )
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert process.poll() is None, log.read_text(errors="replace")
            time.sleep(0.1)
        else:
            raise AssertionError(f"not ready within 60 s:\n{log.read_text(errors='replace')}")
        yield Served(url, database_url, data_dir)
    finally:
        process.terminate()
        process.wait(timeout=30)


def _backend_client(served: Served, key: RSAKey) -> str:
    async def register() -> str:
        database = Database(served.database_url)
        auth = AuthServices.build(
            make_settings(served.data_dir, database_url=served.database_url), database.sessions
        )
        try:
            created = await auth.clients.add(
                name="Backend",
                kind=ClientKind.backend,
                jwks={"keys": [key.as_dict(private=False)]},
                scope="system/*.rs",
                operator=True,
            )
            return created.client.client_id
        finally:
            await auth.aclose()
            await database.dispose()

    return asyncio.run(register())


def _assertion(served: Served, client_id: str, key: RSAKey) -> dict[str, str]:
    claims = {
        "iss": client_id,
        "sub": client_id,
        "aud": f"{served.url}/oauth/token",
        "exp": int(time.time()) + 240,
        "jti": uuid.uuid4().hex,
    }
    header = {"alg": "RS384", "kid": key.kid, "typ": "JWT"}
    return {
        "client_assertion_type": JWT_BEARER,
        "client_assertion": jwt.encode(header, claims, key, algorithms=["RS384"]),
    }


def test_workers_publish_one_signing_key(served: Served) -> None:
    # Each worker makes the key on first use: asked at once, they must agree on one.
    answers = served.spread("GET", "/oauth/jwks")
    assert {a.status_code for a in answers} == {200}
    kids = {tuple(k["kid"] for k in a.json()["keys"]) for a in answers}
    assert len(kids) == 1 and len(next(iter(kids))) == 1, kids


def test_a_token_works_on_every_worker_until_revoked(served: Served) -> None:
    key = RSAKey.generate_key(2048, parameters={"kid": "workers-1"})
    client_id = _backend_client(served, key)
    with served.fresh() as client:
        issued = client.post(
            "/oauth/token",
            data={"grant_type": "client_credentials", **_assertion(served, client_id, key)},
        )
    assert issued.status_code == 200, issued.text
    token = issued.json()["access_token"]
    bearer = {"Authorization": f"Bearer {token}"}
    answers = served.spread("GET", "/fhir/ImagingStudy", headers=bearer)
    assert [a.status_code for a in answers] == [200] * SPREAD
    with served.fresh() as client:
        revoked = client.post(
            "/oauth/revoke", data={"token": token, **_assertion(served, client_id, key)}
        )
    assert revoked.status_code == 200
    answers = served.spread("GET", "/fhir/ImagingStudy", headers=bearer)
    assert [a.status_code for a in answers] == [401] * SPREAD


def test_wrong_sign_ins_count_across_workers(served: Served) -> None:
    with served.fresh() as client:
        page = client.get("/portal/signin")
        form = {
            "csrf_token": hidden(page.text, "csrf_token"),
            "mode": "patient",
            "passphrase": "not the passphrase at all",
        }

        def guess(number: int) -> httpx.Response:
            return client.post(
                "/portal/signin",
                data={**form, "access_code": f"{10_000_000 + number}"},
                follow_redirects=False,
            )

        refused = [guess(n) for n in range(ATTEMPTS * 3)]
    too_many = [r for r in refused if "Too many failed attempts" in r.text]
    # Workers counting apart would allow up to ATTEMPTS each before refusing.
    assert len(too_many) == ATTEMPTS * 2, [r.status_code for r in refused]
    assert all("Too many failed attempts" not in r.text for r in refused[:ATTEMPTS])


def test_many_requests_spread_over_the_workers_all_succeed(served: Served) -> None:
    for path in ("/healthz", "/readyz", "/fhir/metadata", "/portal/signin"):
        answers = served.spread("GET", path)
        assert [a.status_code for a in answers] == [200] * SPREAD, path
