"""``/share/ohif/``: a share's recipient opens the shared studies in OHIF Viewer.

No token and no SMART launch: the recipient already proved the PIN, and the
share session's cookie (path ``/share``, SameSite=Strict) is what this page
goes by. OHIF's own files come from ``/apps/ohif/``; under this prefix are
only

- its page (``index.html``, for every viewer route), for an opened share only;
- ``app-config.js``, made per request for that session: a new capability URL
  (``records/capabilities.py``) for the share's studies, read-only, ending at
  the earliest of the share's end and a short lifetime
  (``GATEWAY_CAPABILITY_LIFETIME_SECONDS``), is OHIF's DICOMweb root;
- ``share-viewer.js`` (``smart_apps/ohif/``), which renews that capability
  through ``renew`` while the session lasts and sends the recipient back to the
  share page when it ends;
- ``renew`` (``POST``, JSON): another lifetime for the session's capability,
  never past the share's end.

The secret is never in the address bar: it reaches OHIF through the config
script, which answers only this origin (``Sec-Fetch-Site``,
``Cross-Origin-Resource-Policy``, the cookie's SameSite) and is not cached;
OHIF's policy lets it call no other origin, and ``Referrer-Policy:
no-referrer`` keeps page addresses out of every Referer. Withdrawing the share
or its expiry ends the capability at its next request (``store/capabilities.py``
joins the share).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from math import ceil
from typing import TYPE_CHECKING

from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, PlainTextResponse, Response
from starlette.routing import BaseRoute, Mount, Route

from gateway.apps.ohif import JS, OhifFiles, share_config
from gateway.audit import AuditEntry
from gateway.auth.sessions import csrf_ok
from gateway.authorization import share_access, share_actor
from gateway.errors import Forbidden
from gateway.portal.gates import SHARE_COOKIE, opened_share
from gateway.portal.pages import message
from gateway.security_headers import OHIF_POLICY, SecurityHeadersMiddleware

if TYPE_CHECKING:
    from gateway.services import Services
    from gateway.store.models import BrowserSession, ShareLink

PREFIX = "/share/ohif/"
HELPER = "share-viewer.js"
PRIVATE = {
    "Cache-Control": "no-store",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Resource-Policy": "same-origin",
}
ENDED = (
    "Your access to these studies has ended: the share link expired, the patient withdrew "
    "it, or you closed it. If the link is still valid, open it again with its PIN."
)


class ShareViewer:
    def __init__(self, files: OhifFiles) -> None:
        self.files = files
        self.page: bytes | None = None

    async def opened(
        self, request: Request
    ) -> tuple[Services, BrowserSession | None, ShareLink | None]:
        services: Services = request.state.services
        found = await opened_share(services, request.cookies.get(SHARE_COOKIE))
        return (services, *found) if found else (services, None, None)

    async def viewer_page(self, request: Request) -> Response:
        """OHIF's page, for every viewer route; the share page's message once it ended."""
        services, browser, share = await self.opened(request)
        if browser is None or share is None:
            return message(services, 401, "Shared studies", ENDED)
        if self.page is None:
            here = f"{self.base_path()}{PREFIX}"
            self.page = self.files.shell((f"{here}{HELPER}", f"{here}app-config.js"))
        return Response(self.page, media_type="text/html; charset=utf-8", headers=PRIVATE)

    async def helper(self, request: Request) -> Response:
        return FileResponse(self.files.helpers / HELPER, media_type=JS, headers=PRIVATE)

    async def config(self, request: Request) -> Response:
        """A new capability for this session's share, in OHIF's configuration."""
        if request.headers.get("sec-fetch-site", "same-origin") != "same-origin":
            return PlainTextResponse("Only this site's pages load this.\n", 403, headers=PRIVATE)
        services, browser, share = await self.opened(request)
        if browser is None or share is None:
            return PlainTextResponse(ENDED + "\n", 401, headers=PRIVATE)
        access = await share_access(services, share)
        jacket = await services.records.studies.jacket(access)
        shared = [s for s in jacket.studies if s.uid in set(share.studies)]
        capabilities = services.records.capabilities
        try:
            url = await capabilities.issue(
                access, shared, until=share.expires_at, share_id=share.id
            )
        except Forbidden:
            return PlainTextResponse("None of the shared studies can be shown now.\n", 404)
        await _audit_opened(services, share, [s.uid for s in shared])
        lifetime = capabilities.lifetime.total_seconds()
        public = services.settings.public_url.rstrip("/")
        session = {
            "capability": url.rsplit("/", 1)[-1],
            "renew": f"{public}{PREFIX}renew",
            "csrf": browser.csrf_token,
            "ended": f"{public}/share/view",
            # Renewed at a third of its lifetime: two tries before it runs out.
            "renewEvery": max(5, ceil(lifetime / 3)),
        }
        made = share_config(services.settings, f"{self.base_path()}{PREFIX}", url, session)
        return Response(made, media_type=JS, headers=PRIVATE)

    def base_path(self) -> str:
        """The path of ``GATEWAY_PUBLIC_URL`` (empty at a site's root)."""
        return self.files.prefix.removesuffix("/apps/ohif/")

    async def renew(self, request: Request) -> Response:
        """Another lifetime for the session's capability, while the share holds."""
        services, browser, share = await self.opened(request)
        if browser is None or share is None:
            return JSONResponse({"ended": True}, 401, headers=PRIVATE)
        if not csrf_ok(browser, request.headers.get("x-csrf-token")):
            return JSONResponse({"error": "stale page"}, 403, headers=PRIVATE)
        try:
            body = json.loads(await _small_body(request))
            secret = str(body["capability"])
        except (ValueError, KeyError, TypeError):
            return JSONResponse({"error": "capability expected"}, 400, headers=PRIVATE)
        capabilities = services.records.capabilities
        held = await capabilities.open(secret)
        until = None
        if held is not None and held.share_id == share.id:
            until = await capabilities.renew_for_share(secret, share.id, share.expires_at)
        if until is None:
            return JSONResponse({"ended": True}, 404, headers=PRIVATE)
        return JSONResponse({"expires_at": until.isoformat()}, headers=PRIVATE)


async def _small_body(request: Request, limit: int = 1024) -> bytes:
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise ValueError("too long")
    return body


async def _audit_opened(services: Services, share: ShareLink, studies: Sequence[str]) -> None:
    actor = share_actor(share)
    await services.audit.record(
        AuditEntry(
            category="share",
            action="viewer",
            outcome=200,
            user=actor.user,
            patient=actor.patient,
            detail=f"share {share.id}: opened in the viewer ({len(studies)} studies)",
        )
    )


def routes(files: OhifFiles | None) -> list[BaseRoute]:
    """Under ``/share``; nothing when OHIF is not installed."""
    if files is None:
        return []
    viewer = ShareViewer(files)
    return [
        Mount(
            "/ohif",
            routes=[
                Route(f"/{HELPER}", viewer.helper, methods=["GET"]),
                Route("/app-config.js", viewer.config, methods=["GET"]),
                Route("/renew", viewer.renew, methods=["POST"]),
                Route("/{path:path}", viewer.viewer_page, methods=["GET"]),
            ],
            middleware=[Middleware(SecurityHeadersMiddleware, policy=OHIF_POLICY)],
        )
    ]
