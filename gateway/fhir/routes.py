"""The ``/fhir`` routes: thin glue from HTTP to the FHIR services."""

from __future__ import annotations

import base64
import functools
import logging
from collections.abc import Awaitable, Callable
from datetime import UTC

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from gateway.audit import SEARCH_PARAMETERS as AUDIT_SEARCH
from gateway.audit import audit_event
from gateway.auth import discovery
from gateway.dicomweb import dicomjson as dj
from gateway.dicomweb import instances
from gateway.errors import BadRequest, GatewayError, NotFound
from gateway.fhir import bundle, consents, documents, mapping, params, patients, studies
from gateway.fhir.capability import capability_statement
from gateway.fhir.document_mapping import DICOM
from gateway.fhir.mapping import Resource
from gateway.fhir.params import Paging, SearchRequest, paging
from gateway.fhir.responses import JSON_FORMATS, FhirResponse, negotiate, operation_outcome
from gateway.services import Services
from gateway.settings import Settings

logger = logging.getLogger(__name__)
Endpoint = Callable[[Request, Services], Awaitable[Response]]
ALL_METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]


def fhir_endpoint(handler: Endpoint) -> Callable[[Request], Awaitable[Response]]:
    """Negotiate the format and turn every failure into an OperationOutcome."""

    @functools.wraps(handler)
    async def endpoint(request: Request) -> Response:
        try:
            negotiate(request)
            return await handler(request, request.state.services)
        except GatewayError as exc:
            return error_response(exc)
        except Exception:
            logger.exception("unhandled error in %s %s", request.method, request.url.path)
            return FhirResponse(
                operation_outcome(500, "exception", "An internal error occurred."),
                status_code=500,
            )

    return endpoint


def error_response(exc: GatewayError) -> FhirResponse:
    return FhirResponse(
        operation_outcome(exc.status, exc.code, exc.message),
        status_code=exc.status,
        headers=exc.headers,
    )


def search_request(request: Request, known: dict[str, tuple[str, str]]) -> SearchRequest:
    prefer = request.headers.get("prefer", "").replace(" ", "").lower()
    return SearchRequest(
        request.query_params, frozenset(known), strict="handling=strict" in prefer.split(",")
    )


@fhir_endpoint
async def metadata(request: Request, services: Services) -> Response:
    published = services.started_at.isoformat(timespec="seconds")
    security = discovery.security_extension(services.settings)
    return FhirResponse(capability_statement(services.settings.fhir_base_url, published, security))


@fhir_endpoint
async def read_imaging_study(request: Request, services: Services) -> Response:
    visibility = await services.policy.visibility(request)
    resource = await services.studies.read(request.path_params["id"], visibility)
    return FhirResponse(resource)


@fhir_endpoint
async def search_imaging_study(request: Request, services: Services) -> Response:
    settings = services.settings
    query = search_request(request, studies.SEARCH_PARAMETERS)
    page = paging(query, settings.page_size, settings.max_page_size)
    wanted_includes = query.all("_include")
    for include in wanted_includes:
        if include not in studies.INCLUDES:
            raise BadRequest(
                f"Parameter '_include': '{include}' is not supported "
                f"(supported: {', '.join(studies.INCLUDES)})."
            )
    criteria = await services.studies.parse(query)
    visibility = await services.policy.visibility(request)
    result = await services.studies.search(
        criteria, page.offset, 0 if page.summary_count else page.count, visibility
    )
    includes: list[mapping.Resource] = []
    if "ImagingStudy:subject" in wanted_includes and result.studies:
        includes.extend(await services.patients.patients_of(result.studies))
    if "ImagingStudy:endpoint" in wanted_includes and result.resources:
        includes.append(mapping.endpoint(services.mapping_context))
    return FhirResponse(
        bundle.searchset(
            base_url=settings.fhir_base_url,
            resource_type="ImagingStudy",
            query=query.used_items(),
            matches=result.resources,
            includes=includes,
            total=None if result.truncated else result.total,
            offset=page.offset,
            count=None if page.summary_count else page.count,
            warning=(
                f"More than {settings.max_search_candidates} studies match; only the first "
                "ones were considered. Narrow the search (patient, started, modality)."
                if result.truncated
                else None
            ),
        )
    )


@fhir_endpoint
async def read_patient(request: Request, services: Services) -> Response:
    visibility = await services.policy.visibility(request)
    return FhirResponse(await services.patients.read(request.path_params["id"], visibility))


def _listed(
    settings: Settings,
    query: SearchRequest,
    page: Paging,
    resource_type: str,
    found: list[Resource],
) -> Response:
    """A searchset of one page of ``found``, a search answered whole in the gateway."""
    shown = [] if page.summary_count else found[page.offset : page.offset + page.count]
    return FhirResponse(
        bundle.searchset(
            base_url=settings.fhir_base_url,
            resource_type=resource_type,
            query=query.used_items(),
            matches=shown,
            total=len(found),
            offset=page.offset,
            count=None if page.summary_count else page.count,
        )
    )


@fhir_endpoint
async def search_patient(request: Request, services: Services) -> Response:
    settings = services.settings
    query = search_request(request, patients.SEARCH_PARAMETERS)
    page = paging(query, settings.page_size, settings.max_page_size)
    found = await services.patients.search(query, await services.policy.visibility(request))
    return _listed(settings, query, page, "Patient", found)


@fhir_endpoint
async def read_endpoint(request: Request, services: Services) -> Response:
    if request.path_params["id"] != mapping.ENDPOINT_ID:
        raise NotFound(f"Endpoint/{request.path_params['id']} is not known.")
    return FhirResponse(mapping.endpoint(services.mapping_context))


@fhir_endpoint
async def search_endpoint(request: Request, services: Services) -> Response:
    query = search_request(request, {"_id": ("token", "")})
    ids = [i for value in query.all("_id") for i in value.split(",")]
    found = (
        []
        if ids and mapping.ENDPOINT_ID not in ids
        else [mapping.endpoint(services.mapping_context)]
    )
    return FhirResponse(
        bundle.searchset(
            base_url=services.settings.fhir_base_url,
            resource_type="Endpoint",
            query=query.used_items(),
            matches=found,
            total=len(found),
        )
    )


@fhir_endpoint
async def read_document_reference(request: Request, services: Services) -> Response:
    visibility = await services.policy.visibility(request)
    return FhirResponse(await services.documents.read(request.path_params["id"], visibility))


@fhir_endpoint
async def search_document_reference(request: Request, services: Services) -> Response:
    settings = services.settings
    query = search_request(request, documents.SEARCH_PARAMETERS)
    page = paging(query, settings.page_size, settings.max_page_size)
    for include in query.all("_include"):
        raise BadRequest(
            f"Parameter '_include': '{include}' is not supported for DocumentReference."
        )
    criteria = await services.documents.parse(query)
    visibility = await services.policy.visibility(request)
    result = await services.documents.search(
        criteria, page.offset, 0 if page.summary_count else page.count, visibility
    )
    return FhirResponse(
        bundle.searchset(
            base_url=settings.fhir_base_url,
            resource_type="DocumentReference",
            query=query.used_items(),
            matches=result.resources,
            total=None if result.truncated else result.total,
            offset=page.offset,
            count=None if page.summary_count else page.count,
            warning=(
                f"More than {settings.max_search_candidates} report series match; only the "
                "first ones were considered. Narrow the search (patient, related, date)."
                if result.truncated
                else None
            ),
        )
    )


@fhir_endpoint
async def read_practitioner(request: Request, services: Services) -> Response:
    """Practitioners are the gateway's own users (their ``fhirUser``)."""
    account = await services.auth.accounts.get(request.path_params["id"])
    if account is None or account.kind != "practitioner":
        raise NotFound(f"Practitioner/{request.path_params['id']} is not known.")
    return FhirResponse(practitioner_resource(account.id, account.display_name))


def practitioner_resource(account_id: str, display_name: str) -> mapping.Resource:
    family, _, given = display_name.partition("^")
    name: mapping.Resource = {"text": " ".join(p for p in (given, family) if p) or display_name}
    if family:
        name["family"] = family
    if given:
        name["given"] = [g for g in given.split("^") if g]
    return {"resourceType": "Practitioner", "id": account_id, "active": True, "name": [name]}


def _audit_patient_scope(request: Request, requested: str | None) -> str | None:
    """A patient token sees only its patient's events, whatever it asks for."""
    grant = getattr(request.state, "grant", None)
    visibility = getattr(request.state, "visibility", None)
    confined = visibility is not None and visibility.patients is not None
    if confined:
        own = getattr(grant, "patient", None) or "-"
        return own if requested in (None, own) else "-"
    return requested


@fhir_endpoint
async def search_audit_event(request: Request, services: Services) -> Response:
    settings = services.settings
    query = search_request(request, AUDIT_SEARCH)
    page = paging(query, settings.page_size, settings.max_page_size)
    patient = None
    for value in query.all("patient"):
        patient = params.references("patient", value, "Patient", settings.fhir_base_url)[0]
    study = None
    for value in query.all("entity"):
        reference = value.removeprefix(settings.fhir_base_url + "/")
        kind, _, ident = reference.partition("/")
        if kind == "Patient" and ident:
            patient = ident
        elif kind == "ImagingStudy" and ident:
            study = ident
        else:
            raise BadRequest("Parameter 'entity': use ImagingStudy/{uid} or Patient/{id}.")
    agent = query.all("agent")[-1] if query.all("agent") else None
    since = until = None
    for value in query.all("date"):
        moment = params.date_filter("date", value)
        start, end = moment.moment.aware(UTC)
        if moment.prefix in ("ge", "gt", "eq"):
            since = start if moment.prefix != "gt" else end
        if moment.prefix in ("le", "lt", "eq"):
            until = end if moment.prefix != "lt" else start
    patient = _audit_patient_scope(request, patient)
    records = await services.audit.search(
        patient=patient,
        since=since,
        until=until,
        agent=agent,
        study=study,
        limit=0 if page.summary_count else page.count,
        offset=page.offset,
    )
    resources = [audit_event(r, settings.public_url) for r in records]
    return FhirResponse(
        bundle.searchset(
            base_url=settings.fhir_base_url,
            resource_type="AuditEvent",
            query=query.used_items(),
            matches=resources,
            total=None,
            offset=page.offset,
            count=None if page.summary_count else page.count,
        )
    )


@fhir_endpoint
async def read_audit_event(request: Request, services: Services) -> Response:
    record = await services.audit.get(request.path_params["id"])
    if record is None or _audit_patient_scope(request, record.patient) != record.patient:
        raise NotFound(f"AuditEvent/{request.path_params['id']} is not known.")
    return FhirResponse(audit_event(record, services.settings.public_url))


def _consent_patient(request: Request, requested: str | None) -> str | None:
    """Patient tokens see their own patient's consents only."""
    return _audit_patient_scope(request, requested)


@fhir_endpoint
async def search_consent(request: Request, services: Services) -> Response:
    settings = services.settings
    query = search_request(request, consents.SEARCH_PARAMETERS)
    page = paging(query, settings.page_size, settings.max_page_size)
    patient = None
    for value in query.all("patient"):
        patient = params.references("patient", value, "Patient", settings.fhir_base_url)[0]
    wanted_status = {t.code for v in query.all("status") for t in params.tokens("status", v)}
    found = await consents.consents(
        services.database.sessions,
        patient=_consent_patient(request, patient),
        now=services.release.clock(),
    )
    if wanted_status:
        found = [c for c in found if c["status"] in wanted_status]
    return _listed(settings, query, page, "Consent", found)


@fhir_endpoint
async def read_consent(request: Request, services: Services) -> Response:
    found = await consents.consents(
        services.database.sessions,
        consent_id=request.path_params["id"][:80],
        patient=_consent_patient(request, None),
        now=services.release.clock(),
    )
    if not found:
        raise NotFound(f"Consent/{request.path_params['id']} is not known.")
    return FhirResponse(found[0])


async def read_binary(request: Request) -> Response:
    """A document's DICOM object: raw for a plain client, a Binary resource for a FHIR one."""
    services: Services = request.state.services
    accept = request.headers.get("accept", "")
    offered = [part.split(";")[0].strip().lower() for part in accept.split(",")]
    wants_resource = bool(request.query_params.getlist("_format")) or any(
        media in JSON_FORMATS or media.startswith("application/fhir+") for media in offered
    )
    try:
        if wants_resource:
            negotiate(request)
        visibility = await services.policy.visibility(request)
        found = await services.documents.locate(request.path_params["id"], visibility)
        content = await instances.part10(
            services.upstream,
            dj.text(found, "StudyInstanceUID") or "",
            dj.text(found, "SeriesInstanceUID") or "",
            request.path_params["id"],
        )
    except GatewayError as exc:
        return error_response(exc)
    except Exception:
        logger.exception("unhandled error in %s %s", request.method, request.url.path)
        return FhirResponse(
            operation_outcome(500, "exception", "An internal error occurred."), status_code=500
        )
    if wants_resource:
        return FhirResponse(
            {
                "resourceType": "Binary",
                "id": request.path_params["id"],
                "contentType": DICOM,
                "data": base64.b64encode(content).decode(),
            }
        )
    return Response(content, media_type=DICOM)


@fhir_endpoint
async def not_supported(request: Request, services: Services) -> Response:
    path = request.path_params.get("path", "")
    known = (
        "ImagingStudy",
        "Patient",
        "Endpoint",
        "DocumentReference",
        "Binary",
        "Practitioner",
        "AuditEvent",
        "Consent",
        "metadata",
    )
    if path.split("/", 1)[0] in known:
        return FhirResponse(
            operation_outcome(405, "not-supported", f"{request.method} is not supported here."),
            status_code=405,
            headers={"Allow": "GET"},
        )
    return FhirResponse(
        operation_outcome(404, "not-supported", f"'{path}' is not a supported resource type."),
        status_code=404,
    )


def routes() -> list[BaseRoute]:
    return [
        Route("/metadata", metadata, methods=["GET"]),
        Route("/ImagingStudy", search_imaging_study, methods=["GET"]),
        Route("/ImagingStudy/{id}", read_imaging_study, methods=["GET"]),
        Route("/Patient", search_patient, methods=["GET"]),
        Route("/Patient/{id}", read_patient, methods=["GET"]),
        Route("/Endpoint", search_endpoint, methods=["GET"]),
        Route("/Endpoint/{id}", read_endpoint, methods=["GET"]),
        Route("/DocumentReference", search_document_reference, methods=["GET"]),
        Route("/DocumentReference/{id}", read_document_reference, methods=["GET"]),
        Route("/Binary/{id}", read_binary, methods=["GET"]),
        Route("/Practitioner/{id}", read_practitioner, methods=["GET"]),
        Route("/AuditEvent", search_audit_event, methods=["GET"]),
        Route("/Consent", search_consent, methods=["GET"]),
        Route("/Consent/{id}", read_consent, methods=["GET"]),
        Route("/AuditEvent/{id}", read_audit_event, methods=["GET"]),
        Route("/{path:path}", not_supported, methods=ALL_METHODS),
    ]
