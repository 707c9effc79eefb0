"""The portal's Research page: the projects a patient may donate to, what they donated,
and a button to withdraw each donation (forms with the session's CSRF token)."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from gateway.auth import jacket
from gateway.authorization import patient_access
from gateway.errors import BadRequest, NotFound
from gateway.portal.pages import moment, redirect, render, signed_in, signed_in_form
from gateway.services import Services
from gateway.store.models import Account, BrowserSession

ALL = "all"


async def _page(
    services: Services,
    browser: BrowserSession,
    account: Account,
    error: str | None = None,
    notice: str | None = None,
) -> Response:
    patient = account.patient_fhir_id or ""
    access = await patient_access(services, patient)
    studies = [s for s in jacket.lines(await services.records.studies.jacket(access)) if not s.held]
    names = {s.uid: s.name for s in studies}
    found = await services.donation.of_patient(patient)
    delivered: dict[str, int] = {}
    for delivery in found.deliveries:
        if delivery.went:
            delivered[delivery.consent_id] = delivered.get(delivery.consent_id, 0) + 1
    projects: list[dict[str, Any]] = []
    for project in found.projects:
        donations = [
            {
                "id": c.id,
                "what": names.get(c.study_uid, "a study")
                if c.study_uid
                else "All my studies, including future ones",
                "since": moment(c.created_at),
                "withdrawn": moment(c.withdrawn_at) if c.withdrawn_at else None,
                "delivered": delivered.get(c.id, 0),
            }
            for c in found.consents
            if c.project_id == project.id
        ]
        projects.append(
            {
                "id": project.id,
                "name": project.name,
                "protocol": project.protocol_id,
                "description": project.description,
                "donations": donations,
            }
        )
    return render(
        "research.html",
        services,
        400 if error else 200,
        signed_in=True,
        csrf_token=browser.csrf_token,
        projects=projects,
        studies=studies,
        error=error,
        notice=notice,
    )


@signed_in
async def research(
    request: Request, services: Services, browser: BrowserSession, account: Account
) -> Response:
    notice = {
        "donated": "Thank you: your donation was recorded.",
        "withdrawn": "Your donation was withdrawn: nothing more will be sent.",
    }.get(request.query_params.get("done", ""))
    return await _page(services, browser, account, notice=notice)


@signed_in_form(_page)
async def donate(
    request: Request, services: Services, browser: BrowserSession, account: Account
) -> Response:
    fields: dict[str, Any] = request.state.form
    chosen = [str(uid) for uid in fields.get("study", [])]
    studies = ["" if uid == ALL else uid for uid in chosen]
    try:
        await services.donation.donate(
            request.path_params["project"][:64],
            account.patient_fhir_id or "",
            studies,
            by=account.id,
        )
    except (BadRequest, NotFound) as exc:
        return await _page(services, browser, account, error=exc.message)
    return redirect(services, "/portal/research?done=donated")


@signed_in_form(_page)
async def withdraw(
    request: Request, services: Services, browser: BrowserSession, account: Account
) -> Response:
    withdrawn = await services.donation.withdraw(
        request.path_params["consent"][:64], account.patient_fhir_id or "", by=account.id
    )
    if not withdrawn:
        return await _page(
            services, browser, account, error="That donation is not yours or already withdrawn."
        )
    return redirect(services, "/portal/research?done=withdrawn")


def routes() -> list[BaseRoute]:
    return [
        Route("/research", research, methods=["GET"]),
        Route("/research/{project}/donate", donate, methods=["POST"]),
        Route("/research/donations/{consent}/withdraw", withdraw, methods=["POST"]),
    ]
