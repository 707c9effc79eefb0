"""The patient index on SQLite (the default) and on the real PostgreSQL."""

from __future__ import annotations

import asyncio
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
    # A schema of its own per test keeps runs independent on the shared database.
    schema = f"t_{uuid.uuid4().hex[:12]}"
    admin = Database(POSTGRES_URL)
    async with admin.engine.begin() as connection:
        await connection.execute(text(f'CREATE SCHEMA "{schema}"'))
    db = Database(POSTGRES_URL)
    from sqlalchemy import event

    @event.listens_for(db.engine.sync_engine, "connect")
    def _search_path(dbapi_connection, _record):  # type: ignore[no-untyped-def]
        cursor = dbapi_connection.cursor()
        cursor.execute(f'SET search_path TO "{schema}"')
        cursor.close()

    yield db
    await db.dispose()
    async with admin.engine.begin() as connection:
        await connection.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
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
    first = await index.ids_for([("HOSP-A", "12345"), ("HOSP-B", "12345"), ("", "777")])
    again = await index.ids_for([("HOSP-B", "12345"), ("HOSP-A", "12345")])
    assert again[("HOSP-A", "12345")] == first[("HOSP-A", "12345")]
    assert first[("HOSP-A", "12345")] != first[("HOSP-B", "12345")]
    assert all("12345" not in fhir_id and "777" not in fhir_id for fhir_id in first.values())
    assert await index.key_for(first[("", "777")]) == ("", "777")
    assert await index.key_for("unknown") is None
    assert await index.keys_for([first[("HOSP-A", "12345")], "nope"]) == {
        first[("HOSP-A", "12345")]: ("HOSP-A", "12345")
    }


async def test_concurrent_first_sightings_agree(database: Database) -> None:
    await database.upgrade()
    index = PatientIndex(database.sessions)
    keys = [("HOSP-A", f"P{n}") for n in range(30)]
    results = await asyncio.gather(*(index.ids_for(keys) for _ in range(5)))
    assert all(result == results[0] for result in results)
    assert len(set(results[0].values())) == 30
