"""``/oauth`` endpoints and the discovery documents (SMART App Launch 2.2, RFC 6749/7009/7591/7662).

Errors follow RFC 6749 5.2: JSON ``{"error", "error_description"}``, 400 for
grant errors, 401 ``invalid_client`` for failed client authentication.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from authlib.oauth2.rfc6749.errors import (
    InvalidRequestError,
    InvalidScopeError,
    OAuth2Error,
    UnauthorizedClientError,
    UnsupportedGrantTypeError,
)
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from gateway import forms
from gateway.audit import AuditEntry
from gateway.auth import authorize, discovery, oauth_errors, registration, scopes
from gateway.auth.attempts import TooManyAttempts, client_address
from gateway.auth.client_auth import bearer_token, require_form
from gateway.auth.clients import ClientKind, RegistrationError, describe
from gateway.errors import GatewayError
from gateway.outages import outage
from gateway.services import Services

logger = logging.getLogger(__name__)
NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}
GRANT_TYPES = ("authorization_code", "refresh_token", "client_credentials")
MAX_FORM_BYTES = 64 << 10
MAX_FORM_FIELDS = 64


def oauth_error(exc: OAuth2Error, request: Request | None = None) -> JSONResponse:
    status = 401 if exc.error == "invalid_client" else (exc.status_code or 400)
    headers = dict(NO_STORE)
    if status == 401:
        basic = request is not None and request.headers.get("authorization", "")[:6].lower() == (
            "basic "
        )
        headers["WWW-Authenticate"] = 'Basic realm="gateway"' if basic else 'Bearer realm="gateway"'
    body: dict[str, Any] = {"error": exc.error}
    description = exc.get_error_description()
    if description:
        body["error_description"] = description
    return JSONResponse(body, status_code=status, headers=headers)


def oauth_endpoint(
    handler: Callable[[Request, Services], Awaitable[Response]],
) -> Callable[[Request], Awaitable[Response]]:
    async def endpoint(request: Request) -> Response:
        try:
            return await handler(request, request.state.services)
        except OAuth2Error as exc:
            return oauth_error(exc, request)
        except GatewayError:
            raise  # a body timeout, say: the app's handler answers (gateway/error_handlers.py)
        except Exception as exc:
            if outage(exc) is not None:
                raise  # the app's handler answers 503 temporarily_unavailable
            logger.exception("unhandled error in %s %s", request.method, request.url.path)
            return JSONResponse(
                {"error": "server_error", "error_description": "An internal error occurred."},
                status_code=500,
                headers=NO_STORE,
            )

    return endpoint


async def read_form(request: Request) -> dict[str, str]:
    """The form body, one value per name (RFC 6749 3.2: parameters must not repeat)."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != "application/x-www-form-urlencoded":
        raise InvalidRequestError(
            description="Send the parameters as a form (x-www-form-urlencoded)."
        )
    try:
        form = await forms.read_form(request, max_fields=MAX_FORM_FIELDS, max_bytes=MAX_FORM_BYTES)
    except forms.BodyRejected as exc:
        raise InvalidRequestError(description=oauth_errors.description(exc.message)) from None
    values: dict[str, str] = {}
    for name, value in form.multi_items():
        if not isinstance(value, str):
            raise InvalidRequestError(description="Files are not accepted here.")
        if name in values:
            raise InvalidRequestError(
                description=oauth_errors.description(f"Parameter '{name}' is repeated.")
            )
        values[name] = value
    return values


@oauth_endpoint
async def token(request: Request, services: Services) -> Response:
    """RFC 6749 section 3.2; every answer, granted or refused, is audited first."""
    form: dict[str, str] = {}
    try:
        form = await read_form(request)
        response = await _token(request, services, form)
    except OAuth2Error as exc:
        await services.audit.record(
            AuditEntry(
                category="token",
                action=form.get("grant_type", "token")[:64],
                outcome=401 if exc.error == "invalid_client" else 400,
                client_id=form.get("client_id"),
                detail=f"refused: {exc.error}",
            )
        )
        raise
    return response


async def _token(request: Request, services: Services, form: dict[str, str]) -> Response:
    grant_type = require_form(form, "grant_type")
    if grant_type not in GRANT_TYPES:
        raise UnsupportedGrantTypeError(grant_type[:40])
    auth = services.auth
    client = await auth.client_auth.authenticate(form, request.headers.get("authorization"))
    if grant_type == "authorization_code":
        if client.kind == ClientKind.backend:
            raise UnauthorizedClientError(description="Backend clients use client_credentials.")
        answer = await auth.tokens.redeem_code(
            require_form(form, "code"),
            client.client_id,
            require_form(form, "redirect_uri"),
            require_form(form, "code_verifier"),
        )
    elif grant_type == "refresh_token":
        answer = await auth.tokens.refresh(
            require_form(form, "refresh_token"), client.client_id, form.get("scope")
        )
    else:
        if client.kind != ClientKind.backend:
            raise UnauthorizedClientError(
                description="Only backend clients may use client_credentials."
            )
        allowed = scopes.backend_scopes(client.scope)
        requested = scopes.split(form.get("scope")) or allowed
        granted = scopes.narrow(allowed, requested)
        if not granted:
            raise InvalidScopeError(
                description="The scope is not among the client's system scopes."
            )
        answer = await auth.tokens.client_credentials(client.client_id, granted)
    patient = answer.get("patient")
    await services.audit.record(
        AuditEntry(
            category="token",
            action=grant_type,
            outcome=200,
            client_id=client.client_id,
            patient=patient if isinstance(patient, str) else None,
            detail=f"issued scope: {answer.get('scope', '')}",
        )
    )
    return JSONResponse(answer, headers=NO_STORE)


@oauth_endpoint
async def introspect(request: Request, services: Services) -> Response:
    """RFC 7662, for authenticated callers only (401 ``invalid_client`` otherwise).

    A confidential client (HTTP Basic or a signed assertion) learns about any token:
    that is how a resource server asks. A public client, which only names itself,
    and the holder of a bearer token learn only about tokens issued to that same
    client; any other token is ``{"active": false}``, so one app cannot read
    another app's patient, user or scope.
    """
    form = await read_form(request)
    authorization = request.headers.get("authorization")
    caller_token = bearer_token(authorization)
    if caller_token:
        caller = await services.auth.tokens.check(caller_token)
        if caller is None:
            return JSONResponse(
                {"error": "invalid_token", "error_description": "The bearer token is not valid."},
                status_code=401,
                headers={**NO_STORE, "WWW-Authenticate": 'Bearer error="invalid_token"'},
            )
        confined_to: str | None = caller.client_id
    else:
        client = await services.auth.client_auth.authenticate(
            {k: v for k, v in form.items() if k not in ("token", "token_type_hint")},
            authorization,
        )
        confined_to = client.client_id if client.kind == ClientKind.public else None
    answer = await services.auth.tokens.introspect(
        require_form(form, "token"), issued_to=confined_to
    )
    return JSONResponse(answer, headers=NO_STORE)


@oauth_endpoint
async def revoke(request: Request, services: Services) -> Response:
    """RFC 7009: 200 whether or not the token was known."""
    form = await read_form(request)
    client = await services.auth.client_auth.authenticate(
        {k: v for k, v in form.items() if k not in ("token", "token_type_hint")},
        request.headers.get("authorization"),
    )
    await services.auth.tokens.revoke(require_form(form, "token"), client.client_id)
    await services.audit.record(
        AuditEntry(category="token", action="revoke", outcome=200, client_id=client.client_id)
    )
    return Response(status_code=200, headers=NO_STORE)


async def register(request: Request) -> Response:
    """RFC 7591 dynamic registration, for public clients only, bounded and rate-limited."""
    services: Services = request.state.services
    if not services.settings.dynamic_registration:
        return JSONResponse(
            {"error": "access_denied", "error_description": "Dynamic registration is turned off."},
            status_code=403,
        )
    try:
        # Counted before the body is read: every request costs the address a try.
        await services.auth.registrations.take("register", client_address(request))
    except TooManyAttempts as exc:
        return JSONResponse(
            {
                "error": "temporarily_unavailable",
                "error_description": "Too many registrations from this address; "
                f"try again in {exc.retry_after} seconds.",
            },
            status_code=429,
            headers={**NO_STORE, "Retry-After": str(exc.retry_after)},
        )
    try:
        body = await forms.read_body(request, registration.MAX_BODY_BYTES)
    except forms.BodyRejected as exc:
        return _registration_error("invalid_client_metadata", exc.message, exc.status)
    try:
        metadata = registration.public_client(orjson.loads(body))
    except orjson.JSONDecodeError:
        return _registration_error("invalid_client_metadata", "The body must be a JSON object.")
    except registration.RegistrationRefused as exc:
        return _registration_error(exc.error, exc.description)
    try:
        created = await services.auth.clients.add(
            name=metadata.name,
            kind=ClientKind.public,
            redirect_uris=metadata.redirect_uris,
            scope=metadata.scope,
            dynamic=True,
        )
    except RegistrationError as exc:
        error = "invalid_redirect_uri" if "redirect" in str(exc) else "invalid_client_metadata"
        return _registration_error(error, str(exc))
    answer = describe(created.client)
    answer.update(
        {
            "client_id_issued_at": int(created.client.created_at.timestamp()),
            "grant_types": list(registration.GRANT_TYPES),
            "response_types": list(registration.RESPONSE_TYPES),
        }
    )
    answer = {k: v for k, v in answer.items() if v is not None}
    return JSONResponse(answer, status_code=201, headers=NO_STORE)


def _registration_error(error: str, description: str, status: int = 400) -> JSONResponse:
    return JSONResponse(
        {"error": error, "error_description": description}, status_code=status, headers=NO_STORE
    )


async def smart_configuration(request: Request) -> Response:
    services: Services = request.state.services
    return JSONResponse(discovery.smart_configuration(services.settings))


async def openid_configuration(request: Request) -> Response:
    services: Services = request.state.services
    return JSONResponse(discovery.openid_configuration(services.settings))


async def jwks(request: Request) -> Response:
    services: Services = request.state.services
    return JSONResponse(
        await services.auth.keys.jwks(), headers={"Cache-Control": "public, max-age=300"}
    )


async def style(request: Request) -> Response:
    return JSONResponse(discovery.STYLE)


def routes() -> list[BaseRoute]:
    """Below ``/oauth``."""
    return [
        *authorize.routes(),
        Route("/token", token, methods=["POST"]),
        Route("/introspect", introspect, methods=["POST"]),
        Route("/revoke", revoke, methods=["POST"]),
        Route("/register", register, methods=["POST"]),
        Route("/jwks", jwks, methods=["GET"]),
        Route("/style.json", style, methods=["GET"]),
    ]


def discovery_routes() -> list[BaseRoute]:
    """At the application root, ahead of the API mounts."""
    return [
        Route("/fhir/.well-known/smart-configuration", smart_configuration, methods=["GET"]),
        Route("/.well-known/openid-configuration", openid_configuration, methods=["GET"]),
    ]
