"""The resource server: every /fhir and /dicomweb request shows a token with the right scope.

``BearerTokenMiddleware`` checks the token (401 when missing, unknown,
expired or revoked) and the scope the route needs (403), then leaves the
request's visibility for :class:`SmartPolicy`, the access policy of
:mod:`gateway.access`: ``patient/`` scopes confine everything to the patient
in context; ``user/`` and ``system/`` scopes see what the gateway serves.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send

from gateway.access import NOTHING, Visibility, decided
from gateway.auth import granular, scopes
from gateway.auth.client_auth import bearer_token
from gateway.auth.tokens import AccessGrant
from gateway.fhir.responses import FhirResponse, operation_outcome

if TYPE_CHECKING:
    from gateway.services import Services

_STUDY_IN_PATH = re.compile(r"^/(?:ImagingStudy|studies)/([0-9.]{1,64})")
OPEN_FHIR_PATHS = frozenset({"/metadata", "/.well-known/smart-configuration"})
FHIR_TYPES = (
    "ImagingStudy",
    "Patient",
    "DocumentReference",
    "Endpoint",
    "Practitioner",
    "AuditEvent",
    "Consent",
)
_QIDO = re.compile(
    r"/(studies|series|instances|studies/[^/]+/(series|instances)|studies/[^/]+/series/[^/]+/instances)"
)


@dataclass(frozen=True)
class Requirement:
    resource_type: str
    action: str  # one of c r u d s


def requirement(api: str, method: str, path: str) -> Requirement | None:
    """The scope a request needs; None for paths that no route serves (they 404 anyway)."""
    if api == "dicomweb":
        if method == "POST":
            return Requirement("ImagingStudy", "c")
        return Requirement("ImagingStudy", "s" if _QIDO.fullmatch(path) else "r")
    parts = [p for p in path.split("/") if p]
    if not parts:
        return None
    kind = parts[0]
    if kind == "Binary":
        return Requirement("DocumentReference", "r")
    if kind not in FHIR_TYPES:
        return None
    return Requirement(kind, "r" if len(parts) > 1 else "s")


class BearerTokenMiddleware:
    """Wraps one API mount (``api`` is "fhir" or "dicomweb")."""

    def __init__(self, app: ASGIApp, api: str) -> None:
        self.app = app
        self.api = api

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        services = scope["state"]["services"]
        path = _within(scope)
        if (
            not services.settings.auth_required
            or scope["method"] == "OPTIONS"
            or (self.api == "fhir" and path in OPEN_FHIR_PATHS)
        ):
            await self.app(scope, receive, send)
            return
        request = Request(scope)
        token = bearer_token(request.headers.get("authorization"))
        grant = await services.auth.tokens.check(token) if token else None
        if grant is None:
            response = self._refusal(
                401,
                "login",
                "A valid access token is required."
                if token is None
                else "The access token is not valid (unknown, expired or revoked).",
                'Bearer realm="gateway"' + ("" if token is None else ', error="invalid_token"'),
            )
            await response(scope, receive, send)
            return
        needed = requirement(self.api, scope["method"], path)
        visibility = NOTHING
        if needed is not None and _own_user_resource(grant, path):
            needed = None  # SMART: a token may always read its own fhirUser
            visibility = Visibility(patients=None) if not grant.patient else NOTHING
            if grant.patient:
                visibility = await patient_visibility(services, grant)
        if needed is not None:
            visibility_or_none = await self._visibility(services, grant, needed)
            if visibility_or_none is None:
                words = scopes.PERMISSION_WORDS[needed.action]
                response = self._refusal(
                    403,
                    "forbidden",
                    f"The token's scope does not allow to {words} {needed.resource_type}.",
                    'Bearer realm="gateway", error="insufficient_scope"',
                )
                await response(scope, receive, send)
                return
            visibility = visibility_or_none
        if needed is not None and visibility.studies is not None and grant.patient:
            held = await self._held(services, grant, path)
            if held is not None:
                await held(scope, receive, send)
                return
        if needed is not None:
            refusal = await self._granular(scope, services, grant, needed, path, visibility)
            if refusal is not None:
                await refusal(scope, receive, send)
                return
        scope["state"]["grant"] = grant
        scope["state"]["visibility"] = visibility
        await self.app(scope, receive, send)

    async def _held(self, services: Services, grant: AccessGrant, path: str) -> Response | None:
        """A patient asking for a study still under the release delay is told when."""
        found = _STUDY_IN_PATH.search(path)
        if not found:
            return None
        releases = await services.release.for_patient(services, grant.patient or "")
        until = releases.held.get(found.group(1))
        if until is None:
            return None
        when = until.strftime("%Y-%m-%d %H:%M UTC")
        message = (
            f"This study is not available to you yet: it will be from {when}, "
            "so that your physician can review the results with you first."
        )
        if self.api == "fhir":
            return FhirResponse(operation_outcome(403, "suppressed", message), status_code=403)
        return PlainTextResponse(
            message + "\n", status_code=403, headers={"Warning": f'299 gateway "{message}"'}
        )

    async def _granular(
        self,
        scope: Scope,
        services: Services,
        grant: AccessGrant,
        needed: Requirement,
        path: str,
        visibility: Visibility,
    ) -> Response | None:
        """Apply granular filters, when the only scopes that allow this carry one."""
        contexts = ("patient", "user", "system")
        access = scopes.decide(grant.scope, contexts, needed.resource_type, needed.action)
        if access.unfiltered:
            return None
        filters = [f for f in access.filters if f]
        forbidden = 'Bearer realm="gateway", error="insufficient_scope"'
        if self.api == "dicomweb" or not granular.enforceable(needed.resource_type, filters):
            return self._refusal(
                403,
                "forbidden",
                "The granted scope is limited by a filter this request cannot honour.",
                forbidden,
            )
        if needed.action == "s":
            try:
                scope["query_string"] = granular.search_query(
                    scope.get("query_string", b""), filters
                )
            except granular.CannotEnforce as exc:
                return self._refusal(403, "forbidden", str(exc), forbidden)
            return None
        resource_id = path.strip("/").split("/")[1]
        kind = (
            "DocumentReference" if path.strip("/").startswith("Binary/") else needed.resource_type
        )
        if await granular.read_allowed(services, kind, resource_id, filters, visibility):
            return None
        return self._refusal(
            403, "forbidden", "The resource is outside the granted scope's filter.", forbidden
        )

    async def _visibility(
        self, services: Services, grant: AccessGrant, needed: Requirement
    ) -> Visibility | None:
        broad = scopes.decide(grant.scope, ("user", "system"), needed.resource_type, needed.action)
        if broad.allowed:
            return Visibility()
        confined = scopes.decide(grant.scope, ("patient",), needed.resource_type, needed.action)
        if not confined.allowed or not grant.patient:
            return None
        return await patient_visibility(services, grant)

    def _refusal(self, status: int, code: str, message: str, challenge: str) -> Response:
        headers = {"WWW-Authenticate": challenge}
        if self.api == "fhir":
            return FhirResponse(
                operation_outcome(status, code, message), status_code=status, headers=headers
            )
        headers["Warning"] = f'299 gateway "{message}"'
        return PlainTextResponse(message + "\n", status_code=status, headers=headers)


async def patient_visibility(services: Services, grant: AccessGrant) -> Visibility:
    """The patient in context; only released studies; only those the patient chose."""
    chosen = grant.context.get("studies")
    return await services.release.visibility(
        services, grant.patient or "", chosen if isinstance(chosen, list) else None
    )


def _own_user_resource(grant: AccessGrant, path: str) -> bool:
    user = str(grant.context.get("fhirUser") or "")
    wanted = path.strip("/")
    if not user or wanted.count("/") != 1 or not wanted.startswith(("Patient/", "Practitioner/")):
        return False
    if not ({"fhirUser", "openid"} & set(grant.scope)):
        return False
    return user.endswith("/" + wanted)


def _within(scope: Scope) -> str:
    """The path below the mount point (Starlette keeps the mount in root_path)."""
    path: str = scope["path"]
    root: str = scope.get("root_path", "")
    return path[len(root) :] if root and path.startswith(root) else path


class SmartPolicy:
    """The access policy once tokens are required: what the middleware decided."""

    async def visibility(self, request: Request) -> Visibility:
        return decided(request) or NOTHING
