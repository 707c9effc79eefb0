"""Many browsers at once against an in-process gateway, and a count of argon2 work.

Starlette's TestClient sends one request at a time. Races need requests that
really overlap, so each ``Browser`` here is an ``httpx.AsyncClient`` with its own
cookie jar on an ``ASGITransport``, and tests ``asyncio.gather`` them inside the
harness's event loop (``Harness.call``). All of them come from one client
address (``127.0.0.1``), as guesses from one machine would.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import urlencode

import httpx
from starlette.types import Receive, Scope, Send

from gateway.auth import secrets
from tests.auth.test_authorize import PASSPHRASE, authorize_params, hidden, pkce
from tests.auth.test_oauth_api import Harness

ADDRESS = "127.0.0.1"


class _WithServices:
    """The app as a server would run it: each request sees the lifespan's state."""

    def __init__(self, harness: Harness) -> None:
        self.app = harness.client.app
        self.state = {"services": harness.services}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket"):
            scope = {**scope, "state": dict(self.state)}
        await self.app(scope, receive, send)  # type: ignore[operator]


class Browser:
    """One browser (its own cookies), ready to post one form."""

    def __init__(self, harness: Harness) -> None:
        transport = httpx.ASGITransport(app=_WithServices(harness), client=(ADDRESS, 50000))
        self.http = httpx.AsyncClient(transport=transport, base_url=harness.settings.public_url)
        self.url = ""
        self.form: dict[str, str] = {}

    async def aclose(self) -> None:
        await self.http.aclose()

    async def portal_form(self) -> Browser:
        page = await self.http.get("/portal/signin")
        self.url, self.form = "/portal/signin", {"csrf_token": hidden(page.text, "csrf_token")}
        return self

    async def oauth_form(self, client_id: str) -> Browser:
        _, challenge = pkce()
        started = await self.http.get(
            "/oauth/authorize?" + urlencode(authorize_params(client_id, challenge))
        )
        page = await self.http.get(started.headers["location"])
        self.url = "/oauth/signin"
        self.form = {
            "csrf_token": hidden(page.text, "csrf_token"),
            "request": hidden(page.text, "request"),
        }
        return self

    async def pin_form(self, link: str) -> Browser:
        page = await self.http.get(link)
        self.url, self.form = link, {"csrf_token": hidden(page.text, "csrf_token")}
        return self

    async def post(self, **fields: str) -> httpx.Response:
        return await self.http.post(self.url, data={**self.form, **fields})

    async def sign_in(self, code: str, passphrase: str = PASSPHRASE) -> httpx.Response:
        return await self.post(mode="patient", access_code=code, passphrase=passphrase)


class Argon2Work:
    """Every argon2 computation (hash or verify) the gateway runs, by kind."""

    def __init__(self) -> None:
        self.done: Counter[str] = Counter()
        self._lock = threading.Lock()

    def count(self, kind: str) -> None:
        with self._lock:
            self.done[kind] += 1

    def take(self) -> Counter[str]:
        """What was done since the last take."""
        with self._lock:
            done, self.done = self.done, Counter()
        return done


@contextmanager
def counted_argon2() -> Iterator[Argon2Work]:
    """Count the hasher's work in ``gateway.auth.secrets``, which every secret goes through."""
    work = Argon2Work()
    real = secrets._hasher

    class Counting:
        def hash(self, *args: Any, **kwargs: Any) -> str:
            work.count("hash")
            return real.hash(*args, **kwargs)

        def verify(self, *args: Any, **kwargs: Any) -> bool:
            work.count("verify")
            return real.verify(*args, **kwargs)

        def __getattr__(self, name: str) -> Any:
            return getattr(real, name)

    secrets._hasher = Counting()  # type: ignore[assignment]
    try:
        yield work
    finally:
        secrets._hasher = real
