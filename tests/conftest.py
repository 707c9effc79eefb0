"""Shared test fixtures: generated DICOM, a private Orthanc, gateways on both backends."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import pytest
from pydicom import dcmread
from starlette.testclient import TestClient

if TYPE_CHECKING:
    from tests.support.orthanc import OrthancServer

from gateway.app import create_app
from gateway.dicomweb.file_store import FileStoreUpstream
from gateway.settings import Settings, load_settings
from gateway.store.database import Database

POSTGRES_URL = os.environ.get(
    "GATEWAY_TEST_POSTGRES_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/test"
)


def make_settings(data_dir: Path, **overrides: object) -> Settings:
    """Settings isolated from the developer's environment and .env file."""
    for name in [
        k for k in os.environ if k.startswith("GATEWAY_") and k != "GATEWAY_TEST_POSTGRES_URL"
    ]:
        os.environ.pop(name)
    # The API suites test what the API answers; tests/auth tests the token gate in
    # front of it (auth_required=True), over the same routes.
    overrides.setdefault("auth_required", False)
    return load_settings(_env_file=None, data_dir=data_dir, **overrides)


def migrate(settings: Settings) -> None:
    async def run() -> None:
        database = Database(settings.effective_database_url)
        await database.upgrade()
        await database.dispose()

    asyncio.run(run())


@pytest.fixture(scope="session")
def fixture_files(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    from fixtures.generate import write_fixtures

    return write_fixtures(tmp_path_factory.mktemp("fixtures"))


@pytest.fixture(scope="session")
def embedded_data_dir(tmp_path_factory: pytest.TempPathFactory, fixture_files: list[Path]) -> Path:
    """A data folder whose embedded store was filled through STOW (DICOMfileClient)."""
    data_dir = tmp_path_factory.mktemp("embedded")

    async def seed() -> None:
        store = FileStoreUpstream(data_dir / "dicom")
        result = await store.store_instances([dcmread(p) for p in fixture_files])
        await store.aclose()
        assert not result.failed, result.failed

    asyncio.run(seed())
    return data_dir


@pytest.fixture(scope="session")
def orthanc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OrthancServer]:
    from tests.support.orthanc import run_orthanc

    with run_orthanc(tmp_path_factory.mktemp("orthanc")) as server:
        yield server


@pytest.fixture(scope="session")
def seeded_orthanc(orthanc: OrthancServer, fixture_files: list[Path]) -> OrthancServer:
    from gateway.dicomweb.http_upstream import HttpUpstream

    async def seed() -> None:
        upstream = HttpUpstream(orthanc.dicomweb_url)
        datasets = [dcmread(p) for p in fixture_files]
        for start in range(0, len(datasets), 20):
            result = await upstream.store_instances(datasets[start : start + 20])
            assert not result.failed, result.failed
        await upstream.aclose()

    asyncio.run(seed())
    return orthanc


@dataclass
class Gateway:
    """A gateway under test, reached in-process through Starlette's TestClient."""

    backend: str
    settings: Settings
    client: TestClient

    def get(self, path: str, **kwargs: object):  # type: ignore[no-untyped-def]
        return self.client.get(path, **kwargs)  # type: ignore[arg-type]


def _gateway(backend: str, settings: Settings) -> Iterator[Gateway]:
    migrate(settings)
    with TestClient(create_app(settings)) as client:
        yield Gateway(backend, settings, client)


@pytest.fixture(scope="session")
def embedded_gateway(
    tmp_path_factory: pytest.TempPathFactory, embedded_data_dir: Path
) -> Iterator[Gateway]:
    settings = make_settings(
        embedded_data_dir,
        database_url=f"sqlite+aiosqlite:///{tmp_path_factory.mktemp('db') / 'gateway.db'}",
    )
    yield from _gateway("embedded", settings)


@pytest.fixture(scope="session")
def orthanc_gateway(
    tmp_path_factory: pytest.TempPathFactory, seeded_orthanc: OrthancServer
) -> Iterator[Gateway]:
    settings = make_settings(
        tmp_path_factory.mktemp("orthanc-gateway"), dicomweb_url=seeded_orthanc.dicomweb_url
    )
    yield from _gateway("orthanc", settings)


@pytest.fixture(params=["embedded", pytest.param("orthanc", marks=pytest.mark.orthanc)])
def gateway(request: pytest.FixtureRequest) -> Gateway:
    """The same FHIR API tests run against both backends."""
    return request.getfixturevalue(f"{request.param}_gateway")  # type: ignore[no-any-return]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def serve_gateway(workdir: Path, **settings: str) -> Iterator[str]:
    """`gateway serve` under uvicorn in a child process; yields its base URL."""
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    env.update({f"GATEWAY_{k.upper()}": v for k, v in settings.items()})
    env.setdefault("GATEWAY_DATA_DIR", str(workdir / "var"))
    env.setdefault("GATEWAY_AUTH_REQUIRED", "false")
    env.setdefault("GATEWAY_DATABASE_URL", f"sqlite+aiosqlite:///{workdir / 'gateway.db'}")
    env.setdefault("GATEWAY_PUBLIC_URL", base)
    log_path = workdir / "gateway.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "gateway", "serve", "--port", str(port), "--migrate"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        for _ in range(150):
            try:
                if httpx.get(f"{base}/readyz").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if process.poll() is not None:
                raise RuntimeError(log_path.read_text(errors="replace"))
            time.sleep(0.1)
        yield base
    finally:
        process.terminate()
        process.wait(timeout=10)


@pytest.fixture(scope="session")
def served(embedded_data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The gateway over real HTTP, on the embedded store."""
    with serve_gateway(tmp_path_factory.mktemp("served"), data_dir=str(embedded_data_dir)) as url:
        yield url


@pytest.fixture(scope="session")
def served_orthanc(
    seeded_orthanc: OrthancServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """The gateway over real HTTP, in front of the private Orthanc."""
    workdir = tmp_path_factory.mktemp("served-orthanc")
    with serve_gateway(workdir, dicomweb_url=seeded_orthanc.dicomweb_url) as url:
        yield url
