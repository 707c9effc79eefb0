"""What replicas and workers share through the database must not race at start:
two processes migrating one database together, and two processes signing their
first token together, on SQLite and on PostgreSQL."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import func, select

from gateway.auth.keys import KeyStore
from gateway.store.database import Database
from gateway.store.models import SigningKey
from tests.portal.support import DATABASES
from tests.support.postgres import throwaway_database


@pytest.fixture(params=DATABASES)
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'gateway.db'}"
    else:
        with throwaway_database() as url:
            yield url


def upgrade_together(
    url: str, folder: Path, processes: int
) -> list[subprocess.CompletedProcess[str]]:
    env = {"GATEWAY_DATABASE_URL": url, "GATEWAY_DATA_DIR": str(folder), "PATH": "/usr/bin:/bin"}
    started = [
        subprocess.Popen(
            [sys.executable, "-m", "gateway", "db", "upgrade"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for _ in range(processes)
    ]
    results = []
    for process in started:
        out, _ = process.communicate(timeout=120)
        results.append(subprocess.CompletedProcess(process.args, process.returncode, out, ""))
    return results


@pytest.mark.postgres
def test_replicas_migrating_one_database_together_all_succeed(tmp_path: Path) -> None:
    # `serve --migrate` on every replica, or a migration job racing a replica.
    with throwaway_database() as url:
        results = upgrade_together(url, tmp_path, 3)
        failed = [r.stdout[-2000:] for r in results if r.returncode != 0]
        assert not failed, failed

        async def current() -> tuple[str | None, str | None]:
            database = Database(url)
            try:
                return await database.current_revision(), await database.head_revision()
            finally:
                await database.dispose()

        revision, head = asyncio.run(current())
        assert revision == head


def test_processes_signing_their_first_token_together_share_one_key(database_url: str) -> None:
    async def run() -> tuple[set[str], int]:
        databases = [Database(database_url) for _ in range(3)]
        try:
            await databases[0].upgrade()
            stores = [KeyStore(database.sessions) for database in databases]
            kids = {kid for kid, _ in await asyncio.gather(*(s.current() for s in stores))}
            async with databases[0].sessions() as session:
                count = await session.scalar(
                    select(func.count())
                    .select_from(SigningKey)
                    .where(SigningKey.retired_at.is_(None))
                )
            return kids, int(count or 0)
        finally:
            for database in databases:
                await database.dispose()

    kids, current_keys = asyncio.run(run())
    assert current_keys == 1
    assert len(kids) == 1
