"""The ``/fhir`` routes: thin glue from HTTP to the records layer, through the FHIR mapping.

Each route that reaches patient data declares what it needs (``@requires``);
the handler gets the caller's access and passes it to the records layer.
"""

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
from gateway.authorization import TokenHolder, authorized_until, principal_of, requires
from gateway.errors import BadRequest, GatewayError, NotFound
from gateway.fhir import bundle, consents, documents, mapping, params, patients, studies
from gateway.fhir.capability import capability_statement
from gateway.fhir.document_mapping import DICOM
from gateway.fhir.mapping import Resource
from gateway.fhir.params import Paging, SearchRequest, paging
from gateway.fhir.responses import JSON_FORMATS, FhirResponse, negotiate, operation_outcome
from gateway.outages import outage
from gateway.records.access import Access
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
        except Exception as exc:
            if outage(exc) is not None:
                raise  # the app's handler answers 503 (gateway/error_handlers.py)
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
@requires("ImagingStudy", "r")
async def read_imaging_study(request: Request, services: Services, access: Access) -> Response:
    page = await services.records.studies.read(access, request.path_params["id"])
    return FhirResponse(studies.resources(page, services.mapping_context)[0])


@fhir_endpoint
@requires("ImagingStudy", "s")
async def search_imaging_study(request: Request, services: Services, access: Access) -> Response:
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
    criteria = studies.parse(query, settings.fhir_base_url)
    result = await services.records.studies.search(
        access,
        studies.study_query(criteria, services.mapping_context.local_zone),
        page.offset,
        0 if page.summary_count else page.count,
    )
    includes: list[Resource] = []
    if "ImagingStudy:subject" in wanted_includes:
        includes.extend(studies.subjects(result))
    if "ImagingStudy:endpoint" in wanted_includes and result.studies:
        includes.append(mapping.endpoint(services.mapping_context))
    matches = studies.resources(result, services.mapping_context)
    headers = {}
    holder = principal_of(request)
    if studies.wants_capability(request.headers.get("prefer", "")) and result.studies:
        if not isinstance(holder, TokenHolder):
            raise BadRequest("A capability URL is issued only to a request with an access token.")
        url = await services.records.capabilities.issue(
            access,
            [detail.summary for detail in result.studies],
            until=authorized_until(holder.grant),
            grant_id=holder.grant.grant_id,
        )
        matches = [studies.with_capability(m, url, services.mapping_context) for m in matches]
        headers["Preference-Applied"] = studies.CAPABILITY_PREFERENCE
    return FhirResponse(
        bundle.searchset(
            base_url=settings.fhir_base_url,
            resource_type="ImagingStudy",
            query=query.used_items(),
            matches=matches,
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
        ),
        headers=headers,
    )


@fhir_endpoint
@requires("Patient", "r")
async def read_patient(request: Request, services: Services, access: Access) -> Response:
    fhir_id = request.path_params["id"]
    study = await services.records.patients.read(access, fhir_id)
    return FhirResponse(mapping.patient(study, fhir_id))


def _listed(
    settings: Settings,
    query: SearchRequest,
    page: Paging,
    resource_type: str,
    found: list[Resource],
) -> Response:
    """A searchset of one page of ``found``, a search answered whole in the gateway."""
    shown = [] if page.summary_count else found[page.offset : page.offset + page.count]
    return _page_of(settings, query, page, resource_type, shown, len(found))


def _page_of(
    settings: Settings,
    query: SearchRequest,
    page: Paging,
    resource_type: str,
    shown: list[Resource],
    total: int,
) -> Response:
    return FhirResponse(
        bundle.searchset(
            base_url=settings.fhir_base_url,
            resource_type=resource_type,
            query=query.used_items(),
            matches=shown,
            total=total,
            offset=page.offset,
            count=None if page.summary_count else page.count,
        )
    )


@fhir_endpoint
@requires("Patient", "s")
async def search_patient(request: Request, services: Services, access: Access) -> Response:
    settings = services.settings
    query = search_request(request, patients.SEARCH_PARAMETERS)
    page = paging(query, settings.page_size, settings.max_page_size)
    found = await services.records.patients.search(access, patients.parse(query))
    resources = [mapping.patient(study, fhir_id) for fhir_id, study in found]
    return _listed(settings, query, page, "Patient", resources)


@fhir_endpoint
@requires("Endpoint", "r")
async def read_endpoint(request: Request, services: Services, access: Access) -> Response:
    if request.path_params["id"] != mapping.ENDPOINT_ID:
        raise NotFound(f"Endpoint/{request.path_params['id']} is not known.")
    return FhirResponse(mapping.endpoint(services.mapping_context))


@fhir_endpoint
@requires("Endpoint", "s")
async def search_endpoint(request: Request, services: Services, access: Access) -> Response:
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
@requires("DocumentReference", "r")
async def read_document_reference(request: Request, services: Services, access: Access) -> Response:
    found = await services.records.documents.read(access, request.path_params["id"])
    fhir_url = services.settings.fhir_base_url
    return FhirResponse(documents.resources(found, services.mapping_context, fhir_url)[0])


@fhir_endpoint
@requires("DocumentReference", "s")
async def search_document_reference(
    request: Request, services: Services, access: Access
) -> Response:
    settings = services.settings
    query = search_request(request, documents.SEARCH_PARAMETERS)
    page = paging(query, settings.page_size, settings.max_page_size)
    for include in query.all("_include"):
        raise BadRequest(
            f"Parameter '_include': '{include}' is not supported for DocumentReference."
        )
    criteria = documents.parse(query, settings.fhir_base_url)
    found = await services.records.documents.find(access, documents.document_query(criteria))
    matching = documents.matching(found, criteria, services.mapping_context, settings.fhir_base_url)
    count = 0 if page.summary_count else page.count
    return FhirResponse(
        bundle.searchset(
            base_url=settings.fhir_base_url,
            resource_type="DocumentReference",
            query=query.used_items(),
            matches=matching[page.offset : page.offset + count] if count else [],
            total=None if found.truncated else len(matching),
            offset=page.offset,
            count=None if page.summary_count else page.count,
            warning=(
                f"More than {settings.max_search_candidates} report series match; only the "
                "first ones were considered. Narrow the search (patient, related, date)."
                if found.truncated
                else None
            ),
        )
    )


@fhir_endpoint
@requires("Practitioner", "r")
async def read_practitioner(request: Request, services: Services, access: Access) -> Response:
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


@fhir_endpoint
@requires("AuditEvent", "s")
async def search_audit_event(request: Request, services: Services, access: Access) -> Response:
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
    records, total = await services.records.trail.events(
        access,
        patient=patient,
        since=since,
        until=until,
        agent=agent,
        study=study,
        limit=0 if page.summary_count else page.count,
        offset=page.offset,
    )
    resources = [audit_event(r, settings.public_url) for r in records]
    return _page_of(settings, query, page, "AuditEvent", resources, total)


@fhir_endpoint
@requires("AuditEvent", "r")
async def read_audit_event(request: Request, services: Services, access: Access) -> Response:
    record = await services.records.trail.event(access, request.path_params["id"])
    return FhirResponse(audit_event(record, services.settings.public_url))


@fhir_endpoint
@requires("Consent", "s")
async def search_consent(request: Request, services: Services, access: Access) -> Response:
    settings = services.settings
    query = search_request(request, consents.SEARCH_PARAMETERS)
    page = paging(query, settings.page_size, settings.max_page_size)
    patient = None
    for value in query.all("patient"):
        patient = params.references("patient", value, "Patient", settings.fhir_base_url)[0]
    wanted_status = {t.code for v in query.all("status") for t in params.tokens("status", v)}
    found = consents.resources(
        await services.records.trail.consents(access, patient=patient), services.clock()
    )
    if wanted_status:
        found = [c for c in found if c["status"] in wanted_status]
    return _listed(settings, query, page, "Consent", found)


@fhir_endpoint
@requires("Consent", "r")
async def read_consent(request: Request, services: Services, access: Access) -> Response:
    found = consents.resources(
        await services.records.trail.consents(access, consent_id=request.path_params["id"][:80]),
        services.clock(),
    )
    if not found:
        raise NotFound(f"Consent/{request.path_params['id']} is not known.")
    return FhirResponse(found[0])


def _wants_binary_resource(request: Request) -> bool:
    accept = request.headers.get("accept", "")
    offered = [part.split(";")[0].strip().lower() for part in accept.split(",")]
    return bool(request.query_params.getlist("_format")) or any(
        media in JSON_FORMATS or media.startswith("application/fhir+") for media in offered
    )


@requires("DocumentReference", "r")
async def _binary(request: Request, services: Services, access: Access) -> Response:
    """A document's DICOM object: raw for a plain client, a Binary resource for a FHIR one."""
    content = await services.records.documents.part10(access, request.path_params["id"])
    if _wants_binary_resource(request):
        return FhirResponse(
            {
                "resourceType": "Binary",
                "id": request.path_params["id"],
                "contentType": DICOM,
                "data": base64.b64encode(content).decode(),
            }
        )
    return Response(content, media_type=DICOM)


async def read_binary(request: Request) -> Response:
    """Binary negotiates on its own: ``application/dicom`` is an answer, not an error."""
    services: Services = request.state.services
    try:
        if _wants_binary_resource(request):
            negotiate(request)
        return await _binary(request, services)
    except GatewayError as exc:
        return error_response(exc)
    except Exception as exc:
        if outage(exc) is not None:
            raise  # the app's handler answers 503 (gateway/error_handlers.py)
        logger.exception("unhandled error in %s %s", request.method, request.url.path)
        return FhirResponse(
            operation_outcome(500, "exception", "An internal error occurred."), status_code=500
        )


read_binary.requirement = _binary.requirement  # type: ignore[attr-defined]


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
    if request.method in ("GET", "HEAD") and path.rstrip("/") == "metadata":
        return await metadata(request)  # some clients add a slash to every path
    if request.method in ("GET", "HEAD") and path.split("/", 1)[0] in known:
        return FhirResponse(
            operation_outcome(
                404, "not-found", f"There is nothing at '{path[:80]}'; check the address."
            ),
            status_code=404,
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
