"""What the in-process benchmarks share: a throwaway PostgreSQL database, the app
with its lifespan state, and the line that names the machine."""

from __future__ import annotations

import asyncio
import os
import platform
import tempfile
import uuid
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import text

from gateway.store.database import Database

DEFAULT_POSTGRES = "postgresql+asyncpg://postgres@127.0.0.1:5432/test"


def machine() -> str:
    return f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"


def with_state(app: Any, state: Any) -> Any:
    """The app with its lifespan state in every request, as uvicorn gives it (httpx's
    ASGITransport runs no lifespan)."""

    async def wrapped(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            scope["state"] = dict(state or {})
        await app(scope, receive, send)

    return wrapped


async def postgres_database(admin_url: str) -> tuple[str, Callable[[], Awaitable[None]]]:
    """A new database on the server of ``admin_url``, and how to drop it."""
    name = f"gateway_bench_{uuid.uuid4().hex[:8]}"
    admin = Database(admin_url)
    engine = admin.engine.execution_options(isolation_level="AUTOCOMMIT")
    async with engine.connect() as connection:
        await connection.execute(text(f'CREATE DATABASE "{name}"'))

    async def drop() -> None:
        async with engine.connect() as connection:
            await connection.execute(text(f'DROP DATABASE "{name}" WITH (FORCE)'))
        await admin.dispose()

    return admin_url.rsplit("/", 1)[0] + f"/{name}", drop


@contextmanager
def throwaway_postgres(admin_url: str = DEFAULT_POSTGRES) -> Iterator[str]:
    """For scripts without an event loop of their own: a new database, dropped after."""
    name = f"gateway_bench_{uuid.uuid4().hex[:8]}"

    async def run(statement: str) -> None:
        admin = Database(admin_url)
        try:
            engine = admin.engine.execution_options(isolation_level="AUTOCOMMIT")
            async with engine.connect() as connection:
                await connection.execute(text(statement))
        finally:
            await admin.dispose()

    asyncio.run(run(f'CREATE DATABASE "{name}"'))
    try:
        yield admin_url.rsplit("/", 1)[0] + f"/{name}"
    finally:
        asyncio.run(run(f'DROP DATABASE "{name}" WITH (FORCE)'))


Measure = Callable[[str, Path, int], Awaitable[Any]]


async def on_both_databases(measure: Measure, rounds: int, postgres_url: str) -> dict[str, Any]:
    """``measure(database_url, data_dir, rounds)`` on a fresh SQLite file, then on a
    throwaway PostgreSQL database: the report with both results and the machine."""
    report: dict[str, Any] = {"machine": machine(), "rounds": rounds}
    with tempfile.TemporaryDirectory() as scratch:
        data_dir = Path(scratch)
        report["sqlite"] = await measure(
            f"sqlite+aiosqlite:///{data_dir / 'bench.db'}", data_dir, rounds
        )
        url, drop = await postgres_database(postgres_url)
        try:
            report["postgresql"] = await measure(url, data_dir, rounds)
        finally:
            await drop()
    return report
