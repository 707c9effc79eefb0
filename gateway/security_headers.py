"""``SecurityHeadersMiddleware``: nosniff and a Content-Security-Policy on every response.

A response that already carries a Content-Security-Policy keeps it: the portal,
the OAuth pages and the admin letter set their own, and a document served as
``sandbox`` must stay sandboxed. Only the ``http.response.start`` message is
touched, so streamed bodies pass through chunk by chunk.
"""

from __future__ import annotations

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

# For anything that sets no policy of its own (JSON, images, the rendered report,
# error pages): nothing may load or run. Inline style is allowed because the
# gateway's own pages carry it, and it can fetch nothing with everything else 'none'.
DEFAULT_POLICY = (
    "default-src 'none'; style-src 'unsafe-inline'; base-uri 'none'; "
    "form-action 'none'; frame-ancestors 'none'"
)

# The launch page (smart_apps/launch) and fhirclient: script and stylesheet files from
# the gateway only (nothing inline), fetches only to the gateway.
APPS_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob:; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'none'; "
    "frame-ancestors 'none'"
)
# OHIF (/apps/ohif/): its files from the gateway, no inline script; WebAssembly codecs
# ('wasm-unsafe-eval' compiles wasm, it does not allow eval) and workers from blobs;
# React and its UI kit set inline styles; images and fonts also as data: and blob: URLs
# it makes itself; fetches only to the gateway (and to blobs it made). Nothing from
# another origin: OHIF works offline.
OHIF_POLICY = (
    "default-src 'none'; script-src 'self' 'wasm-unsafe-eval'; "
    "worker-src 'self' blob:; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' blob: data:; font-src 'self' data:; media-src 'self' blob:; "
    "connect-src 'self' blob: data:; manifest-src 'self'; object-src 'none'; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)


class SecurityHeadersMiddleware:
    """Pure ASGI; ``policy`` is the Content-Security-Policy given where none is set."""

    def __init__(self, app: ASGIApp, policy: str = DEFAULT_POLICY) -> None:
        self.app = app
        self.policy = policy

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message.setdefault("headers", [])
                headers = MutableHeaders(scope=message)
                headers.setdefault("Content-Security-Policy", self.policy)
                headers.setdefault("X-Content-Type-Options", "nosniff")
            await send(message)

        await self.app(scope, receive, send_with_headers)
