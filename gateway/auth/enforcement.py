"""The resource server's gate: who holds the bearer token of a /fhir or /dicomweb request.

``BearerTokenMiddleware`` only authenticates: it checks the token (known, not
expired, not revoked) and puts the holder, or the fact that the token is not
valid, in the request state. What each route needs is declared on the route
(:func:`gateway.authorization.requires`), which decides from that holder and
refuses with 401 or 403. A request without a token passes on as anonymous, so
open routes (``/metadata``) answer it and data routes refuse it. In external
authorization server mode the token is checked by introspection there
(:mod:`gateway.auth.external`), not in this gateway's database.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.types import ASGIApp, Receive, Scope, Send

from gateway.auth.client_auth import bearer_token
from gateway.authorization import InvalidToken, TokenHolder


class BearerTokenMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] != "OPTIONS":
            services = scope["state"]["services"]
            if services.settings.auth_required:
                token = bearer_token(Request(scope).headers.get("authorization"))
                if token is not None:
                    external = services.auth.external
                    grant = await (
                        external.check(token)
                        if external is not None
                        else services.auth.tokens.check(token)
                    )
                    holder = TokenHolder(grant) if grant is not None else InvalidToken()
                    scope["state"]["principal"] = holder
        await self.app(scope, receive, send)
