"""Research projects: who may receive donated studies, and how they are de-identified."""

from __future__ import annotations

import base64
import re
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from gateway.research.annex_e import Option
from gateway.research.deid import Profile, ProfileError
from gateway.research.pseudonyms import ProjectKey, Pseudonyms
from gateway.store.database import autocommit
from gateway.store.models import ResearchProject

# Clean Graphics is in the table but the engine refuses it.
OPTIONS = {o.cli_name: o for o in Option if o is not Option.CLEAN_GRAPHICS}
KEY_BYTES = 48
_PROTOCOL = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


class ProjectError(ValueError):
    """A project that cannot be made as asked."""


@dataclass(frozen=True)
class Project:
    """A project as the rest of the gateway sees it; ``key`` never leaves the process."""

    id: str
    name: str
    protocol_id: str
    description: str
    archive_url: str | None
    archive_token: str | None
    options: tuple[str, ...]
    accept_burned_in: bool
    client_id: str | None
    created_at: datetime
    key: ProjectKey

    @property
    def profile(self) -> Profile:
        return Profile(frozenset(OPTIONS[o] for o in self.options), self.accept_burned_in)

    @property
    def pseudonyms(self) -> Pseudonyms:
        return Pseudonyms(self.key)

    @property
    def delivers_to_archive(self) -> bool:
        return bool(self.archive_url)

    def new_uid(self, uid: str) -> str:
        """The UID the project's copies carry for ``uid`` (the original under Retain UIDs)."""
        if Option.RETAIN_UIDS in self.profile.options:
            return uid
        return self.pseudonyms.uid(uid)

    def summary(self) -> dict[str, object]:
        """What staff see of a project (never the key or the archive's credential)."""
        return {
            "id": self.id,
            "name": self.name,
            "protocolId": self.protocol_id,
            "description": self.description,
            "delivery": "archive" if self.archive_url else "download",
            "archiveUrl": self.archive_url,
            "options": list(self.options),
            "acceptBurnedIn": self.accept_burned_in,
            "clientId": self.client_id,
            "created": self.created_at.isoformat(timespec="seconds"),
        }


def _project(row: ResearchProject) -> Project:
    created = row.created_at if row.created_at.tzinfo else row.created_at.replace(tzinfo=UTC)
    return Project(
        id=row.id,
        name=row.name,
        protocol_id=row.protocol_id,
        description=row.description or "",
        archive_url=row.archive_url,
        archive_token=row.archive_token,
        options=tuple(row.options or ()),
        accept_burned_in=bool(row.accept_burned_in),
        client_id=row.client_id,
        created_at=created,
        key=ProjectKey(row.secret.encode("ascii")),
    )


def check_options(names: list[str], accept_burned_in: bool) -> tuple[str, ...]:
    unknown = [n for n in names if n not in OPTIONS]
    if unknown:
        raise ProjectError(
            f"unknown option {', '.join(unknown)}; choose among {', '.join(OPTIONS)}"
        )
    chosen = tuple(dict.fromkeys(names))
    try:
        Profile(frozenset(OPTIONS[n] for n in chosen), accept_burned_in)
    except ProfileError as exc:
        raise ProjectError(str(exc)) from None
    return chosen


class Projects:
    def __init__(self, sessions: async_sessionmaker[AsyncSession]) -> None:
        self.sessions = sessions
        # Asked on every backend request (is_research_client): one statement, no session.
        self._reads = autocommit(sessions.kw["bind"])

    async def add(
        self,
        *,
        name: str,
        protocol_id: str,
        description: str = "",
        archive_url: str | None = None,
        archive_token: str | None = None,
        options: list[str] | None = None,
        accept_burned_in: bool = False,
        client_id: str | None = None,
    ) -> Project:
        """A new project with a new pseudonym key (48 random bytes, base64)."""
        name = name.strip()
        if not name or len(name) > 200:
            raise ProjectError("a project needs a name of at most 200 characters")
        if not _PROTOCOL.fullmatch(protocol_id):
            raise ProjectError("the protocol id is letters, digits, '.', '_' or '-' (at most 64)")
        if archive_url is not None and not re.match(r"https?://[^\s]+$", archive_url):
            raise ProjectError("the archive's DICOMweb URL must be an http(s) URL")
        chosen = check_options(options or [], accept_burned_in)
        row = ResearchProject(
            id=secrets.token_hex(8),
            name=name,
            protocol_id=protocol_id,
            description=description.strip()[:2000],
            archive_url=archive_url.rstrip("/") if archive_url else None,
            archive_token=archive_token or None,
            options=list(chosen),
            accept_burned_in=accept_burned_in,
            secret=base64.b64encode(secrets.token_bytes(KEY_BYTES)).decode("ascii"),
            client_id=client_id or None,
            created_at=datetime.now(UTC),
        )
        async with self.sessions() as session:
            session.add(row)
            try:
                await session.commit()
            except IntegrityError:
                await session.rollback()
                raise ProjectError(
                    "a project with this protocol id (or for this client) exists already"
                ) from None
            await session.refresh(row)
        return _project(row)

    async def all(self) -> list[Project]:
        query = (
            select(ResearchProject)
            .where(ResearchProject.removed_at.is_(None))
            .order_by(ResearchProject.created_at, ResearchProject.id)
        )
        async with self.sessions() as session:
            return [_project(row) for row in await session.scalars(query)]

    async def get(self, project_id: str) -> Project | None:
        async with self.sessions() as session:
            row = await session.get(ResearchProject, project_id[:64])
        return _project(row) if row is not None and row.removed_at is None else None

    async def of_client(self, client_id: str) -> Project | None:
        """The project a research backend client is registered for (None: it is not one)."""
        query = select(ResearchProject).where(
            ResearchProject.client_id == client_id, ResearchProject.removed_at.is_(None)
        )
        async with self.sessions() as session:
            row = (await session.scalars(query)).first()
        return _project(row) if row is not None else None

    async def is_research_client(self, client_id: str) -> bool:
        """Was this client ever registered for a project (removed ones too)? Such a client
        reads de-identified copies only, never the gateway's own FHIR and DICOMweb."""
        query = select(ResearchProject.id).where(ResearchProject.client_id == client_id).limit(1)
        async with self._reads.connect() as connection:
            return (await connection.execute(query)).first() is not None

    async def remove(self, project_id: str) -> bool:
        """Ends the project: no more donations or deliveries; its records stay."""
        statement = (
            update(ResearchProject)
            .where(ResearchProject.id == project_id[:64], ResearchProject.removed_at.is_(None))
            .values(removed_at=datetime.now(UTC))
        )
        async with self.sessions() as session:
            result = await session.execute(statement)
            await session.commit()
        return bool(getattr(result, "rowcount", 0))
