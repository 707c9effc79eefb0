"""Engine, sessions and migrations: the same code on SQLite and PostgreSQL."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, event, text
from sqlalchemy.ext.asyncio import (
    AsyncConnection,
    AsyncEngine,
    async_sessionmaker,
    create_async_engine,
)

MIGRATIONS = Path(__file__).parent / "migrations"
# pg_advisory_xact_lock key: replicas started together migrate one after the other.
MIGRATION_LOCK = 0x6761_7465_7761_79  # "gateway"


class DatabaseNotMigrated(RuntimeError):
    """The schema is older than this code; ``gateway db upgrade`` fixes it."""


def alembic_config(url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def create_engine(url: str) -> AsyncEngine:
    if url.startswith("sqlite"):
        engine = create_async_engine(url, connect_args={"timeout": 30})

        @event.listens_for(engine.sync_engine, "connect")
        def _sqlite_pragmas(dbapi_connection, _record):  # type: ignore[no-untyped-def]
            # WAL lets readers go on while a writer commits; foreign keys are off by default.
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.close()

        return engine
    # No pre-ping: it costs a round trip on every checkout (0.26 ms of a 0.95 ms token
    # check, bench/token_check.py). Connections are recycled after five minutes instead;
    # after a database restart a stale connection fails one request and is replaced.
    # Twenty kept connections and no overflow: under load, overflow connections were
    # opened and closed again for every burst (a TLS attempt, authentication and a new
    # server process each; bench/load.py's profile), and a request now waits for a
    # free connection instead. At most twenty per process, as before.
    return create_async_engine(url, pool_recycle=300, pool_size=20, max_overflow=0)


def autocommit(engine: AsyncEngine) -> AsyncEngine:
    """The same engine and pool for single statements that commit alone: no BEGIN before
    and no ROLLBACK after, two round trips fewer per request on PostgreSQL. A read made so
    sees everything committed before it (a token revoked on another replica included), as
    a read in a transaction of its own does. ``begin()`` on it commits the statement as
    it runs. SQLite keeps its engine: its driver begins no transaction for a read, and
    switching a connection's mode costs a thread hop each way."""
    if engine.dialect.name == "sqlite":
        return engine
    return engine.execution_options(isolation_level="AUTOCOMMIT")


class Database:
    def __init__(self, url: str) -> None:
        self.url = url
        if url.startswith("sqlite"):
            _ensure_sqlite_folder(url)
        self.engine = create_engine(url)
        self.sessions = async_sessionmaker(self.engine, expire_on_commit=False)

    async def current_revision(self) -> str | None:
        async with self.engine.connect() as connection:
            return await connection.run_sync(_current_revision)

    async def head_revision(self) -> str | None:
        return ScriptDirectory.from_config(alembic_config(self.url)).get_current_head()

    async def ensure_migrated(self) -> None:
        current, head = await self.current_revision(), await self.head_revision()
        if current != head:
            raise DatabaseNotMigrated(
                f"the database is at revision {current or 'empty'} and this gateway needs "
                f"{head}: run `gateway db upgrade` (or `gateway serve --migrate`)"
            )

    async def upgrade(self, revision: str = "head") -> None:
        config = alembic_config(self.url)
        async with self.engine.begin() as connection:
            await hold_advisory_lock(connection, MIGRATION_LOCK)
            await connection.run_sync(_run_upgrade, config, revision)

    async def ping(self) -> None:
        """Raise when the database cannot answer a trivial query."""
        async with self.engine.connect() as connection:
            await connection.execute(text("SELECT 1"))

    async def dispose(self) -> None:
        await self.engine.dispose()


async def hold_advisory_lock(connection: AsyncConnection, key: int) -> None:
    """On PostgreSQL, wait until no other transaction holds ``key``, and hold it until this
    one ends. SQLite needs none: one process migrates (``serve --workers`` migrates in the
    parent before it starts the workers), and a second writer waits for the first."""
    if connection.dialect.name == "postgresql":
        await connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": key})


def _current_revision(connection: Connection) -> str | None:
    return MigrationContext.configure(connection).get_current_revision()


def _run_upgrade(connection: Connection, config: Config, revision: str) -> None:
    config.attributes["connection"] = connection
    command.upgrade(config, revision)


def _ensure_sqlite_folder(url: str) -> None:
    path = url.split(":///", 1)[-1]
    if path and path != ":memory:":
        Path(path).parent.mkdir(parents=True, exist_ok=True)
