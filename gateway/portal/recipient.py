"""``/share``: what the recipient of a share link opens, with no account.

``/share/{token}`` asks for the PIN. The right PIN opens a fresh session bound
to that share, and the pages after it (``/share/view...``) no longer carry the
token. They show the shared studies, their reports and images, and a streamed
ZIP download. Revocation, expiry and the lock are checked at every request.
Every opening, wrong PIN, view and download goes to the patient's audit trail.
"""

from __future__ import annotations

import functools
from typing import Any

from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Mount, Route

from gateway import error_handlers
from gateway.apps.ohif import OhifFiles
from gateway.audit import AuditEntry, AuditMiddleware
from gateway.auth.attempts import TooManyAttempts, client_address
from gateway.auth.sessions import csrf_ok
from gateway.authorization import share_access, share_actor
from gateway.dicomweb import routes as dicomweb_routes
from gateway.errors import Held, NotFound
from gateway.portal import recipient_viewer
from gateway.portal.gates import SHARE_COOKIE, ImageGate, opened_share
from gateway.portal.pages import (
    STALE_FORM,
    form_fields,
    image_number,
    message,
    moment,
    redirect,
    render,
    set_cookie,
    too_many,
    zip_response,
)
from gateway.portal.shares import MAX_PIN_FAILURES, PinCheck, ShareState, state_of
from gateway.portal.viewing import study_lines, study_view
from gateway.services import Services
from gateway.store.models import BrowserSession, ShareLink

IMAGES = "/share/dicomweb"
# One answer for every link that does not open, whatever the reason: a recipient (or someone
# holding a stolen link) learns nothing about its state from it.
NOT_VALID = (
    "This share link is not valid: it may be mistyped, it may have expired or been locked "
    "after too many wrong PINs, or the patient may have withdrawn it. "
    "Ask the patient for a new link."
)
SESSION_OVER = "Your access to these studies has ended. Open the share link again to continue."


def _ended(services: Services, status: int, text: str) -> Response:
    return message(services, status, "Shared studies", text)


async def _audit(
    services: Services, share: ShareLink, action: str, outcome: int, **more: str
) -> None:
    actor = share_actor(share)
    await services.audit.record(
        AuditEntry(
            category="share",
            action=action,
            outcome=outcome,
            user=actor.user,
            patient=actor.patient,
            study=more.get("study"),
            detail=more.get("detail", f"share {share.id}"),
        )
    )


async def open_share(request: Request) -> Response:
    """The link itself: the PIN form, and its answer."""
    services: Services = request.state.services
    share = await services.shares.by_token(request.path_params["token"])
    if share is None or state_of(share, services.shares.clock()) is not ShareState.active:
        return _ended(services, 404, NOT_VALID)
    sessions = services.auth.browser_sessions
    browser = await sessions.load(request.cookies.get(SHARE_COOKIE))
    cookie = None
    if browser is None:
        cookie, browser = await sessions.start()
    values = {"csrf_token": browser.csrf_token, "token": request.path_params["token"]}
    if request.method == "GET":
        page = render("share_pin.html", services, **values)
        if cookie:
            set_cookie(page, services, SHARE_COOKIE, cookie, "/share")
        return page
    fields = await form_fields(request, max_fields=8)
    if not csrf_ok(browser, fields.get("csrf_token")):
        return render("share_pin.html", services, 400, error="Please try again.", **values)
    attempts, address = services.auth.attempts, client_address(request)
    try:
        await attempts.take("share-pin", address)
    except TooManyAttempts as exc:
        return too_many(services, exc, "share_pin.html", **values)
    checked = await services.shares.check_pin(share, str(fields.get("pin", "")))
    if checked is PinCheck.opened:
        await _audit(services, share, "open", 200)
        await attempts.give_back("share-pin", address)
        new_cookie, _ = await sessions.open_share(browser, share.id)
        response = redirect(services, "/share/view")
        set_cookie(response, services, SHARE_COOKIE, new_cookie, "/share")
        return response
    if checked is PinCheck.locked:
        await _audit(services, share, "locked", 403)
        # Told apart only on the patient's Shares page: to the recipient, a locked link is
        # one more link that does not open.
        return _ended(services, 404, NOT_VALID)
    await _audit(services, share, "pin-failure", 401)
    stored = await services.shares.get(share.id)
    left = MAX_PIN_FAILURES - (stored.failed_pins if stored else MAX_PIN_FAILURES)
    error = f"That PIN is not right. {left} {'try' if left == 1 else 'tries'} left."
    return render("share_pin.html", services, 401, error=error, **values)


async def _opened(request: Request) -> tuple[Services, BrowserSession | None, ShareLink | None]:
    services: Services = request.state.services
    found = await opened_share(services, request.cookies.get(SHARE_COOKIE))
    return (services, *found) if found else (services, None, None)


def _header(browser: BrowserSession, share: ShareLink) -> dict[str, Any]:
    return {
        "shared": True,
        "share_label": share.label,
        "until": moment(share.expires_at),
        "csrf_token": browser.csrf_token,
    }


async def overview(request: Request, viewer: bool = False) -> Response:
    """The shared studies; ``viewer``: OHIF is installed, so they also open there."""
    services, browser, share = await _opened(request)
    if browser is None or share is None:
        return _ended(services, 401, SESSION_OVER)
    access = await share_access(services, share)
    studies = await study_lines(services, access, list(share.studies))
    await _audit(services, share, "view", 200, detail=f"share {share.id}: the list of studies")
    return render(
        "share_view.html",
        services,
        studies=studies,
        images=IMAGES,
        viewer="/share/ohif/" if viewer and studies else None,
        **_header(browser, share),
    )


async def study(request: Request) -> Response:
    services, browser, share = await _opened(request)
    if browser is None or share is None:
        return _ended(services, 401, SESSION_OVER)
    uid = request.path_params["uid"]
    view = await study_view(services, await share_access(services, share), uid, IMAGES)
    if view is None:
        return _ended(services, 404, "This study is not part of the share.")
    await _audit(services, share, "view", 200, study=uid)
    return render(
        "study.html",
        services,
        view=view,
        shown=view.image(request.query_params.get("series"), image_number(request)),
        page_url=f"/share/view/studies/{uid}",
        images=IMAGES,
        download=f"/share/view/studies/{uid}/download",
        back="/share/view",
        **_header(browser, share),
    )


async def download(request: Request) -> Response:
    """All the shared studies, or one, as a ZIP of DICOM Part 10 files (streamed)."""
    services, browser, share = await _opened(request)
    if browser is None or share is None:
        return _ended(services, 401, SESSION_OVER)
    uid = request.path_params.get("uid")
    if uid is not None and uid not in share.studies:
        return _ended(services, 404, "This study is not part of the share.")
    wanted = [uid] if uid else list(share.studies)
    try:
        archive = await services.records.images.archive(await share_access(services, share), wanted)
    except (NotFound, Held):
        return _ended(services, 404, "This study is not part of the share.")
    await _audit(
        services,
        share,
        "download",
        200,
        study=uid or "",
        detail=f"share {share.id}: ZIP of {len(wanted)} studies",
    )
    name = f"shared-study-{uid[-12:]}" if uid else "shared-studies"
    return zip_response(archive, name)


async def close(request: Request) -> Response:
    """The recipient closes the studies (on a shared computer, say)."""
    services: Services = request.state.services
    sessions = services.auth.browser_sessions
    found = await sessions.load(request.cookies.get(SHARE_COOKIE))
    share = await services.shares.active(found.share_id) if found else None
    fields = await form_fields(request, max_fields=8)
    if found is not None and share is not None and not csrf_ok(found, fields.get("csrf_token")):
        # A stale form closes nothing: the studies stay open, with a Close button that works.
        return message(services, 400, "Please try again", STALE_FORM, **_header(found, share))
    if found is not None:
        await sessions.end(found)
    response = _ended(
        services,
        200,
        "You closed the shared studies. The link opens again with its PIN."
        if share is not None
        else "No shared studies are open in this browser. The link opens them with its PIN.",
    )
    response.delete_cookie(SHARE_COOKIE, path="/share")
    return response


def routes(ohif: OhifFiles | None = None) -> list[BaseRoute]:
    """Under ``/share``; with ``ohif``, the shared studies also open in OHIF (``/share/ohif/``)."""
    return [
        *recipient_viewer.routes(ohif),
        Route("/view", functools.partial(overview, viewer=ohif is not None), methods=["GET"]),
        Route("/view/download", download, methods=["GET"]),
        Route("/view/close", close, methods=["POST"]),
        Route("/view/studies/{uid}", study, methods=["GET"]),
        Route("/view/studies/{uid}/download", download, methods=["GET"]),
        Mount(
            "/dicomweb",
            routes=dicomweb_routes.viewing_routes(),
            middleware=[
                Middleware(AuditMiddleware, api="dicomweb", refusal=error_handlers.audit_failure),
                Middleware(ImageGate, who="share"),
            ],
        ),
        Route("/{token}", open_share, methods=["GET", "POST"]),
    ]
