"""``/dicomweb/cap/{secret}/...``: DICOMweb behind a capability URL instead of a token.

The read routes of ``/dicomweb`` (QIDO-RS and every WADO-RS retrieval, no STOW)
are mounted again behind :class:`CapabilityGate`, which, like the other gates,
only says who is asking: the holder of a capability that still holds
(``records/capabilities.py``). The routes' declared needs and
``authorization.capability_access`` decide the rest, so a study the capability
does not cover answers 404, as anything unknown does. A secret that opens
nothing (unknown, expired, revoked, its grant or share ended) answers 404 too:
whoever holds a URL learns nothing from it but what it still opens.
``DELETE`` on the base ends the capability (204), for the app that is done.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from starlette.datastructures import MutableHeaders
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.audit import AuditMiddleware
from gateway.authorization import CapabilityHolder
from gateway.dicomweb.routes import read_routes, warning_header

if TYPE_CHECKING:
    from gateway.services import Services

CLOSED = "This address does not open anything (unknown, expired or revoked)."


def _closed() -> PlainTextResponse:
    return PlainTextResponse(
        CLOSED + "\n",
        status_code=404,
        headers={"Warning": warning_header(CLOSED), "Referrer-Policy": "no-referrer"},
    )


class CapabilityGate:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        services: Services = scope["state"]["services"]
        secret = str(scope.get("path_params", {}).get("secret", ""))
        capability = await services.records.capabilities.open(secret)
        if capability is None:
            await _closed()(scope, receive, send)
            return
        scope["state"]["principal"] = CapabilityHolder(capability)

        async def without_referrer(message: Message) -> None:
            # A document opened from this address must not hand it on as a Referer.
            if message["type"] == "http.response.start":
                MutableHeaders(scope=message).setdefault("Referrer-Policy", "no-referrer")
            await send(message)

        await self.app(scope, receive, without_referrer)


async def revoke(request: Request) -> Response:
    services: Services = request.state.services
    if await services.records.capabilities.revoke(str(request.path_params["secret"])):
        return Response(status_code=204)
    return _closed()


def routes(audit_refusal: Callable[[Scope, Exception], Response]) -> list[BaseRoute]:
    """Before ``/dicomweb`` in the app's routes, so that its token gate is not asked."""
    return [
        Route("/dicomweb/cap/{secret}", revoke, methods=["DELETE"]),
        Mount(
            "/dicomweb/cap/{secret}",
            routes=read_routes(),
            middleware=[
                Middleware(AuditMiddleware, api="dicomweb", refusal=audit_refusal),
                Middleware(CapabilityGate),
            ],
        ),
    ]
