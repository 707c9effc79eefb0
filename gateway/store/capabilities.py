"""Capability URLs' rows: issue, find by secret (with everything that can end them), revoke.

A capability is found only while it is unexpired and unrevoked, and while what
authorized it still stands: the grant of the token that asked for it (revoking
any token revokes its grant), or the share link it serves. That is one query
per request, a join, so a revocation anywhere (the portal, ``/oauth/revoke``, a
replayed code, a withdrawn share) ends the capability at the next request on
every replica.
"""

from __future__ import annotations

import hashlib
import secrets
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import and_, insert, or_, select, update
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from gateway.store.models import Grant, ShareLink, WadoCapability, as_utc

PatientKey = tuple[str, str]
# 256 bits, URL-safe; the guide asks for an unguessable value (at least 128 bits here).
SECRET_BYTES = 32

_CAP = WadoCapability.__table__
_GRANT = Grant.__table__
_SHARE = ShareLink.__table__


def secret_hash(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8", "replace")).hexdigest()


@dataclass(frozen=True)
class Capability:
    id: str
    patients: frozenset[PatientKey]
    studies: frozenset[str]
    reports: bool
    patient_fhir_ids: frozenset[str]
    client_id: str | None
    purpose: str | None
    expires_at: datetime
    share_id: str | None = None


class CapabilityStore:
    def __init__(self, sessions: async_sessionmaker[AsyncSession]) -> None:
        self._sessions = sessions
        engine = sessions.kw.get("bind")
        assert isinstance(engine, AsyncEngine), "sessions must be bound to an engine"
        self._engine: AsyncEngine = engine

    async def issue(
        self,
        *,
        patients: Iterable[PatientKey],
        studies: Iterable[str],
        reports: bool,
        patient_fhir_ids: Iterable[str],
        expires_at: datetime,
        now: datetime,
        client_id: str | None = None,
        purpose: str | None = None,
        grant_id: str | None = None,
        share_id: str | None = None,
    ) -> tuple[str, str]:
        """A new capability; returns (its id, its secret). The secret is shown only here."""
        secret = secrets.token_urlsafe(SECRET_BYTES)
        capability_id = uuid.uuid4().hex
        async with self._engine.begin() as connection:
            await connection.execute(
                insert(WadoCapability).values(
                    id=capability_id,
                    secret_hash=secret_hash(secret),
                    patients=sorted([list(p) for p in set(patients)]),
                    studies=sorted(set(studies)),
                    reports=reports,
                    patient_fhir_ids=sorted(set(patient_fhir_ids)),
                    client_id=client_id,
                    purpose=purpose,
                    grant_id=grant_id,
                    share_id=share_id,
                    created_at=now,
                    expires_at=expires_at,
                )
            )
        return capability_id, secret

    async def find(self, secret: str, now: datetime) -> Capability | None:
        """The capability behind ``secret`` if it still holds (see the module docstring)."""
        if not secret or len(secret) > 200:
            return None
        query = (
            select(_CAP)
            .select_from(
                _CAP.outerjoin(_GRANT, _GRANT.c.id == _CAP.c.grant_id).outerjoin(
                    _SHARE, _SHARE.c.id == _CAP.c.share_id
                )
            )
            .where(
                _CAP.c.secret_hash == secret_hash(secret),
                _CAP.c.revoked_at.is_(None),
                _CAP.c.expires_at > now,
                or_(_CAP.c.grant_id.is_(None), _GRANT.c.revoked_at.is_(None)),
                or_(_CAP.c.grant_id.is_(None), _GRANT.c.id.is_not(None)),
                or_(
                    _CAP.c.share_id.is_(None),
                    and_(
                        _SHARE.c.id.is_not(None),
                        _SHARE.c.revoked_at.is_(None),
                        _SHARE.c.locked_at.is_(None),
                        _SHARE.c.expires_at > now,
                    ),
                ),
            )
        )
        async with self._engine.connect() as connection:
            row = (await connection.execute(query)).mappings().first()
        if row is None:
            return None
        return Capability(
            id=row["id"],
            patients=frozenset((str(p[0]), str(p[1])) for p in row["patients"]),
            studies=frozenset(str(s) for s in row["studies"]),
            reports=bool(row["reports"]),
            patient_fhir_ids=frozenset(str(p) for p in row["patient_fhir_ids"]),
            client_id=row["client_id"],
            purpose=row["purpose"],
            expires_at=as_utc(row["expires_at"]),
            share_id=row["share_id"],
        )

    async def revoke(self, capability_id: str, now: datetime) -> bool:
        async with self._engine.begin() as connection:
            result = await connection.execute(
                update(WadoCapability)
                .where(WadoCapability.id == capability_id, WadoCapability.revoked_at.is_(None))
                .values(revoked_at=now)
            )
        return bool(result.rowcount)

    async def revoke_secret(self, secret: str, now: datetime) -> bool:
        """The holder of a capability URL ends it (``DELETE`` on its base)."""
        async with self._engine.begin() as connection:
            result = await connection.execute(
                update(WadoCapability)
                .where(
                    WadoCapability.secret_hash == secret_hash(secret),
                    WadoCapability.revoked_at.is_(None),
                )
                .values(revoked_at=now)
            )
        return bool(result.rowcount)

    async def extend_for_share(
        self, secret: str, share_id: str, expires_at: datetime, now: datetime
    ) -> bool:
        """Move a share's live capability's end to ``expires_at`` (the caller bounds it by
        the share's own end). False when the secret is not that share's, or no longer holds."""
        async with self._engine.begin() as connection:
            result = await connection.execute(
                update(WadoCapability)
                .where(
                    WadoCapability.secret_hash == secret_hash(secret),
                    WadoCapability.share_id == share_id,
                    WadoCapability.revoked_at.is_(None),
                    WadoCapability.expires_at > now,
                )
                .values(expires_at=expires_at)
            )
        return bool(result.rowcount)

    async def revoke_for_share(self, share_id: str, now: datetime) -> int:
        async with self._engine.begin() as connection:
            result = await connection.execute(
                update(WadoCapability)
                .where(WadoCapability.share_id == share_id, WadoCapability.revoked_at.is_(None))
                .values(revoked_at=now)
            )
        return int(result.rowcount or 0)
