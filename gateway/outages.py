"""Is this failure an outage of something the gateway depends on? One answer, for every layer.

A database that refuses connections, resets them or times out, and an archive
that cannot be reached, are not the client's fault nor a bug: the client is
told 503 with ``Retry-After`` and may try again. Constraint violations,
programming errors and anything else unexpected are not outages; they stay
500s, with their traceback in the log.
"""

from __future__ import annotations

import errno
import socket
import sqlite3

import asyncpg  # type: ignore[import-untyped]
from sqlalchemy import exc as sa

from gateway.errors import DatabaseUnavailable, GatewayError, NotRecorded, UpstreamUnavailable

# SQLite's words for a database file it cannot use right now (sqlite3 has no finer types).
_SQLITE_OUTAGES = ("unable to open database", "disk i/o error", "database is locked")
_ASYNCPG_OUTAGES = (
    asyncpg.PostgresConnectionError,  # refused, rejected, gone
    asyncpg.exceptions.OperatorInterventionError,  # shutting down, starting up
    asyncpg.exceptions.InsufficientResourcesError,  # too many connections, disk full
)

_UNREACHABLE = frozenset({errno.ENETUNREACH, errno.EHOSTUNREACH, errno.ENETDOWN, errno.EHOSTDOWN})


def outage(exc: BaseException) -> GatewayError | None:
    """The 503 to answer for ``exc``, or None when it is not an outage."""
    if isinstance(exc, UpstreamUnavailable):
        return exc
    if isinstance(exc, NotRecorded):
        # The audit record could not be written: an outage if the database was the reason.
        return outage(exc.__context__) if exc.__context__ is not None else None
    if isinstance(exc, GatewayError):
        return None
    if _database_down(exc):
        return DatabaseUnavailable()
    return None


def _database_down(exc: BaseException) -> bool:
    # SQLAlchemy raises its own error "from" the driver's: follow the causes, not the
    # context (an error raised while handling an outage is not itself one).
    current: BaseException | None = exc
    for _ in range(8):
        if current is None:
            return False
        if _is_outage(current):
            return True
        current = current.__cause__
    return False


def _is_outage(exc: BaseException) -> bool:
    if isinstance(exc, sa.DBAPIError) and exc.connection_invalidated:
        return True
    if isinstance(exc, sa.TimeoutError):  # no pooled connection came free in time
        return True
    if isinstance(exc, _ASYNCPG_OUTAGES):
        return True
    if isinstance(exc, asyncpg.InterfaceError):
        return "connection is closed" in str(exc) or "connection was closed" in str(exc)
    if isinstance(exc, sqlite3.OperationalError):
        return str(exc).lower().startswith(_SQLITE_OUTAGES)
    # Refused, reset, timed out, name not found, no route to the host.
    if isinstance(exc, ConnectionError | TimeoutError | socket.gaierror):
        return True
    return isinstance(exc, OSError) and exc.errno in _UNREACHABLE
