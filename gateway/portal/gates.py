"""Who is looking, for the pages and images under ``/portal`` and ``/share``.

A signed-in patient sees their own released studies; a recipient who opened
a share link with its PIN sees that share's studies, while it lasts. The
image routes (``/portal/dicomweb``, ``/share/dicomweb``) are the DICOMweb
rendering routes themselves, behind :class:`ImageGate`. Like the bearer
token's gate, it only says who is asking (a principal of
:mod:`gateway.authorization`); the routes' declared needs decide the access,
so one decision point and one audit trail cover all three ways in.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from gateway.authorization import PortalPatient, Principal, ShareRecipient
from gateway.dicomweb.routes import warning_header
from gateway.store.models import Account, BrowserSession, ShareLink

if TYPE_CHECKING:
    from gateway.services import Services

PORTAL_COOKIE = "gateway_portal"
SHARE_COOKIE = "gateway_share"


async def portal_patient(
    services: Services, cookie: str | None
) -> tuple[BrowserSession, Account] | None:
    """The browser session and patient account behind a portal cookie, if signed in."""
    browser = await services.auth.browser_sessions.load(cookie)
    if browser is None or not browser.account_id:
        return None
    account = await services.auth.accounts.get(browser.account_id)
    if account is None or account.kind != "patient" or not account.patient_fhir_id:
        return None
    return browser, account


async def opened_share(
    services: Services, cookie: str | None
) -> tuple[BrowserSession, ShareLink] | None:
    """The session and share behind a share cookie, while the share still opens."""
    browser = await services.auth.browser_sessions.load(cookie)
    if browser is None or not browser.share_id:
        return None
    share = await services.shares.active(browser.share_id)
    return (browser, share) if share is not None else None


class ImageGate:
    """Wraps the image routes of the portal (``who="portal"``) or of shares (``"share"``)."""

    def __init__(self, app: ASGIApp, who: str) -> None:
        self.app = app
        self.who = who

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        services: Services = scope["state"]["services"]
        cookies = Request(scope).cookies
        principal: Principal | None = None
        if self.who == "portal":
            patient = await portal_patient(services, cookies.get(PORTAL_COOKIE))
            if patient is not None:
                principal = PortalPatient(patient[1].id, patient[1].patient_fhir_id or "")
        else:
            opened = await opened_share(services, cookies.get(SHARE_COOKIE))
            if opened is not None:
                principal = ShareRecipient(opened[1])
        if principal is None:
            message = "Sign in again (or open the share link again) to see these images."
            refusal = PlainTextResponse(
                message + "\n", status_code=401, headers={"Warning": warning_header(message)}
            )
            await refusal(scope, receive, send)
            return
        scope["state"]["principal"] = principal
        await self.app(scope, receive, send)
