"""``/research``: what a project's research backend client reads, de-identified on the fly.

A backend client registered for a project (``gateway research projects add
--client``) gets a token with ``system/ImagingStudy.rs`` as any backend client
does, and reads here, never under ``/fhir`` or ``/dicomweb`` (refused there):

- ``GET /research/dicomweb/studies``: the donated studies (QIDO-RS, study level);
- ``GET /research/dicomweb/studies/{study}/metadata``: their instances' metadata;
- ``GET /research/dicomweb/studies/{study}/series/{series}/instances/{instance}``:
  one de-identified instance (WADO-RS, ``multipart/related; type="application/dicom"``);
- ``GET /research/fhir/ImagingStudy``: the donated studies as a FHIR searchset.

Every UID is the project's new UID; every answer has gone through the engine.
Each answer is audited once per patient whose data it holds.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from gateway.audit import AuditEntry
from gateway.authorization import research_project
from gateway.dicomweb import dicomjson as dj
from gateway.donation.delivery import Donated
from gateway.donation.projects import Project
from gateway.fhir import bundle, mapping
from gateway.fhir.responses import FhirResponse
from gateway.services import Services

DICOM_JSON = "application/dicom+json"


async def _audit(
    services: Services, project: Project, action: str, studies: Iterable[Donated]
) -> None:
    seen = {(d.patient, d.study_uid) for d in studies}
    entries = [
        AuditEntry(
            category="research",
            action=action,
            outcome=200,
            client_id=None,
            user=f"research/{project.id}",
            patient=patient,
            study=study,
            detail=f"{project.name}: de-identified copy read by the project's client",
        )
        for patient, study in sorted(seen)
    ]
    if entries:
        await services.audit.record(*entries)


async def studies(request: Request) -> Response:
    services: Services = request.state.services
    project = await research_project(request, services)
    donated = await services.donation.donated(project)
    found = await services.donation.pull.studies(project, donated)
    await _audit(services, project, "pull", (f.donated for f in found))
    if not found:
        return Response(status_code=204)
    return Response(orjson.dumps([f.record for f in found]), media_type=DICOM_JSON)


async def metadata(request: Request) -> Response:
    services: Services = request.state.services
    project = await research_project(request, services)
    donated = await services.donation.donated(project)
    study = services.donation.pull.original(project, donated, request.path_params["study"])
    answer = await services.donation.pull.metadata(project, study)
    await _audit(services, project, "pull", [study])
    return Response(orjson.dumps(answer), media_type=DICOM_JSON)


async def instance(request: Request) -> Response:
    services: Services = request.state.services
    project = await research_project(request, services)
    donated = await services.donation.donated(project)
    study = services.donation.pull.original(project, donated, request.path_params["study"])
    data = await services.donation.pull.instance(
        project, study, request.path_params["series"], request.path_params["instance"]
    )
    await _audit(services, project, "pull", [study])
    boundary = secrets.token_hex(16)
    body = b"".join(
        (
            f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode(),
            data,
            f"\r\n--{boundary}--\r\n".encode(),
        )
    )
    return Response(
        body,
        media_type=f'multipart/related; type="application/dicom"; boundary={boundary}',
    )


async def imaging_studies(request: Request) -> Response:
    services: Services = request.state.services
    project = await research_project(request, services)
    donated = await services.donation.donated(project)
    found = await services.donation.pull.studies(project, donated)
    resources = []
    for item in found:
        resource = mapping.imaging_study(
            item.record, [], [], patient_id=None, context=services.mapping_context
        )
        resource.pop("endpoint", None)
        pseudonym = dj.text(item.record, "PatientID") or ""
        resource["subject"] = {"identifier": {"value": pseudonym}, "display": pseudonym}
        resources.append(resource)
    await _audit(services, project, "pull", (f.donated for f in found))
    base = f"{services.settings.public_url}/research/fhir"
    return FhirResponse(
        bundle.searchset(
            base_url=base,
            resource_type="ImagingStudy",
            query=[],
            matches=resources,
            total=len(resources),
        )
    )


def routes() -> list[BaseRoute]:
    instance_path = "/studies/{study}/series/{series}/instances/{instance}"
    return [
        Route("/dicomweb/studies", studies, methods=["GET"]),
        Route("/dicomweb/studies/{study}/metadata", metadata, methods=["GET"]),
        Route(f"/dicomweb{instance_path}", instance, methods=["GET"]),
        Route("/fhir/ImagingStudy", imaging_studies, methods=["GET"]),
    ]
