"""OHIF's SMART launch page against a hostile link, in a real headless Chromium.

A link such as ``/apps/launch/?client_id=x&iss=<another site>`` must not make
the launch page trust that site: it accepts only its own gateway's FHIR base
as ``iss``, follows only ``https:`` or same-origin endpoints from discovery
(checked before fhirclient is given the launch), and its Content-Security-Policy
refuses to run a ``javascript:`` URL even if it tried. A hostile "FHIR server"
on loopback records every request it gets, so a script that ran, or a discovery
that was fetched, shows up there.

Playwright drives Debian's Chromium (``executable_path``); nothing is downloaded.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import pytest
from playwright.sync_api import Browser, Page, Request, Route, sync_playwright
from playwright.sync_api import TimeoutError as PlaywrightTimeout

from gateway.auth.clients import ClientKind
from gateway.auth.service import AuthServices
from gateway.store.database import Database
from tests.conftest import make_settings, serve_gateway

pytestmark = [pytest.mark.browser, pytest.mark.slow]
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


class HostileServer:
    """A "FHIR server" whose SMART discovery names dangerous authorization endpoints.

    ``/{kind}/fhir`` is a FHIR base; its discovery names the endpoint of that kind.
    Every request it receives is kept in ``seen``.
    """

    def __init__(self) -> None:
        self.seen: list[str] = []
        hostile = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                hostile.seen.append(self.path)
                kind = self.path.strip("/").split("/")[0]
                if self.path.endswith("/fhir/.well-known/smart-configuration"):
                    body = json.dumps(hostile.configuration(kind)).encode()
                    media_type = "application/json"
                else:
                    body, media_type = b"<h1>Not your gateway</h1>", "text/html"
                self.send_response(200)
                self.send_header("Content-Type", media_type)
                # So that a browser lets any page read the answer.
                self.send_header("Access-Control-Allow-Origin", "*")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.origin = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def endpoint(self, kind: str) -> str:
        return {
            # Would run on the gateway's origin, and calls home so that the test sees it.
            "script": "javascript:void(window.hostileScriptRan=1,"
            f"fetch('{self.origin}/script-ran'))//",
            # Plain http on another host: the patient's sign-in would go to this server.
            "elsewhere": f"{self.origin}/authorize",
            "data": "data:text/html,<h1>not a sign-in page</h1>",
        }[kind]

    def configuration(self, kind: str) -> dict[str, Any]:
        return {
            "authorization_endpoint": self.endpoint(kind),
            "token_endpoint": f"{self.origin}/token",
            "capabilities": ["launch-standalone", "client-public"],
            "code_challenge_methods_supported": ["S256"],
        }

    def __enter__(self) -> HostileServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def hostile() -> Iterator[HostileServer]:
    with HostileServer() as server:
        yield server


@pytest.fixture(scope="module")
def gateway(
    tmp_path_factory: pytest.TempPathFactory, embedded_data_dir: Path
) -> Iterator[dict[str, str]]:
    """`gateway serve` over HTTP, with the launch page registered as a public app."""
    workdir = tmp_path_factory.mktemp("viewer")
    with serve_gateway(workdir, data_dir=str(embedded_data_dir), auth_required="true") as base:
        settings = make_settings(
            embedded_data_dir,
            database_url=f"sqlite+aiosqlite:///{workdir / 'gateway.db'}",
            public_url=base,
        )

        async def register() -> str:
            database = Database(settings.effective_database_url)
            auth = AuthServices.build(settings, database.sessions)
            try:
                app = await auth.clients.add(
                    name="Demo viewer",
                    kind=ClientKind.public,
                    redirect_uris=[f"{base}/apps/launch/"],
                )
                return app.client.client_id
            finally:
                await auth.aclose()
                await database.dispose()

        client_id = asyncio.run(register())
        yield {"base": base, "viewer": f"{base}/apps/launch/", "client_id": client_id}


@pytest.fixture(scope="module")
def browser(gateway: dict[str, str]) -> Iterator[Browser]:
    # Depends on the gateway so that its setup (asyncio.run) comes first: no event
    # loop can start inside Playwright's synchronous API.
    if not Path(CHROMIUM).exists():
        pytest.fail("Chromium is missing: scripts/test.sh installs the Debian package chromium")
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, headless=True)
        try:
            yield launched
        finally:
            launched.close()


class Tab:
    """A fresh page that remembers every request the browser made from it."""

    def __init__(self, browser: Browser) -> None:
        self.context = browser.new_context()
        self.page: Page = self.context.new_page()
        self.requests: list[str] = []
        self.console: list[str] = []
        self.page.on("request", lambda request: self.requests.append(request.url))
        self.page.on("console", lambda message: self.console.append(message.text))

    def requests_to(self, origin: str) -> list[str]:
        return [url for url in self.requests if url.startswith(origin)]

    def refused(self) -> str:
        """The launch page's error, once it shows one; fails the test when it never does."""
        try:
            self.page.wait_for_selector("#status.error", timeout=10_000)
        except PlaywrightTimeout:
            pytest.fail(
                f"the launch page showed no error; it is at {self.page.url} "
                f"and the browser asked for {self.requests}"
            )
        return self.page.inner_text("#status")


@pytest.fixture
def tab(browser: Browser) -> Iterator[Tab]:
    made = Tab(browser)
    try:
        yield made
    finally:
        made.context.close()


def viewer_link(gateway: dict[str, str], iss: str) -> str:
    return f"{gateway['viewer']}?{urlencode({'client_id': gateway['client_id'], 'iss': iss})}"


@pytest.mark.parametrize("kind", ["script", "elsewhere"])
def test_a_link_naming_another_server_as_iss_goes_nowhere(
    tab: Tab, gateway: dict[str, str], hostile: HostileServer, kind: str
) -> None:
    hostile.seen.clear()
    link = viewer_link(gateway, f"{hostile.origin}/{kind}/fhir")
    tab.page.goto(link)
    error = tab.refused()
    assert "not this gateway" in error, error
    # Refused before discovery: the hostile server heard nothing, no script ran.
    assert tab.requests_to(hostile.origin) == []
    assert hostile.seen == []
    assert tab.page.evaluate("window.hostileScriptRan") is None
    assert tab.page.url == link


@pytest.mark.parametrize("kind", ["script", "elsewhere", "data"])
def test_discovery_naming_an_unsafe_endpoint_is_not_followed(
    tab: Tab, gateway: dict[str, str], hostile: HostileServer, kind: str
) -> None:
    """Even the gateway's own discovery is checked before the launch page follows it."""
    hostile.seen.clear()

    def forged(route: Route, request: Request) -> None:
        route.fulfill(json=hostile.configuration(kind))

    tab.page.route(f"{gateway['base']}/fhir/.well-known/smart-configuration", forged)
    link = viewer_link(gateway, f"{gateway['base']}/fhir")
    tab.page.goto(link)
    error = tab.refused()
    assert "authorization endpoint" in error, error
    assert tab.requests_to(hostile.origin) == []
    assert hostile.seen == []
    assert tab.page.evaluate("window.hostileScriptRan") is None
    assert tab.page.url == link


def test_the_launch_page_refuses_to_run_a_javascript_url(tab: Tab, gateway: dict[str, str]) -> None:
    """The Content-Security-Policy holds even if the page's checks were bypassed."""
    tab.page.goto(gateway["viewer"])
    outcome = tab.page.evaluate(
        """() => new Promise((resolve) => {
            window.reportRan = () => resolve("ran");
            document.addEventListener(
                "securitypolicyviolation", (event) => resolve(event.effectiveDirective)
            );
            window.location.assign("javascript:void(window.reportRan())");
        })"""
    )
    assert outcome.startswith("script-src"), outcome


def test_the_gateways_own_iss_starts_a_normal_launch(tab: Tab, gateway: dict[str, str]) -> None:
    iss = f"{gateway['base']}/fhir"
    tab.page.goto(viewer_link(gateway, iss))
    tab.page.wait_for_url(f"{gateway['base']}/oauth/signin?request=*")
    authorize = [
        url for url in tab.requests if url.startswith(f"{gateway['base']}/oauth/authorize?")
    ]
    assert len(authorize) == 1, tab.requests
    params = {k: v[0] for k, v in parse_qs(urlsplit(authorize[0]).query).items()}
    assert params["client_id"] == gateway["client_id"]
    assert params["aud"] == iss
    assert params["redirect_uri"] == gateway["viewer"]
    assert (params["response_type"], params["code_challenge_method"]) == ("code", "S256")
    # The page loaded its script, stylesheet and fhirclient within its policy.
    assert f"{gateway['viewer']}launch.css" in tab.requests
    assert f"{gateway['base']}/apps/lib/fhir-client.min.js" in tab.requests
    assert not [line for line in tab.console if "Content Security Policy" in line]
