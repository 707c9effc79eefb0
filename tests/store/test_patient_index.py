"""The patient index on SQLite (the default) and on the real PostgreSQL."""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy import text

from gateway.store.database import Database, DatabaseNotMigrated
from gateway.store.patients import PatientIndex
from tests.conftest import POSTGRES_URL

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
async def database(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Database]:
    if request.param == "sqlite":
        db = Database(f"sqlite+aiosqlite:///{tmp_path / 'gateway.db'}")
        yield db
        await db.dispose()
        return
    # A database of its own per test: a session-level search_path does not survive
    # the pool resetting connections, a database name does.
    name = f"gateway_test_{uuid.uuid4().hex[:12]}"
    admin = Database(POSTGRES_URL)
    autocommit = admin.engine.execution_options(isolation_level="AUTOCOMMIT")
    async with autocommit.connect() as connection:
        await connection.execute(text(f'CREATE DATABASE "{name}"'))
    db = Database(POSTGRES_URL.rsplit("/", 1)[0] + f"/{name}")
    yield db
    await db.dispose()
    async with autocommit.connect() as connection:
        await connection.execute(text(f'DROP DATABASE "{name}" WITH (FORCE)'))
    await admin.dispose()


async def test_unmigrated_database_is_refused_then_upgrade_fixes_it(database: Database) -> None:
    with pytest.raises(DatabaseNotMigrated, match="gateway db upgrade"):
        await database.ensure_migrated()
    await database.upgrade()
    await database.ensure_migrated()
    assert await database.current_revision() == await database.head_revision()
    await database.upgrade()  # idempotent


async def test_ids_are_stable_opaque_and_per_issuer(database: Database) -> None:
    await database.upgrade()
    index = PatientIndex(database.sessions)
    first = await index.ids_for([("HOSP-A", "MRN-1"), ("HOSP-B", "MRN-1"), ("", "MRN-7")])
    # A fresh index (as on another replica) reads the same ids from the database.
    again = await PatientIndex(database.sessions).ids_for(
        [("HOSP-B", "MRN-1"), ("HOSP-A", "MRN-1")]
    )
    assert again[("HOSP-A", "MRN-1")] == first[("HOSP-A", "MRN-1")]
    assert again[("HOSP-B", "MRN-1")] == first[("HOSP-B", "MRN-1")]
    assert first[("HOSP-A", "MRN-1")] != first[("HOSP-B", "MRN-1")]
    # Opaque: 128 random bits in hex, nothing of the MRN.
    assert all(re.fullmatch(r"[0-9a-f]{32}", fhir_id) for fhir_id in first.values())
    fresh = PatientIndex(database.sessions)
    assert await fresh.key_for(first[("", "MRN-7")]) == ("", "MRN-7")
    assert await fresh.key_for("unknown") is None
    assert await fresh.keys_for([first[("HOSP-A", "MRN-1")], "nope"]) == {
        first[("HOSP-A", "MRN-1")]: ("HOSP-A", "MRN-1")
    }


async def test_concurrent_first_sightings_agree(database: Database) -> None:
    await database.upgrade()
    index = PatientIndex(database.sessions)
    keys = [("HOSP-A", f"P{n}") for n in range(30)]
    results = await asyncio.gather(*(index.ids_for(keys) for _ in range(5)))
    assert all(result == results[0] for result in results)
    assert len(set(results[0].values())) == 30
