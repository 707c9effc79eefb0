"""Request bodies must keep arriving: 408 and a closed connection when they stop.

A client that announces a megabyte and sends ten bytes would otherwise hold a
worker's request (and a STOW spool file) open for as long as it likes.
``BodyTimeoutMiddleware`` gives every wait for the next piece of a body
``GATEWAY_BODY_TIMEOUT`` seconds; past that, whoever was reading the body gets
:class:`~gateway.errors.RequestTimeout`, which the area's handler answers
(``Connection: close`` makes uvicorn close the connection after it). Once the
body is complete, waits for the client to disconnect are left alone.
"""

from __future__ import annotations

import anyio
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.errors import RequestTimeout


class BodyTimeoutMiddleware:
    def __init__(self, app: ASGIApp, seconds: float) -> None:
        self.app = app
        self.seconds = seconds

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        complete = False

        async def timed_receive() -> Message:
            nonlocal complete
            if complete:
                return await receive()
            try:
                with anyio.fail_after(self.seconds):
                    message = await receive()
            except TimeoutError:
                raise RequestTimeout(self.seconds) from None
            if message["type"] != "http.request" or not message.get("more_body", False):
                complete = True
            return message

        await self.app(scope, timed_receive, send)
