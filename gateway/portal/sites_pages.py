"""The portal's "Send to a hospital" page: a patient sends studies to an organization.

The organization's systems may then fetch the chosen studies (its backend client) until
the chosen date, and, when it receives pushes, the gateway sends them to its archive
in the background; the page shows each push's progress and final status. The patient
can withdraw a send at any time: the organization is refused at its next request.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from gateway.errors import BadRequest
from gateway.numbers import whole_number
from gateway.organizations.sending import SendError, SendState, state_of
from gateway.portal.pages import message, moment, redirect, render, signed_in, signed_in_form
from gateway.portal.shares_pages import shareable
from gateway.services import Services
from gateway.store.models import Account, BrowserSession

STATE_WORDS = {"active": "Active", "expired": "Expired", "revoked": "Withdrawn"}
PUSH_WORDS = {
    "queued": "Waiting to be sent",
    "running": "Being sent",
    "done": "Delivered",
    "partial": "Partly delivered",
    "failed": "Could not be delivered",
    "cancelled": "Stopped (withdrawn)",
}


async def _page(
    services: Services,
    browser: BrowserSession,
    account: Account,
    error: str | None = None,
    entered: dict[str, Any] | None = None,
    notice: str | None = None,
) -> Response:
    patient = account.patient_fhir_id or ""
    now = services.auth.sends.clock()
    organizations = {o.id: o for o in await services.auth.organizations.all()}
    sends = await services.auth.sends.of_patient(patient)
    jobs = await services.transfers.jobs(patient=patient, send_ids=[s.id for s in sends])
    shown = []
    for send in sends:
        state = state_of(send, now)
        pushes = [
            {
                "status": PUSH_WORDS.get(j.status, j.status),
                "problem": j.status in ("failed", "partial"),
                "sent": j.sent,
                "total": j.total,
                "refused": j.failed,
                "error": j.last_error,
            }
            for j in jobs
            if j.send_id == send.id
        ]
        organization = organizations.get(send.organization_id)
        shown.append(
            {
                "id": send.id,
                "to": organization.name if organization else send.organization_id,
                "state": STATE_WORDS[state.value],
                "active": state is SendState.active,
                "studies": len(send.studies),
                "created": moment(send.created_at),
                "expires": moment(send.expires_at),
                "by_staff": bool(send.sent_by),
                "reason": send.reason,
                "pushes": pushes,
            }
        )
    return render(
        "sites.html",
        services,
        400 if error else 200,
        signed_in=True,
        csrf_token=browser.csrf_token,
        organizations=list(organizations.values()),
        sends=shown,
        studies=await shareable(services, account),
        days=sorted({d for d in (1, 7, 30, 90) if d <= services.auth.sends.max_days}),
        default_days=services.settings.share_days,
        error=error,
        notice=notice,
        entered=entered or {},
    )


@signed_in
async def sites(
    request: Request, services: Services, browser: BrowserSession, account: Account
) -> Response:
    notice = "The send was withdrawn." if request.query_params.get("withdrawn") else None
    return await _page(services, browser, account, notice=notice)


@signed_in_form(_page)
async def send(
    request: Request, services: Services, browser: BrowserSession, account: Account
) -> Response:
    fields: dict[str, Any] = request.state.form
    own = {study.uid for study in await shareable(services, account)}
    asked = list(fields.get("study", []))
    chosen = [uid for uid in asked if uid in own]
    organization = await services.auth.organizations.get(str(fields.get("organization", "")))
    try:
        if organization is None:
            raise SendError("Choose the hospital to send to.")
        if len(chosen) != len(asked):
            raise SendError("One of the chosen studies cannot be sent.")
        try:
            days = whole_number("days", str(fields.get("days", "")), maximum=9999)
        except BadRequest:
            days = 0
        key = await services.records.patients.key_of(account.patient_fhir_id or "")
        if key is None:
            raise SendError("Your studies cannot be found just now.")
        await services.sites.send(
            organization=organization,
            patient_fhir_id=account.patient_fhir_id or "",
            patient_key=key,
            studies=chosen,
            days=days,
            account_id=account.id,
        )
    except SendError as exc:
        return await _page(services, browser, account, str(exc), entered=fields)
    return redirect(services, "/portal/sites")


@signed_in_form(_page)
async def revoke(
    request: Request, services: Services, browser: BrowserSession, account: Account
) -> Response:
    send_id = request.path_params["send"][:64]
    revoked = await services.sites.revoke(
        send_id, patient_fhir_id=account.patient_fhir_id or "", account_id=account.id
    )
    if not revoked:
        return message(
            services,
            404,
            "Nothing to withdraw",
            "That send is not one of yours, or it was already withdrawn.",
            signed_in=True,
            csrf_token=browser.csrf_token,
            back="/portal/sites",
            back_label="Back to sending",
        )
    return redirect(services, "/portal/sites?withdrawn=1")


def routes() -> list[BaseRoute]:
    return [
        Route("/sites", sites, methods=["GET"]),
        Route("/sites", send, methods=["POST"]),
        Route("/sites/{send}/revoke", revoke, methods=["POST"]),
    ]
