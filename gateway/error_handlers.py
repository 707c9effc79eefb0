"""The application's exception handlers: whatever leaves a route or a gate, in its area's format.

Registered on the app by :func:`gateway.app.create_app`, so no route can skip
them. Errors the gateway knows (:mod:`gateway.errors`) and outages of the
database or the archive (:func:`gateway.outages.outage`) are answered as
their area speaks:

- ``/fhir``: an OperationOutcome;
- ``/dicomweb`` and the pages' image routes: PS3.18's status, text and Warning header;
- ``/oauth`` endpoints and ``/admin``: RFC 6749 error JSON (``temporarily_unavailable``
  for an outage);
- the sign-in and consent pages, the portal and share pages: a plain page.

An outage is a 503 with ``Retry-After``; anything else unexpected stays a
500 with its traceback in the log.
"""

from __future__ import annotations

import logging
import sqlite3
from typing import Any

from sqlalchemy.exc import SQLAlchemyError
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.types import Scope

from gateway.audit import NOT_RECORDED
from gateway.auth import authorize
from gateway.dicomweb.routes import error_response as dicomweb_error
from gateway.errors import GatewayError, NotFound, NotRecorded
from gateway.fhir.responses import FhirResponse, operation_outcome
from gateway.outages import outage
from gateway.portal.pages import message

logger = logging.getLogger(__name__)
IMAGE_ROUTES = ("/dicomweb", "/portal/dicomweb", "/share/dicomweb", "/research/dicomweb")
OAUTH_PAGES = ("/oauth/authorize", "/oauth/signin", "/oauth/consent")
PAGES = ("/portal", "/share")
AREAS = ("/fhir", "/dicomweb", "/oauth", "/admin", "/research", *PAGES)
NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}
# RFC 6749's error codes for what the gateway's own errors mean.
OAUTH_ERRORS = {400: "invalid_request", 408: "invalid_request", 503: "temporarily_unavailable"}
PAGE_TITLES = {
    408: "The request took too long",
    502: "Not available right now",
    503: "Not available right now",
    504: "Not available right now",
}


def answer(scope: Scope, exc: GatewayError) -> Response:
    """``exc`` as the area of ``scope``'s path answers errors."""
    path: str = scope.get("path", "")
    headers = dict(exc.headers)
    if _under(path, IMAGE_ROUTES):
        return dicomweb_error(exc.status, exc.message, headers)
    if _under(path, ("/fhir", "/research/fhir")):
        outcome = operation_outcome(exc.status, exc.code, exc.message)
        return FhirResponse(outcome, status_code=exc.status, headers=headers)
    if _under(path, OAUTH_PAGES):
        page = authorize.page("error.html", exc.status, message=_page_text(exc))
        page.headers.update(headers)
        return page
    if _under(path, ("/oauth", "/admin")):
        fallback = "server_error" if exc.status >= 500 else "invalid_request"
        error = OAUTH_ERRORS.get(exc.status, fallback)
        body = {"error": error, "error_description": exc.message}
        return JSONResponse(body, status_code=exc.status, headers={**NO_STORE, **headers})
    if _under(path, PAGES):
        title = PAGE_TITLES.get(exc.status, "This page cannot be shown")
        services = scope["state"]["services"]
        return message(services, exc.status, title, _page_text(exc), headers=headers)
    return PlainTextResponse(exc.message + "\n", status_code=exc.status, headers=headers)


def _under(path: str, prefixes: tuple[str, ...]) -> bool:
    return any(path == prefix or path.startswith(prefix + "/") for prefix in prefixes)


def _page_text(exc: GatewayError) -> str:
    if exc.status in (502, 503, 504):
        return f"{exc.message} Nothing was changed. Please try again in a few minutes."
    return exc.message


async def gateway_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, GatewayError)
    found = outage(exc)
    if found is not None:
        _log_outage(request, exc)
    return answer(request.scope, exc)


async def maybe_outage(request: Request, exc: Exception) -> Response:
    """A driver or network error: 503 if the database or archive is down, else a 500."""
    found = outage(exc)
    if found is None:
        raise exc
    _log_outage(request, exc)
    return answer(request.scope, found)


async def not_recorded(request: Request, exc: Exception) -> Response:
    found = outage(exc)
    if found is not None:
        _log_outage(request, exc)
        return answer(request.scope, found)
    # A page or OAuth action whose audit record failed: undone, and said so plainly.
    return PlainTextResponse(NOT_RECORDED + "\n", status_code=500)


def audit_failure(scope: Scope, exc: Exception) -> Response:
    """What AuditMiddleware sends instead of an answer whose audit record failed."""
    found = outage(exc)
    if found is not None:
        return answer(scope, found)
    return PlainTextResponse(NOT_RECORDED + "\n", status_code=500)


def _log_outage(request: Request, exc: BaseException) -> None:
    cause = exc.__context__ if isinstance(exc, NotRecorded) else exc
    logger.warning(
        "answered 503 to %s %s: %s: %s",
        request.method,
        request.url.path,
        type(cause).__name__,
        str(cause).splitlines()[0][:200] if str(cause) else "",
    )


async def not_found(request: Request, exc: Exception) -> Response:
    """A path no route matched, in its area's format (a FHIR client still gets an OperationOutcome).

    Starlette's mounts match no path with a line break in it, so such a path
    reaches the app's own 404 whatever area it names.
    """
    path = request.url.path
    if _under(path, AREAS):
        return answer(request.scope, NotFound("There is nothing at this address."))
    return JSONResponse({"error": "not found"}, status_code=404)


def handlers() -> dict[Any, Any]:
    """For ``Starlette(exception_handlers=...)``: the most specific class wins."""
    return {
        404: not_found,
        GatewayError: gateway_error,
        NotRecorded: not_recorded,
        OSError: maybe_outage,
        SQLAlchemyError: maybe_outage,
        sqlite3.Error: maybe_outage,
    }
