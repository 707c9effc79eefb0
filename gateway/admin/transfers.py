"""``/admin/transfers``: staff send a patient's studies to an organization, on the
patient's behalf and with the reason recorded, and see every send and push.

For backend clients holding ``admin/transfers``. ``POST /admin/transfers`` takes
``{"patient" | "identifier", "organization", "studies": [...], "days", "reason"}``
and answers 201 with the send (a FHIR Consent ``org-{id}``) and its push job, if the
organization receives pushes. ``GET /admin/transfers`` lists sends and pushes with
their status; ``POST /admin/transfers/{send}/revoke`` withdraws a send.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from gateway.admin.routes import NO_STORE, Refusal, admin_grant, patient_named, read_json
from gateway.organizations.sending import SendError, state_of
from gateway.services import Services
from gateway.store.models import OrganizationSend, TransferJob, as_utc

SCOPE = "admin/transfers"


def _job(job: TransferJob | None) -> dict[str, Any] | None:
    if job is None:
        return None
    return {
        "id": job.id,
        "status": job.status,
        "sent": job.sent,
        "refused": job.failed,
        "total": job.total,
        "tries": job.attempts,
        "last_error": job.last_error,
    }


def _send(services: Services, send: OrganizationSend, jobs: list[TransferJob]) -> dict[str, Any]:
    return {
        "id": send.id,
        "consent": f"Consent/org-{send.id}",
        "organization": send.organization_id,
        "patient": {"reference": f"Patient/{send.patient_fhir_id}"},
        "studies": list(send.studies),
        "status": state_of(send, services.auth.sends.clock()).value,
        "sent_by": send.sent_by or "patient",
        "reason": send.reason,
        "created": as_utc(send.created_at).isoformat(timespec="seconds"),
        "expires": as_utc(send.expires_at).isoformat(timespec="seconds"),
        "pushes": [_job(j) for j in jobs if j.send_id == send.id],
    }


async def create(request: Request) -> Response:
    services: Services = request.state.services
    try:
        grant = await admin_grant(request, services, SCOPE)
        body = await read_json(request, "the send")
        fhir_id = await patient_named(services, body)
        org_id, studies = body.get("organization"), body.get("studies")
        reason, days = body.get("reason"), body.get("days", services.settings.share_days)
        if not isinstance(org_id, str) or len(org_id) > 64:
            raise Refusal(400, "invalid_request", "organization must be an organization id.")
        organization = await services.auth.organizations.get(org_id)
        if organization is None:
            raise Refusal(404, "not_found", f"No organization {org_id}.")
        if not isinstance(studies, list) or not all(isinstance(s, str) for s in studies):
            raise Refusal(400, "invalid_request", "studies must be a list of StudyInstanceUIDs.")
        if not isinstance(reason, str) or not reason.strip():
            raise Refusal(400, "invalid_request", "Give the reason for sending (reason).")
        if not isinstance(days, int) or isinstance(days, bool):
            raise Refusal(400, "invalid_request", "days must be a whole number.")
        key, own = await services.records.studies.of_patient_for_staff(fhir_id)
        if key is None or not studies or any(uid not in own for uid in studies):
            raise Refusal(
                400, "invalid_request", "Each study must be one of the patient's studies."
            )
        sent = await services.sites.send(
            organization=organization,
            patient_fhir_id=fhir_id,
            patient_key=key,
            studies=studies,
            days=days,
            staff_client=grant.client_id,
            reason=reason,
        )
    except SendError as exc:
        return Refusal(400, "invalid_request", str(exc)).response()
    except Refusal as refusal:
        return refusal.response()
    answer = _send(services, sent.send, [sent.job] if sent.job else [])
    return JSONResponse(answer, status_code=201, headers=NO_STORE)


async def listing(request: Request) -> Response:
    services: Services = request.state.services
    try:
        await admin_grant(request, services, SCOPE)
    except Refusal as refusal:
        return refusal.response()
    sends = await services.auth.sends.recent()
    jobs = await services.transfers.jobs(send_ids=[s.id for s in sends], limit=2000)
    return JSONResponse(
        {
            "sends": [_send(services, s, jobs) for s in sends],
            "pushes": [
                {**(_job(j) or {}), "send": j.send_id, "to": f"{j.target_kind}/{j.target_id}"}
                for j in await services.transfers.jobs(limit=500)
            ],
        },
        headers=NO_STORE,
    )


async def revoke(request: Request) -> Response:
    services: Services = request.state.services
    try:
        grant = await admin_grant(request, services, SCOPE)
    except Refusal as refusal:
        return refusal.response()
    send_id = request.path_params["send"][:64]
    if not await services.sites.revoke(send_id, staff_client=grant.client_id):
        return Refusal(404, "not_found", "No such send, or it was withdrawn already.").response()
    return JSONResponse({"id": send_id, "status": "revoked"}, headers=NO_STORE)


def routes() -> list[BaseRoute]:
    return [
        Route("/transfers", create, methods=["POST"]),
        Route("/transfers", listing, methods=["GET"]),
        Route("/transfers/{send}/revoke", revoke, methods=["POST"]),
    ]
