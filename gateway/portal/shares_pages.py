"""The portal's Shares pages: make a share link, see every link made, withdraw one.

The link and its PIN are shown once, on the page that answers the creation, and
never again (only their hashes are kept). With SMTP configured, the link (never
the PIN) can also go to the recipient by mail.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from gateway.audit import AuditEntry
from gateway.auth import jacket
from gateway.authorization import patient_access
from gateway.errors import BadRequest, NotRecorded
from gateway.mail import MailError, share_message
from gateway.numbers import whole_number
from gateway.portal.pages import message, moment, redirect, render, signed_in, signed_in_form
from gateway.portal.shares import ShareError, ShareState, creation_entry, state_of
from gateway.services import Services
from gateway.store.models import Account, BrowserSession

STATE_WORDS = {
    "active": "Active",
    "expired": "Expired",
    "revoked": "Withdrawn",
    "locked": "Locked after 5 wrong PINs",
}


async def shareable(services: Services, account: Account) -> list[jacket.JacketStudy]:
    """The patient's studies that may be shared: their own, past the release delay."""
    access = await patient_access(services, account.patient_fhir_id or "")
    studies = jacket.lines(await services.records.studies.jacket(access))
    return [s for s in studies if not s.held]


async def _page(
    services: Services,
    browser: BrowserSession,
    account: Account,
    error: str | None = None,
    withdrawn: str | None = None,
    entered: dict[str, Any] | None = None,
) -> Response:
    """The Shares page; ``error`` makes it a 400; ``withdrawn`` is a share id the patient
    was sent back with after withdrawing it."""
    now = services.shares.clock()
    notice = None
    shares = []
    for share in await services.shares.of_account(account.id):
        state = state_of(share, now)
        label = share.label or "(no name given)"
        shares.append(
            {
                "id": share.id,
                "state": STATE_WORDS[state.value],
                "active": state is ShareState.active,
                "label": label,
                "email": share.email,
                "studies": len(share.studies),
                "created": moment(share.created_at),
                "expires": moment(share.expires_at),
                "opened": moment(share.last_opened_at) if share.last_opened_at else None,
            }
        )
        # Said only of the patient's own share, and only once it is withdrawn indeed.
        if share.id == withdrawn and state is ShareState.revoked:
            notice = f"The share link for {label} was withdrawn."
    return render(
        "shares.html",
        services,
        400 if error else 200,
        signed_in=True,
        csrf_token=browser.csrf_token,
        shares=shares,
        studies=await shareable(services, account),
        days=services.shares.day_choices(),
        default_days=services.settings.share_days,
        can_mail=services.mailer.configured,
        error=error,
        notice=notice,
        entered=entered or {},
    )


@signed_in
async def shares(
    request: Request, services: Services, browser: BrowserSession, account: Account
) -> Response:
    return await _page(services, browser, account, withdrawn=request.query_params.get("withdrawn"))


def _days(text: str) -> int:
    """The chosen lifetime; 0, which the share service refuses in words, when not a number."""
    try:
        return whole_number("days", text, maximum=9999)
    except BadRequest:
        return 0


@signed_in_form(_page)
async def create(
    request: Request, services: Services, browser: BrowserSession, account: Account
) -> Response:
    fields: dict[str, Any] = request.state.form
    own = {study.uid for study in await shareable(services, account)}
    chosen = [uid for uid in fields.get("study", []) if uid in own]
    days_text = str(fields.get("days", services.settings.share_days))
    try:
        if len(chosen) != len(fields.get("study", [])):
            raise ShareError("One of the chosen studies cannot be shared.")
        created = await services.shares.create(
            account_id=account.id,
            patient_fhir_id=account.patient_fhir_id or "",
            studies=chosen,
            days=_days(days_text),
            label=str(fields.get("label", "")),
            email=str(fields.get("email", "")),
        )
    except ShareError as exc:
        return await _page(services, browser, account, str(exc), entered=fields)
    share = created.share
    try:
        await services.audit.record(creation_entry(share, account.id))
    except NotRecorded:
        # Unrecorded, it must not work: its link and PIN are never shown, and it is withdrawn.
        await services.shares.revoke(share.id, account.id)
        raise
    mailed = None
    if share.email and services.mailer.configured:
        subject, text = share_message(
            link=services.shares.link(created.token),
            patient_name=account.display_name,
            label=share.label,
            expires=share.expires_at,
            studies=len(share.studies),
        )
        try:
            await services.mailer.send(share.email, subject, text)
            mailed = True
        except MailError:
            mailed = False
        await services.audit.record(
            AuditEntry(
                category="share",
                action="mail",
                outcome=250 if mailed else 502,
                user=account.id,
                patient=account.patient_fhir_id,
                detail=f"share {share.id}",
            )
        )
    return render(
        "share_created.html",
        services,
        201,
        signed_in=True,
        csrf_token=browser.csrf_token,
        link=services.shares.link(created.token),
        pin=created.pin,
        share=share,
        expires=moment(share.expires_at),
        mailed=mailed,
    )


@signed_in_form(_page)
async def revoke(
    request: Request, services: Services, browser: BrowserSession, account: Account
) -> Response:
    share_id = request.path_params["share"][:64]
    revoked = await services.shares.revoke(share_id, account.id)
    await services.audit.record(
        AuditEntry(
            category="share",
            action="revoke",
            outcome=200 if revoked else 404,
            user=account.id,
            patient=account.patient_fhir_id,
            detail=f"share {share_id}",
        )
    )
    if not revoked:
        return message(
            services,
            404,
            "Nothing to withdraw",
            "That share link is not one of yours, or it was already withdrawn.",
            signed_in=True,
            csrf_token=browser.csrf_token,
            back="/portal/shares",
            back_label="Back to my share links",
        )
    return redirect(services, f"/portal/shares?withdrawn={share_id}")


def routes() -> list[BaseRoute]:
    return [
        Route("/shares", shares, methods=["GET"]),
        Route("/shares", create, methods=["POST"]),
        Route("/shares/{share}/revoke", revoke, methods=["POST"]),
    ]
