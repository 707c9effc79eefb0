"""``/admin/research``: research projects and their deliveries, for backend clients holding
``admin/research`` (the same things ``gateway research`` does on the command line).

- ``GET /admin/research/projects``: the projects (never their keys);
- ``POST /admin/research/projects``: a new project (JSON: ``name``, ``protocolId``,
  ``archiveUrl`` or none for a download area, ``archiveToken``, ``options``,
  ``acceptBurnedIn``, ``clientId``, ``description``); its pseudonym key is generated;
- ``DELETE /admin/research/projects/{id}``: the project ends (no more deliveries);
- ``GET /admin/research/projects/{id}/deliveries[?withdrawn=true]``: what was delivered
  (with ``withdrawn=true``: what was delivered under a donation since withdrawn, for
  the project to delete), by pseudonyms;
- ``POST /admin/research/projects/{id}/deliver``: one delivery pass now (202: the
  deliveries it queued, which the transfer worker sends);
- ``GET /admin/research/projects/{id}/package``: the donated studies, de-identified, as
  one streamed ZIP.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import BaseRoute, Route

from gateway.admin.routes import NO_STORE, Refusal, admin_grant, read_json
from gateway.auth.clients import ClientKind
from gateway.donation.projects import Project, ProjectError
from gateway.services import Services

SCOPE = "admin/research"
MAX_BODY = 16 << 10


def _text(body: dict[str, Any], name: str, *, required: bool = False) -> str | None:
    value = body.get(name)
    if value is None and not required:
        return None
    if not isinstance(value, str) or len(value) > 2000:
        raise Refusal(400, "invalid_request", f"{name} must be text.")
    return value


async def _project(request: Request, services: Services) -> Project:
    found = await services.donation.projects.get(request.path_params["project"])
    if found is None:
        raise Refusal(404, "not_found", "No such research project.")
    return found


async def projects(request: Request) -> Response:
    services: Services = request.state.services
    try:
        await admin_grant(request, services, SCOPE)
        if request.method == "GET":
            listed = [p.summary() for p in await services.donation.projects.all()]
            return JSONResponse({"projects": listed}, headers=NO_STORE)
        body = await read_json(request, "the project")
        options = body.get("options", [])
        if not isinstance(options, list) or not all(isinstance(o, str) for o in options):
            raise Refusal(400, "invalid_request", "options must be a list of option names.")
        if not isinstance(body.get("acceptBurnedIn", False), bool):
            raise Refusal(400, "invalid_request", "acceptBurnedIn must be true or false.")
        client_id = _text(body, "clientId")
        if client_id is not None:
            client = await services.auth.clients.get(client_id)
            if client is None or client.kind != ClientKind.backend.value:
                raise Refusal(400, "invalid_request", "clientId names no backend client here.")
        try:
            made = await services.donation.projects.add(
                name=_text(body, "name", required=True) or "",
                protocol_id=_text(body, "protocolId", required=True) or "",
                description=_text(body, "description") or "",
                archive_url=_text(body, "archiveUrl"),
                archive_token=_text(body, "archiveToken"),
                options=options,
                accept_burned_in=body.get("acceptBurnedIn") is True,
                client_id=client_id,
            )
        except ProjectError as exc:
            raise Refusal(400, "invalid_request", str(exc)) from None
    except Refusal as refusal:
        return refusal.response()
    return JSONResponse(made.summary(), status_code=201, headers=NO_STORE)


async def project(request: Request) -> Response:
    services: Services = request.state.services
    try:
        await admin_grant(request, services, SCOPE)
        found = await _project(request, services)
    except Refusal as refusal:
        return refusal.response()
    if request.method == "DELETE":
        await services.donation.remove_project(found.id)
        return Response(status_code=204, headers=NO_STORE)
    return JSONResponse(found.summary(), headers=NO_STORE)


async def deliveries(request: Request) -> Response:
    services: Services = request.state.services
    try:
        await admin_grant(request, services, SCOPE)
        found = await _project(request, services)
    except Refusal as refusal:
        return refusal.response()
    withdrawn = request.query_params.get("withdrawn", "").lower() in ("1", "true", "yes")
    listed = await services.donation.deliveries.of_project(found.id, withdrawn_only=withdrawn)
    return JSONResponse(
        {"project": found.id, "deliveries": [d.for_project() for d in listed]}, headers=NO_STORE
    )


async def deliver(request: Request) -> Response:
    services: Services = request.state.services
    try:
        await admin_grant(request, services, SCOPE)
        await _project(request, services)
    except Refusal as refusal:
        return refusal.response()
    queued = await services.donation.deliver()
    return JSONResponse({"queued": queued}, status_code=202, headers=NO_STORE)


async def package(request: Request) -> Response:
    services: Services = request.state.services
    try:
        await admin_grant(request, services, SCOPE)
        found = await _project(request, services)
    except Refusal as refusal:
        return refusal.response()
    name = f"{found.protocol_id}-deidentified.zip"
    return StreamingResponse(
        await services.donation.package(found),
        media_type="application/zip",
        headers={**NO_STORE, "Content-Disposition": f'attachment; filename="{name}"'},
    )


def routes() -> list[BaseRoute]:
    """Below ``/admin``."""
    return [
        Route("/research/projects", projects, methods=["GET", "POST"]),
        Route("/research/projects/{project}", project, methods=["GET", "DELETE"]),
        Route("/research/projects/{project}/deliveries", deliveries, methods=["GET"]),
        Route("/research/projects/{project}/deliver", deliver, methods=["POST"]),
        Route("/research/projects/{project}/package", package, methods=["GET"]),
    ]
