"""The migrations build exactly the tables the models describe."""

from __future__ import annotations

from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine

from gateway.store.database import Database
from gateway.store.models import Base

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def test_models_and_migrations_agree(tmp_path: Path) -> None:
    path = tmp_path / "schema.db"
    database = Database(f"sqlite+aiosqlite:///{path}")
    await database.upgrade()
    await database.dispose()
    engine = create_engine(f"sqlite:///{path}")
    with engine.connect() as connection:
        differences = compare_metadata(MigrationContext.configure(connection), Base.metadata)
    engine.dispose()
    assert differences == []
