"""A PostgreSQL database of its own for one test, on the server at 127.0.0.1:5432."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import text

from gateway.store.database import Database
from tests.conftest import POSTGRES_URL


@contextmanager
def throwaway_database() -> Iterator[str]:
    name = f"gateway_test_{uuid.uuid4().hex[:12]}"

    async def run(statement: str) -> None:
        admin = Database(POSTGRES_URL)
        try:
            autocommit = admin.engine.execution_options(isolation_level="AUTOCOMMIT")
            async with autocommit.connect() as connection:
                await connection.execute(text(statement))
        finally:
            await admin.dispose()

    asyncio.run(run(f'CREATE DATABASE "{name}"'))
    try:
        yield POSTGRES_URL.rsplit("/", 1)[0] + f"/{name}"
    finally:
        asyncio.run(run(f'DROP DATABASE "{name}" WITH (FORCE)'))
