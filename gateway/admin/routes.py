"""``/admin``: the staff enrollment API, for backend clients holding ``admin/enrollments``.

``POST /admin/enrollments`` gives a patient an access code (as ``gateway
patients enroll`` does) and answers with the code and the address of a
printable letter; ``GET /admin/enrollments/{id}/letter`` serves that letter.
Errors are JSON ``{"error", "error_description"}``. The access code is a
credential: it goes to the caller only, never to the audit trail or the logs.
"""

from __future__ import annotations

import logging
import re
from datetime import date
from pathlib import Path
from typing import Any

import orjson
from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import BaseRoute, Route

from gateway import forms
from gateway.audit import AuditEntry
from gateway.auth.client_auth import bearer_token
from gateway.auth.tokens import AccessGrant
from gateway.authorization import staff_access
from gateway.errors import NotFound, UpstreamError
from gateway.fhir import mapping
from gateway.services import Services
from gateway.store.models import Account

logger = logging.getLogger(__name__)
SCOPE = "admin/enrollments"
MAX_BODY = 16 << 10
NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}
LETTER_HEADERS = {
    **NO_STORE,
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; "
    "frame-ancestors 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}
_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
templates = Environment(
    loader=FileSystemLoader(Path(__file__).parent / "templates"),
    autoescape=select_autoescape(["html"]),
)


class Refusal(Exception):
    def __init__(
        self, status: int, error: str, description: str, headers: dict[str, str] | None = None
    ) -> None:
        self.status = status
        self.error = error
        self.description = description
        self.headers = headers or {}

    def response(self) -> JSONResponse:
        return JSONResponse(
            {"error": self.error, "error_description": self.description},
            status_code=self.status,
            headers={**NO_STORE, **self.headers},
        )


async def admin_grant(request: Request, services: Services, scope: str = SCOPE) -> AccessGrant:
    """The caller's grant, if it is a backend token holding the admin scope ``scope``."""
    token = bearer_token(request.headers.get("authorization"))
    grant = await services.auth.tokens.check(token) if token else None
    if grant is None:
        challenge = 'Bearer realm="gateway"' + (', error="invalid_token"' if token else "")
        raise Refusal(
            401,
            "invalid_token",
            "A valid access token is required."
            if token is None
            else "The access token is not valid (unknown, expired or revoked).",
            {"WWW-Authenticate": challenge},
        )
    # A token on behalf of a person (account_id) never administers, whatever its scope says.
    if scope not in grant.scope or grant.account_id is not None:
        raise Refusal(
            403,
            "insufficient_scope",
            f"The token's scope does not include {scope}.",
            {
                "WWW-Authenticate": 'Bearer realm="gateway", error="insufficient_scope", '
                f'scope="{scope}"'
            },
        )
    return grant


def _prefers_html(accept: str) -> bool:
    """Does ``accept`` rank text/html above application/json? A tie (``*/*``) is JSON."""
    html = json = 0.0
    for part in accept.split(","):
        media, *params = (p.strip().lower() for p in part.split(";"))
        quality = 1.0
        for param in params:
            name, _, value = param.partition("=")
            if name.strip() == "q":
                try:
                    quality = float(value)
                except ValueError:
                    quality = 0.0
        if media in ("text/html", "text/*"):
            html = max(html, quality)
        elif media in ("application/json", "application/*"):
            json = max(json, quality)
    return html > json


def _birth_date(value: Any) -> str:
    if not isinstance(value, str) or not _DATE.fullmatch(value):
        raise Refusal(400, "invalid_request", "birthDate must be a date, YYYY-MM-DD.")
    try:
        parsed = date.fromisoformat(value)
    except ValueError:
        raise Refusal(400, "invalid_request", "birthDate is not a real date.") from None
    if parsed > date.today():
        raise Refusal(400, "invalid_request", "birthDate is in the future.")
    return value


async def read_json(request: Request, what: str = "the request") -> dict[str, Any]:
    """A JSON object body of at most 16 KiB, or a Refusal saying what is wrong."""
    return await _body(request, what)


async def patient_named(services: Services, body: dict[str, Any]) -> str:
    return await _patient_id(services, body)


async def _body(request: Request, what: str = "the enrollment") -> dict[str, Any]:
    media = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media != "application/json" and not media.endswith("+json"):
        raise Refusal(415, "invalid_request", f"Send {what} as application/json.")
    try:
        raw = await forms.read_body(request, MAX_BODY)
    except forms.BodyRejected as exc:
        raise Refusal(exc.status, "invalid_request", exc.message) from None
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise Refusal(400, "invalid_request", "The body is not valid JSON.") from None
    if not isinstance(body, dict):
        raise Refusal(400, "invalid_request", "The body must be a JSON object.")
    return body


async def _patient_id(services: Services, body: dict[str, Any]) -> str:
    """The FHIR Patient id the body names, by id or by (issuer, PatientID)."""
    by_id, identifier = body.get("patient"), body.get("identifier")
    if (by_id is None) == (identifier is None):
        raise Refusal(400, "invalid_request", "Give either patient or identifier.")
    if by_id is not None:
        if not isinstance(by_id, str) or not 0 < len(by_id) <= 64:
            raise Refusal(400, "invalid_request", "patient must be a FHIR Patient id.")
        if await services.records.patients.key_of(by_id) is None:
            raise Refusal(404, "not_found", f"Patient/{by_id} is not known.")
        return by_id
    system = identifier.get("system", "") if isinstance(identifier, dict) else None
    value = identifier.get("value") if isinstance(identifier, dict) else None
    if not isinstance(system, str) or not isinstance(value, str) or not 0 < len(value) <= 64:
        raise Refusal(400, "invalid_request", "identifier needs a value (and a system) as text.")
    if len(system) > 64:
        raise Refusal(400, "invalid_request", "identifier.system is too long.")
    return await services.records.patients.identify(system, value)


async def _from_archive(
    services: Services, grant: AccessGrant, fhir_id: str
) -> tuple[str | None, str]:
    """Birth date and display name as the archive's Patient carries them."""
    try:
        study = await services.records.patients.read(staff_access(grant), fhir_id)
        patient = mapping.patient(study, fhir_id)
    except NotFound:
        return None, ""
    except UpstreamError:
        raise Refusal(
            502, "temporarily_unavailable", "The archive could not be asked for the patient."
        ) from None
    names = patient.get("name") or [{}]
    return patient.get("birthDate"), str(names[0].get("text", ""))


def _urls(services: Services, account_id: str) -> tuple[str, str]:
    base = services.settings.public_url
    return f"{base}/portal/signin", f"{base}/admin/enrollments/{account_id}/letter"


def _delay(hours: float) -> str:
    if hours >= 24 and hours % 24 == 0:
        days = int(hours // 24)
        return f"{days} day" if days == 1 else f"{days} days"
    return f"{hours:g} hour" if hours == 1 else f"{hours:g} hours"


def _letter(services: Services, account: Account, status: int, **headers: str) -> HTMLResponse:
    settings = services.settings
    code = account.login
    html = templates.get_template("letter.html").render(
        name=account.display_name,
        code=f"{code[:4]} {code[4:]}" if len(code) == 8 else code,
        portal=_urls(services, account.id)[0],
        activated=account.secret_hash is not None,
        delay=_delay(settings.release_delay_hours) if settings.release_delay_hours else "",
        delay_varies=bool(settings.release_delay_by_modality.strip()),
    )
    return HTMLResponse(html, status_code=status, headers={**LETTER_HEADERS, **headers})


async def enroll(request: Request) -> Response:
    services: Services = request.state.services
    try:
        grant = await admin_grant(request, services)
        body = await _body(request)
        birth_date = _birth_date(body["birthDate"]) if "birthDate" in body else None
        name = body.get("name", "")
        if not isinstance(name, str) or len(name) > 200:
            raise Refusal(400, "invalid_request", "name must be text of at most 200 characters.")
        fhir_id = await _patient_id(services, body)
        if birth_date is None or not name.strip():
            archived_birth, archived_name = await _from_archive(services, grant, fhir_id)
            birth_date = birth_date or archived_birth
            name = name.strip() or archived_name
        if not birth_date:
            raise Refusal(
                400,
                "invalid_request",
                "No birth date was given and the archive has none: send birthDate.",
            )
    except Refusal as refusal:
        return refusal.response()
    account = await services.auth.accounts.enroll_patient(fhir_id, birth_date, name.strip())
    await services.audit.record(
        AuditEntry(
            category="admin",
            action="enroll",
            outcome=201,
            client_id=grant.client_id,
            patient=fhir_id,
            detail=f"account {account.id}",
        )
    )
    logger.info("client %s enrolled Patient/%s (account %s)", grant.client_id, fhir_id, account.id)
    portal, letter_url = _urls(services, account.id)
    headers = {"Location": letter_url}
    if _prefers_html(request.headers.get("accept", "")):
        return _letter(services, account, 201, **headers)
    return JSONResponse(
        {
            "id": account.id,
            "access_code": account.login,
            "patient": {"reference": f"Patient/{fhir_id}"},
            "portal": portal,
            "letter": letter_url,
        },
        status_code=201,
        headers={**NO_STORE, **headers},
    )


async def letter(request: Request) -> Response:
    services: Services = request.state.services
    try:
        grant = await admin_grant(request, services)
    except Refusal as refusal:
        return refusal.response()
    account_id = request.path_params["account_id"]
    account = await services.auth.accounts.get(account_id) if len(account_id) <= 64 else None
    if account is None or account.kind != "patient":
        return Refusal(404, "not_found", "No such enrollment.").response()
    await services.audit.record(
        AuditEntry(
            category="admin",
            action="letter",
            outcome=200,
            client_id=grant.client_id,
            patient=account.patient_fhir_id,
            detail=f"account {account.id}",
        )
    )
    return _letter(services, account, 200)


def routes() -> list[BaseRoute]:
    """Below ``/admin`` (``admin/transfers.py`` adds its own)."""
    return [
        Route("/enrollments", enroll, methods=["POST"]),
        Route("/enrollments/{account_id}/letter", letter, methods=["GET"]),
    ]
