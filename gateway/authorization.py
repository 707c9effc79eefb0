"""What a route needs, declared where the route is; and the one decision made from it.

A gate in front of the routes only says who is asking (a ``Principal``): the
bearer token middleware (:mod:`gateway.auth.enforcement`), a portal session
or an opened share link (:mod:`gateway.portal.gates`). Each route that reaches
patient data declares what it needs with ``@requires("ImagingStudy", "s")``,
like Starlette's own ``requires``; the decorator decides the caller's
:class:`~gateway.records.access.Access` (or refuses: 401, 403) before the
handler runs, and hands it to the handler, which cannot reach the records
layer without it. ``tests/test_layering.py`` checks that every data route
declares its need.

For a bearer token: ``user/`` and ``system/`` scopes see what the gateway
serves; ``patient/`` scopes see the patient in context, only the studies the
release delay has let through and, when the patient chose, only those.
Granular scopes (``?category=...``) are ANDed into a search, checked on a
read, and refused where they cannot be enforced (DICOMweb).
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import Response

from gateway.audit import Actor, share_user
from gateway.auth import external, granular, outside, scopes
from gateway.auth.preauthorized import Entry
from gateway.auth.tokens import AccessGrant
from gateway.errors import Forbidden, Unauthorized
from gateway.records.access import (
    EVERYTHING,
    NOTHING,
    OPERATIONS,
    PATIENT_REQUEST,
    TREATMENT,
    Access,
    Visibility,
)
from gateway.store.capabilities import Capability
from gateway.store.models import ShareLink

if TYPE_CHECKING:
    from gateway.donation.projects import Project
    from gateway.services import Services

CHALLENGE = 'Bearer realm="gateway"'
INSUFFICIENT = 'Bearer realm="gateway", error="insufficient_scope"'
SHARED_PERMISSIONS = frozenset(
    (kind, action) for kind in ("ImagingStudy", "DocumentReference") for action in "rs"
)


@dataclass(frozen=True)
class Requirement:
    resource_type: str
    action: str  # one of SMART's c r u d s
    # Can the route honour a granular scope's filter (FHIR search parameters)? DICOMweb cannot.
    filterable: bool = True


# -- who is asking (put in the request state by a gate) ----------------------


@dataclass(frozen=True)
class TokenHolder:
    grant: AccessGrant


@dataclass(frozen=True)
class InvalidToken:
    """A bearer token came, but it is unknown, expired or revoked."""


@dataclass(frozen=True)
class PortalPatient:
    account_id: str
    patient: str  # FHIR Patient id


@dataclass(frozen=True)
class ShareRecipient:
    share: ShareLink


@dataclass(frozen=True)
class CapabilityHolder:
    """Whoever follows a WADO-RS capability URL (records/capabilities.py)."""

    capability: Capability


Principal = TokenHolder | InvalidToken | PortalPatient | ShareRecipient | CapabilityHolder


def principal_of(request: Request) -> Principal | None:
    found = request.scope.get("state", {}).get("principal")
    if isinstance(
        found, TokenHolder | InvalidToken | PortalPatient | ShareRecipient | CapabilityHolder
    ):
        return found
    return None


# -- the declaration ---------------------------------------------------------

Handler = Callable[[Request, "Services", Access], Awaitable[Response]]
Endpoint = Callable[[Request, "Services"], Awaitable[Response]]


def requires(
    resource_type: str, action: str, *, filterable: bool = True
) -> Callable[[Handler], Endpoint]:
    """Declare what a route needs; its handler gets the caller's Access, or never runs."""
    requirement = Requirement(resource_type, action, filterable)

    def decorate(handler: Handler) -> Endpoint:
        @functools.wraps(handler)
        async def endpoint(request: Request, services: Services) -> Response:
            request.state.requirement = requirement
            asked = request.scope.get("query_string", b"")
            access = await decide(request, services, requirement)
            request.state.access = access
            if request.scope.get("query_string", b"") != asked:
                request = Request(request.scope, request.receive)  # a granular filter was added
            return await handler(request, services, access)

        endpoint.requirement = requirement  # type: ignore[attr-defined]
        return endpoint

    return decorate


def requirement_of(endpoint: Any) -> Requirement | None:
    found = getattr(endpoint, "requirement", None)
    return found if isinstance(found, Requirement) else None


# -- the decision ------------------------------------------------------------


async def decide(request: Request, services: Services, needed: Requirement) -> Access:
    principal = principal_of(request)
    if isinstance(principal, PortalPatient):
        return await patient_access(services, principal.patient)
    if isinstance(principal, ShareRecipient):
        return await share_access(services, principal.share)
    if isinstance(principal, CapabilityHolder):
        return capability_access(principal.capability, needed)
    if isinstance(principal, TokenHolder):
        return await _token_access(request, services, principal.grant, needed)
    if isinstance(principal, InvalidToken):
        raise Unauthorized(
            "The access token is not valid (unknown, expired or revoked).",
            headers={"WWW-Authenticate": CHALLENGE + ', error="invalid_token"'},
        )
    if not services.settings.auth_required:
        return Access(EVERYTHING)
    raise Unauthorized("A valid access token is required.", headers={"WWW-Authenticate": CHALLENGE})


async def patient_access(services: Services, patient: str) -> Access:
    """A signed-in patient, in the portal: their own released studies; held ones are
    named with the date they arrive."""
    jacket = await services.records.jackets.of(patient)
    return Access(
        visibility=_released(jacket.key, jacket.released),
        actor=Actor(user=f"{services.settings.fhir_base_url}/Patient/{patient}", patient=patient),
        held=jacket.held,
        patients=frozenset({patient}),
        purpose=PATIENT_REQUEST,
        jacket=jacket,
    )


def staff_access(grant: AccessGrant) -> Access:
    """A backend client acting for staff (``admin/`` scopes): whatever the gateway serves."""
    return Access(EVERYTHING, Actor(client_id=grant.client_id), purpose=OPERATIONS)


def share_actor(share: ShareLink) -> Actor:
    return Actor(user=share_user(share.id), patient=share.patient_fhir_id)


async def share_access(services: Services, share: ShareLink) -> Access:
    """The holder of an opened share link: its studies, to look at and download."""
    key = await services.records.patients.key_of(share.patient_fhir_id)
    return Access(
        visibility=_released(key, frozenset(share.studies)),
        actor=share_actor(share),
        permits=lambda kind, action: (kind, action) in SHARED_PERMISSIONS,
        patients=frozenset({share.patient_fhir_id}),
        purpose=PATIENT_REQUEST,  # the patient chose to give these studies
    )


def authorized_until(grant: AccessGrant) -> datetime | None:
    """When what the token allows ends: the token's expiry, or the patient's chosen end
    of the consent if sooner (a capability it issues may not outlive either)."""
    ends = [grant.expires_at]
    chosen = grant.context.get("consent_until")
    if chosen:
        try:
            end = datetime.fromisoformat(str(chosen))
            ends.append(end if end.tzinfo else end.replace(tzinfo=UTC))
        except ValueError:
            return None
    known = [end for end in ends if end is not None]
    return min(known) if len(known) == len(ends) else None


def capability_access(capability: Capability, needed: Requirement) -> Access:
    """A capability URL: reading its studies (reports only if its issuer could), nothing
    else; what it does not cover answers 404 like anything unknown."""

    def permits(kind: str, action: str) -> bool:
        if action not in "rs":
            return False
        return kind == "ImagingStudy" or (kind == "DocumentReference" and capability.reports)

    if not permits(needed.resource_type, needed.action):
        raise Forbidden("A capability URL allows reading its studies only.")
    patients = capability.patient_fhir_ids
    return Access(
        visibility=Visibility(patients=capability.patients, studies=capability.studies),
        # The trail names the app that asked for the capability, as for its token, or
        # the share link whose recipient opened it in the viewer.
        actor=Actor(
            client_id=capability.client_id,
            user=share_user(capability.share_id) if capability.share_id else None,
            patient=next(iter(patients)) if len(patients) == 1 else None,
        ),
        permits=permits,
        patients=patients,
        purpose=capability.purpose,
    )


def _released(key: tuple[str, str] | None, studies: frozenset[str]) -> Visibility:
    if key is None:
        return NOTHING
    return Visibility(patients=frozenset({key}), studies=studies)


async def _token_access(
    request: Request, services: Services, grant: AccessGrant, needed: Requirement
) -> Access:
    patient = grant.patient
    if grant.external:
        external.name_local_patients(request, grant)
    contexts = ("patient", "user", "system") if patient else ("user", "system")
    actor = Actor(grant.client_id, grant.context.get("fhirUser"), patient)
    # A person's token that reaches past one patient is a provider's; no person, a system's.
    broad_purpose = TREATMENT if grant.account_id else OPERATIONS

    def permits(kind: str, action: str) -> bool:
        return scopes.decide(grant.scope, contexts, kind, action).allowed

    if _own_user_resource(request, grant, needed):
        # SMART: a token may always read its own fhirUser.
        if patient:
            return await _patient_token_access(services, grant, actor, permits)
        return Access(EVERYTHING, actor, permits, purpose=broad_purpose)
    user = scopes.decide(grant.scope, ("user",), needed.resource_type, needed.action)
    system = scopes.decide(grant.scope, ("system",), needed.resource_type, needed.action)
    if user.allowed:
        access = Access(EVERYTHING, actor, permits, purpose=broad_purpose)
    elif system.allowed:
        # SMART Imaging Access, Backend Services: system/ scopes reach the client's
        # pre-authorized access; every patient only for an operator.
        access = await _backend_access(request, services, grant, actor, permits, needed)
    else:
        confined = scopes.decide(grant.scope, ("patient",), needed.resource_type, needed.action)
        if not confined.allowed or not patient:
            words = scopes.PERMISSION_WORDS[needed.action]
            raise Forbidden(
                f"The token's scope does not allow to {words} {needed.resource_type}.",
                headers={"WWW-Authenticate": INSUFFICIENT},
            )
        access = await _patient_token_access(services, grant, actor, permits)
    await _granular(request, services, grant, needed, access)
    return access


async def _backend_access(
    request: Request,
    services: Services,
    grant: AccessGrant,
    actor: Actor,
    permits: Callable[[str, str], bool],
    needed: Requirement,
) -> Access:
    if await services.donation.projects.is_research_client(grant.client_id):
        raise Forbidden(
            "A research project's client reads de-identified copies only, under /research.",
            headers={"WWW-Authenticate": INSUFFICIENT},
        )
    given = await services.auth.backend_access.of(grant.client_id, local=not grant.external)
    if given.operator:
        return Access(EVERYTHING, actor, permits, purpose=OPERATIONS)
    access = Access(
        visibility=preauthorized_visibility(given.entries),
        actor=actor,
        permits=permits,
        patients=given.patients,
        purpose=OPERATIONS,
    )
    outside.refuse(request, needed.resource_type, needed.action, access)
    return access


async def research_project(request: Request, services: Services) -> Project:
    """The project whose research backend client is asking (``/research``): a token of
    the client registered for the project, with a ``system/`` scope to read ImagingStudy.
    It sees that project's de-identified copies and nothing else."""
    principal = principal_of(request)
    if isinstance(principal, InvalidToken):
        raise Unauthorized(
            "The access token is not valid (unknown, expired or revoked).",
            headers={"WWW-Authenticate": CHALLENGE + ', error="invalid_token"'},
        )
    if not isinstance(principal, TokenHolder):
        raise Unauthorized(
            "A research client's access token is required.",
            headers={"WWW-Authenticate": CHALLENGE},
        )
    grant = principal.grant
    allowed = scopes.decide(grant.scope, ("system",), "ImagingStudy", "r").allowed
    project = await services.donation.projects.of_client(grant.client_id)
    if grant.account_id or grant.external or not allowed or project is None:
        raise Forbidden(
            "Only the research client of a project, with system/ImagingStudy.rs, reads here.",
            headers={"WWW-Authenticate": INSUFFICIENT},
        )
    return project


def preauthorized_visibility(entries: Iterable[Entry]) -> Visibility:
    """Whole patients, and besides them single studies of other patients (a union)."""
    entries = list(entries)
    whole = frozenset(e.key for e in entries if not e.study)
    studies: dict[tuple[str, str], set[str]] = {}
    for entry in entries:
        if entry.study and entry.key not in whole:
            studies.setdefault(entry.key, set()).add(entry.study)
    parts = tuple(
        Visibility(patients=frozenset({key}), studies=frozenset(uids))
        for key, uids in sorted(studies.items())
    )
    base = Visibility(patients=whole) if whole else NOTHING
    return Visibility(patients=base.patients, studies=base.studies, also=parts)


async def _patient_token_access(
    services: Services, grant: AccessGrant, actor: Actor, permits: Callable[[str, str], bool]
) -> Access:
    patient = grant.patient or ""
    local = grant.context.get("patients")
    if grant.external and isinstance(local, list) and len(local) != 1:
        return await _several_patients_access(services, [str(p) for p in local], actor, permits)
    jacket = await services.records.jackets.of(patient)
    chosen = grant.context.get("studies")
    released = jacket.released
    if isinstance(chosen, list):
        released &= {str(uid) for uid in chosen}
    return Access(
        visibility=_released(jacket.key, released),
        actor=actor,
        permits=permits,
        # Only a grant of all the patient's studies covers one still held back.
        held=jacket.held if not isinstance(chosen, list) else {},
        patients=frozenset({patient}),
        purpose=PATIENT_REQUEST,
        jacket=jacket,
    )


async def _several_patients_access(
    services: Services, patients: list[str], actor: Actor, permits: Callable[[str, str], bool]
) -> Access:
    """A token of the external authorization server whose patient is several DICOM
    patients here (one per mapped identifier), or none: each one's released studies."""
    parts = []
    for patient in patients:
        jacket = await services.records.jackets.of(patient)
        parts.append(_released(jacket.key, jacket.released))
    return Access(
        visibility=Visibility(patients=frozenset(), studies=frozenset(), also=tuple(parts)),
        actor=actor,
        permits=permits,
        patients=frozenset(patients),
        purpose=PATIENT_REQUEST,
    )


async def _granular(
    request: Request,
    services: Services,
    grant: AccessGrant,
    needed: Requirement,
    access: Access,
) -> None:
    """Apply granular filters, when the only scopes that allow this carry one."""
    contexts = ("patient", "user", "system")
    decided = scopes.decide(grant.scope, contexts, needed.resource_type, needed.action)
    if decided.unfiltered:
        return
    filters = [f for f in decided.filters if f]
    if not needed.filterable or not granular.enforceable(needed.resource_type, filters):
        raise Forbidden(
            "The granted scope is limited by a filter this request cannot honour.",
            headers={"WWW-Authenticate": INSUFFICIENT},
        )
    if needed.action == "s":
        try:
            request.scope["query_string"] = granular.search_query(
                request.scope.get("query_string", b""), filters
            )
        except granular.CannotEnforce as exc:
            raise Forbidden(str(exc), headers={"WWW-Authenticate": INSUFFICIENT}) from None
        return
    resource_id = str(request.path_params.get("id", ""))
    if not await granular.read_allowed(
        services, access, needed.resource_type, resource_id, filters
    ):
        raise Forbidden(
            "The resource is outside the granted scope's filter.",
            headers={"WWW-Authenticate": INSUFFICIENT},
        )


def _own_user_resource(request: Request, grant: AccessGrant, needed: Requirement) -> bool:
    user = str(grant.context.get("fhirUser") or "")
    if needed.action != "r" or needed.resource_type not in ("Patient", "Practitioner"):
        return False
    if not user or not ({"fhirUser", "openid"} & set(grant.scope)):
        return False
    return user.endswith(f"/{needed.resource_type}/{request.path_params.get('id', '')}")
