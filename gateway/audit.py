"""The audit trail: every access and every security event, written before the answer leaves.

``AuditMiddleware`` records each ``/fhir`` and ``/dicomweb`` request (refusals
included) at the moment the response starts, and holds the response until the
record is committed: if the write fails, the client gets a 500 and no data,
so nothing is ever served unrecorded. Security events (sign-in, tokens,
consent, revocation) are recorded by their handlers through ``Auditor``.
Records are served as FHIR ``AuditEvent`` resources shaped after IHE BALP.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, func, insert, select
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from starlette.responses import PlainTextResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.auth.secrets import new_id
from gateway.errors import NotRecorded
from gateway.logs import redact
from gateway.store.database import autocommit
from gateway.store.models import AuditRecord, as_utc, utcnow

logger = logging.getLogger(__name__)
NOT_RECORDED = "The access could not be recorded, so nothing was done or sent."
SEARCH_PARAMETERS: dict[str, tuple[str, str]] = {
    "patient": ("reference", "The patient whose data was used"),
    "date": ("date", "When the event was recorded"),
    "agent": ("token", "A client_id or user (fhirUser) who acted"),
    "entity": ("reference", "ImagingStudy/{uid} or Patient/{id} concerned"),
}


@dataclass(frozen=True)
class AuditEntry:
    category: str
    action: str
    outcome: int
    client_id: str | None = None
    user: str | None = None
    patient: str | None = None
    study: str | None = None
    detail: str = ""
    purpose: str | None = None


@dataclass(frozen=True)
class Actor:
    """Who acts, as the trail names them. A gate (token, portal, share link) puts one
    in the request state; ``user`` is a FHIR reference or ``share/{id}``."""

    client_id: str | None = None
    user: str | None = None
    patient: str | None = None


def share_user(share_id: str) -> str:
    return f"share/{share_id}"


class Auditor:
    def __init__(self, sessions: async_sessionmaker[AsyncSession]) -> None:
        self.sessions = sessions
        # The engine is the sessions' own, looked up here so that ``sessions`` stays the
        # one way to the database.
        self._engine: AsyncEngine = sessions.kw["bind"]
        self._single = autocommit(self._engine)

    async def record(self, *entries: AuditEntry) -> None:
        """Commit the records together, or raise NotRecorded: callers must not go on without."""
        try:
            # Core: every request writes here, and an ORM session's unit of work cost
            # more than the INSERT itself.
            if len(entries) == 1:
                # One row, one statement, committed as it runs (no BEGIN and COMMIT
                # round trips on PostgreSQL).
                async with self._single.begin() as connection:
                    await connection.execute(_INSERT, _values(entries[0]))
                return
            async with self._engine.begin() as connection:  # several: one transaction
                await connection.execute(_INSERT, [_values(entry) for entry in entries])
        except Exception:
            first = entries[0] if entries else None
            logger.exception(
                "audit write failed (%s %s)",
                first.category if first else "-",
                first.action if first else "-",
            )
            raise NotRecorded(NOT_RECORDED) from None

    def adding(self, *entries: AuditEntry) -> Callable[[AsyncSession], Awaitable[None]]:
        """The records, for another change's transaction: they commit with it, or not at all."""

        async def add(session: AsyncSession) -> None:
            session.add_all(_row(entry) for entry in entries)

        return add

    async def search(
        self,
        *,
        patients: frozenset[str] | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        agent: str | None = None,
        study: str | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> tuple[list[AuditRecord], int]:
        """Records, newest first, of any of ``patients`` (None: of anyone); and how many match."""
        conditions: list[ColumnElement[bool]] = []
        if patients is not None:
            conditions.append(AuditRecord.patient.in_(sorted(patients)))
        if since is not None:
            conditions.append(AuditRecord.recorded >= since)
        if until is not None:
            conditions.append(AuditRecord.recorded < until)
        if agent is not None:
            conditions.append((AuditRecord.client_id == agent) | (AuditRecord.user == agent))
        if study is not None:
            conditions.append(AuditRecord.study == study)
        query = select(AuditRecord).where(*conditions).order_by(AuditRecord.recorded.desc())
        counted = select(func.count()).select_from(AuditRecord).where(*conditions)
        async with self.sessions() as session:
            total = int(await session.scalar(counted) or 0)
            if limit <= 0:
                return [], total
            return list(await session.scalars(query.offset(offset).limit(limit))), total

    async def get(self, record_id: str) -> AuditRecord | None:
        async with self.sessions() as session:
            return await session.get(AuditRecord, record_id)


def _values(entry: AuditEntry) -> dict[str, Any]:
    return {
        "id": new_id(),
        "recorded": utcnow(),
        "category": entry.category,
        "action": entry.action,
        "outcome": entry.outcome,
        "client_id": entry.client_id,
        "user": entry.user,
        "patient": entry.patient,
        "study": entry.study,
        "detail": entry.detail[:2000],
        "purpose": entry.purpose,
    }


def _row(entry: AuditEntry) -> AuditRecord:
    return AuditRecord(**_values(entry))


_INSERT = insert(AuditRecord)


def _action(api: str, method: str, path: str) -> str:
    if method == "POST":
        return "store" if api == "dicomweb" else "create"
    parts = [p for p in path.split("/") if p]
    if api == "dicomweb":
        qido = parts and parts[-1] in ("studies", "series", "instances")
        return "search" if qido else "retrieve"
    return "read" if len(parts) >= 2 else "search"


class AuditMiddleware:
    """Wraps an API mount, outside the gates, so refusals are recorded too.

    Every request to a route that declared a need (every route that reaches
    patient data) is recorded, whatever the answer: one record per patient
    whose data the answer holds (the records layer notes them), or one record
    naming the caller's own patient, if any.
    """

    def __init__(
        self,
        app: ASGIApp,
        api: str,
        refusal: Callable[[Scope, Exception], Response] | None = None,
    ) -> None:
        self.app = app
        self.api = api
        # What goes out instead (the app passes one that answers an outage with a 503).
        self.refusal = refusal or (lambda scope, exc: PlainTextResponse(NOT_RECORDED + "\n", 500))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] == "OPTIONS":
            await self.app(scope, receive, send)
            return
        services = scope["state"]["services"]
        recorded = False
        failed = False

        async def audited_send(message: Message) -> None:
            nonlocal recorded, failed
            if message["type"] == "http.response.start" and not recorded:
                recorded = True
                entries = self._entries(scope, message["status"])
                try:
                    if entries:
                        await services.audit.record(*entries)
                except Exception as exc:
                    logger.warning("the answer is withheld: its audit record was not written")
                    failed = True
                    await self.refusal(scope, exc)(scope, receive, send)
                    return
            if failed:
                return  # the body of an answer that could not be recorded is dropped
            await send(message)

        await self.app(scope, receive, audited_send)

    def _entries(self, scope: Scope, status: int) -> list[AuditEntry]:
        state = scope.get("state", {})
        requirement = state.get("requirement")
        if requirement is None:
            return []  # no patient data behind this route (metadata, discovery, unknown paths)
        path = _within(scope)
        access = state.get("access")
        seen = getattr(access, "seen", None)
        actor = getattr(access, "actor", None) or _actor(state)
        params = scope.get("path_params", {})
        study = getattr(seen, "study", None) or params.get("study")
        if study is None and getattr(requirement, "resource_type", "") == "ImagingStudy":
            study = params.get("id")
        patients = sorted(getattr(seen, "patients", ()) or ()) if status < 400 else []
        # A token put in the URL is refused, and not kept in the trail either.
        query = redact(scope.get("query_string", b"").decode("latin-1"))[:500]
        detail = f"{scope['method']} {scope.get('root_path', '')}{path}" + (
            f"?{query}" if query else ""
        )
        return [
            AuditEntry(
                category="dicomweb" if self.api == "dicomweb" else "rest",
                action=_action(self.api, scope["method"], path),
                outcome=status,
                client_id=actor.client_id,
                user=actor.user,
                patient=patient,
                study=str(study)[:64] if study else None,
                detail=detail,
                purpose=getattr(access, "purpose", None),
            )
            for patient in (patients or [actor.patient])
        ]


def _actor(state: dict[str, Any]) -> Actor:
    """Who asked, for a refusal made before any access was decided."""
    principal = state.get("principal")
    grant = getattr(principal, "grant", None)
    context = getattr(grant, "context", {}) or {}
    return Actor(getattr(grant, "client_id", None), context.get("fhirUser"), context.get("patient"))


def _within(scope: Scope) -> str:
    path: str = scope["path"]
    root: str = scope.get("root_path", "")
    return path[len(root) :] if root and path.startswith(root) else path


DCM = "http://dicom.nema.org/resources/ontology/DCM"
SHARE_SYSTEM = "urn:image-share:share-link"
ACT_REASON = "http://terminology.hl7.org/CodeSystem/v3-ActReason"
EVENT_TYPES = {
    "rest": ("http://terminology.hl7.org/CodeSystem/audit-event-type", "rest", "RESTful Operation"),
    "dicomweb": (DCM, "110103", "DICOM Instances Accessed"),
    "login": (DCM, "110114", "User Authentication"),
    "token": (DCM, "110114", "User Authentication"),
    "consent": (DCM, "110137", "User Security Attributes Changed"),
    "share": (DCM, "110106", "Export"),
}
ACTIONS = {"create": "C", "store": "C", "read": "R", "retrieve": "R", "search": "E"}


def audit_event(record: AuditRecord, source: str) -> dict[str, Any]:
    """One record as an R4 AuditEvent (after IHE BALP's shape)."""
    system, code, display = EVENT_TYPES.get(record.category, EVENT_TYPES["rest"])
    outcome = "0" if record.outcome < 400 else "4" if record.outcome < 500 else "8"
    agents: list[dict[str, Any]] = []
    if record.client_id:
        agents.append(
            {
                "type": {"coding": [{"system": DCM, "code": "110150", "display": "Application"}]},
                "who": {"identifier": {"value": record.client_id}},
                "requestor": False,
            }
        )
    if record.user:
        who: dict[str, Any] = (
            {"identifier": {"system": SHARE_SYSTEM, "value": record.user.removeprefix("share/")}}
            if record.user.startswith("share/")
            else {"reference": record.user}
        )
        agents.append(
            {
                "type": {"coding": [{"system": DCM, "code": "110153", "display": "Source"}]},
                "who": who,
                "requestor": True,
            }
        )
    if not agents:
        agents.append({"who": {"display": "anonymous"}, "requestor": True})
    resource: dict[str, Any] = {
        "resourceType": "AuditEvent",
        "id": record.id,
        "type": {"system": system, "code": code, "display": display},
        "subtype": [{"code": record.action, "display": record.action}],
        "action": ACTIONS.get(record.action, "E"),
        "recorded": as_utc(record.recorded).isoformat(timespec="milliseconds"),
        "outcome": outcome,
        "outcomeDesc": f"HTTP {record.outcome}" if record.outcome >= 100 else "",
        "agent": agents,
        "source": {"observer": {"display": source}},
    }
    if not resource["outcomeDesc"]:
        del resource["outcomeDesc"]
    role = "http://terminology.hl7.org/CodeSystem/object-role"
    entities: list[dict[str, Any]] = []
    if record.patient:
        entities.append(
            {
                "what": {"reference": f"Patient/{record.patient}"},
                "role": {"system": role, "code": "1", "display": "Patient"},
            }
        )
    if record.study:
        entities.append(
            {
                "what": {"reference": f"ImagingStudy/{record.study}"},
                "role": {"system": role, "code": "3", "display": "Report"},
            }
        )
    if record.detail:
        entities.append({"description": record.detail})
    if record.purpose:
        resource["purposeOfEvent"] = [{"coding": [{"system": ACT_REASON, "code": record.purpose}]}]
    if entities:
        resource["entity"] = entities
    return resource
