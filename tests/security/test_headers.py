"""Security headers on everything the gateway serves.

Every response says ``X-Content-Type-Options: nosniff`` and carries a
Content-Security-Policy; every HTML page and every bundled app's file carries a
strict one (no inline script, ``frame-ancestors``, ``base-uri`` and ``object-src``
all ``'none'``). A tour visits every kind of route as a real client would:
FHIR, DICOMweb, OAuth pages and JSON, the portal signed in, a share opened with
its PIN, the admin letter, operations, the static apps, refusals and 404s.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Mount, Route
from starlette.testclient import TestClient

from fixtures.generate import BENCH_PATIENT_ID
from gateway.app import create_app
from gateway.auth.authorize import PAGE_HEADERS
from gateway.auth.clients import ClientKind
from gateway.portal.pages import HEADERS as PORTAL_HEADERS
from tests.auth.test_authorize import PASSPHRASE, REDIRECT, authorize_params, pkce
from tests.auth.test_oauth_api import Harness, bearer
from tests.conftest import make_settings, migrate
from tests.portal.support import (
    BASE,
    Clock,
    create_share,
    enter_pin,
    portal_harness,
    portal_sign_in,
    shareable,
)

CSP = "content-security-policy"
# What must never be in the script policy of a page: each lets a script the gateway
# did not write run on the gateway's origin.
UNSAFE_SCRIPT_SOURCES = {
    "'unsafe-inline'",
    "'unsafe-eval'",
    "'unsafe-hashes'",
    "'wasm-unsafe-eval'",
    "*",
    "data:",
    "blob:",
    "http:",
    "https:",
    "filesystem:",
}


@dataclass
class Visit:
    method: str
    path: str
    response: httpx.Response

    def __str__(self) -> str:
        return f"{self.method} {self.path} -> {self.response.status_code}"

    @property
    def is_page(self) -> bool:
        return self.response.headers.get("content-type", "").startswith("text/html")


def directives(policy: str) -> dict[str, list[str]]:
    parsed: dict[str, list[str]] = {}
    for part in policy.split(";"):
        words = part.split()
        if words:
            parsed.setdefault(words[0].lower(), words[1:])
    return parsed


def strictness_problems(policy: str | None, wasm: bool = False) -> list[str]:
    """What keeps ``policy`` from being strict; empty when it is. ``wasm``: compiling
    WebAssembly is allowed (OHIF's image codecs); that allows no JavaScript eval."""
    if policy is None:
        return ["no Content-Security-Policy"]
    found = directives(policy)
    default = found.get("default-src")
    problems = []
    script = found.get("script-src", default)
    if script is None:
        problems.append("scripts unrestricted (no script-src, no default-src)")
    elif unsafe := UNSAFE_SCRIPT_SOURCES.difference(
        ["'wasm-unsafe-eval'"] if wasm else []
    ).intersection(script):
        problems.append(f"script-src allows {sorted(unsafe)}")
    for name, value in [
        ("frame-ancestors", found.get("frame-ancestors")),
        ("base-uri", found.get("base-uri")),
        ("object-src", found.get("object-src", default)),
    ]:
        if value != ["'none'"]:
            problems.append(f"{name} is {value}, not 'none'")
    return problems


class Tour:
    """Requests made through the harness's client, each one kept."""

    def __init__(self, client: TestClient) -> None:
        self.client = client
        self.visits: list[Visit] = []

    def go(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        kwargs.setdefault("follow_redirects", False)
        response = self.client.request(method, path, **kwargs)
        self.visits.append(Visit(method, path, response))
        return response

    def get(self, path: str, **kwargs: Any) -> httpx.Response:
        return self.go("GET", path, **kwargs)


def local(url: str) -> str:
    return url.removeprefix(BASE).replace("&amp;", "&")


def first_image(page: str, under: str) -> str:
    found = re.search(rf'src="{re.escape(BASE)}({re.escape(under)}/[^"]+)"', page)
    assert found, f"no image under {under}"
    return local(found.group(1))


def open_routes(tour: Tour) -> None:
    """What anyone can reach without signing in, and what refuses them."""
    tour.get("/fhir/metadata")
    tour.get("/fhir/.well-known/smart-configuration")
    tour.get("/.well-known/openid-configuration")
    tour.get("/fhir/ImagingStudy")
    tour.get("/dicomweb/studies")
    tour.go(
        "OPTIONS",
        "/fhir/ImagingStudy",
        headers={"Origin": "https://app.example", "Access-Control-Request-Method": "GET"},
    )
    tour.get("/oauth/jwks")
    tour.get("/oauth/style.json")
    tour.go("POST", "/oauth/token", data={})
    tour.go("POST", "/oauth/introspect", data={"token": "x"})
    tour.go("POST", "/oauth/revoke", data={"token": "x"})
    tour.go("POST", "/oauth/register", json={})
    tour.get("/oauth/token")
    tour.get("/oauth/authorize")
    tour.get("/oauth/launch")
    tour.get("/portal/signin")
    tour.get("/portal/")
    tour.get("/share/not-a-share-token")
    tour.go("POST", "/admin/enrollments", json={})
    tour.get("/healthz")
    tour.get("/readyz")
    tour.get("/metrics")
    tour.get("/apps/launch/")
    tour.get("/apps/launch/index.html")
    tour.get("/apps/launch/launch.js")
    tour.get("/apps/launch/launch.css")
    tour.get("/apps/launch/missing.js")
    tour.get("/apps/lib/fhir-client.min.js")
    tour.get("/apps/ohif/")
    tour.get("/apps/ohif/viewer")
    tour.get("/apps/ohif/app-config.js")
    tour.get("/apps/ohif/gateway-boot.js")
    tour.get("/apps/ohif/smart-auth.js")
    tour.get("/apps/ohif/missing.js")
    tour.get("/apps/")
    tour.get("/nowhere")


def api_routes(tour: Tour, harness: Harness) -> None:
    """FHIR and DICOMweb with a token, and a launch to the sign-in page."""
    system = bearer(harness.backend_token("system/*.rs"))
    studies = tour.get("/fhir/ImagingStudy", headers=system).json()
    study = studies["entry"][0]["resource"]
    series = study["series"][0]
    tour.get(f"/fhir/ImagingStudy/{study['id']}", headers=system)
    tour.get("/fhir/Patient/not-a-patient", headers=system)
    tour.get("/fhir/Nothing", headers=system)
    documents = tour.get("/fhir/DocumentReference", headers=system).json()
    tour.get("/dicomweb/studies", headers=system)
    tour.get(f"/dicomweb/studies/{study['id']}/series", headers=system)
    tour.get(f"/dicomweb/studies/{study['id']}/series/{series['uid']}/metadata", headers=system)
    instance = (
        f"/dicomweb/studies/{study['id']}/series/{series['uid']}"
        f"/instances/{series['instance'][0]['uid']}"
    )
    tour.get(f"{instance}/thumbnail", headers={**system, "Accept": "image/jpeg"})
    tour.get(instance, headers={**system, "Accept": 'multipart/related; type="application/dicom"'})
    tour.get("/dicomweb/studies/1.2.3.4.5", headers=system)
    # A research project's own routes: refused to other clients, and without a token.
    tour.get("/research/dicomweb/studies", headers=system)
    tour.get("/research/fhir/ImagingStudy")
    # A capability URL (an app's search asked for one), read and then ended.
    patient = study["subject"]["reference"].removeprefix("Patient/")
    token = harness.patient_token(patient, "launch/patient patient/ImagingStudy.rs")
    found = tour.get(
        f"/fhir/ImagingStudy?patient={patient}",
        headers={**bearer(token), "Prefer": "wado-capability=bearer"},
    ).json()
    base = local(found["entry"][0]["resource"]["contained"][0]["address"])
    read = tour.client.get(f"{base}/studies")
    tour.visits.append(Visit("GET", "/dicomweb/cap/{secret}/studies", read))
    ended = tour.client.delete(base)
    tour.visits.append(Visit("DELETE", "/dicomweb/cap/{secret}", ended))
    # A structured report rendered as a web page by the gateway (DICOMweb rendered).
    reports = [
        content["attachment"]["url"]
        for entry in documents["entry"]
        for content in entry["resource"]["content"]
        if content["attachment"].get("contentType") == "text/html"
    ]
    assert reports, "no SR rendered as HTML in the fixtures"
    tour.get(local(reports[0]), headers=system)

    app = harness.call(
        harness.services.auth.clients.add,
        name="Headers app",
        kind=ClientKind.public,
        redirect_uris=[REDIRECT],
    )
    _, challenge = pkce()
    params = authorize_params(app.client.client_id, challenge)
    launched = tour.get("/oauth/authorize", params=params)
    assert launched.status_code == 303, launched.text
    tour.get(local(launched.headers["location"]))


def admin_and_patient(tour: Tour, harness: Harness) -> None:
    """Staff enroll a patient (JSON, then the letter); the patient uses the portal."""
    admin = bearer(harness.backend_token("system/*.rs admin/enrollments"))
    enrolled = tour.go(
        "POST",
        "/admin/enrollments",
        json={"identifier": {"system": "HOSP-A", "value": BENCH_PATIENT_ID}, "name": "Jane Doe"},
        headers={**admin, "Accept": "application/json"},
    )
    assert enrolled.status_code == 201, enrolled.text
    body = enrolled.json()
    tour.get(local(body["letter"]), headers=admin)
    harness.call(
        harness.services.auth.accounts.activate, body["access_code"], "1970-01-01", PASSPHRASE
    )
    client = tour.client
    client.cookies.clear()
    assert portal_sign_in(client, body["access_code"]) == 303
    tour.get("/portal/")
    studies = shareable(client)
    page = tour.get(f"/portal/studies/{studies[0]}").text
    tour.get(first_image(page, "/portal/dicomweb"))
    tour.get(f"/portal/studies/{studies[0]}/download")
    tour.get("/portal/studies/1.2.3.4.5")
    tour.get("/portal/apps")
    tour.get("/portal/activity")
    tour.get("/portal/shares")
    status, _, link, pin = create_share(client, studies[:1], days="7", label="Dr. Headers")
    assert status == 201 and link and pin
    tour.get(local(link))
    opened = enter_pin(client, link, pin)
    tour.visits.append(Visit("POST", "/share/{token}", opened))
    tour.get("/share/view")
    page = tour.get(f"/share/view/studies/{studies[0]}").text
    tour.get(first_image(page, "/share/dicomweb"))
    tour.get("/share/view/download")


@pytest.fixture(scope="module")
def tour(tmp_path_factory: pytest.TempPathFactory, embedded_data_dir: Path) -> Iterator[Tour]:
    workdir = tmp_path_factory.mktemp("headers")
    with portal_harness(workdir, embedded_data_dir, Clock()) as harness:
        made = Tour(harness.client)
        open_routes(made)
        api_routes(made, harness)
        admin_and_patient(made, harness)
        yield made


def test_the_tour_reaches_every_route_of_the_app(tour: Tour, tmp_path: Path) -> None:
    """A route added to ``create_app`` without a visit here fails this test."""
    app = create_app(make_settings(tmp_path))
    prefixes = [route.path for route in app.routes if isinstance(route, Mount | Route)]
    assert {"/apps/launch", "/apps/lib", "/apps/ohif"} <= set(prefixes)
    visited = [visit.path for visit in tour.visits]
    missing = [p for p in prefixes if not any(v.startswith(p) for v in visited)]
    assert not missing
    kinds = {visit.response.status_code // 100 for visit in tour.visits}
    assert kinds == {2, 3, 4}
    assert any(visit.is_page for visit in tour.visits)


def test_every_response_says_nosniff_and_has_a_policy(tour: Tour) -> None:
    wrong = [
        str(visit)
        for visit in tour.visits
        if visit.response.headers.get_list("x-content-type-options") != ["nosniff"]
        or len(visit.response.headers.get_list(CSP)) != 1
    ]
    assert not wrong, "\n".join(wrong)


def test_every_page_and_app_file_has_a_strict_policy(tour: Tour) -> None:
    checked = [v for v in tour.visits if v.is_page or v.path.startswith("/apps")]
    assert len(checked) > 15
    problems = [
        f"{visit}: {', '.join(found)}"
        for visit in checked
        if (
            found := strictness_problems(
                visit.response.headers.get(CSP), wasm=visit.path.startswith("/apps/ohif/")
            )
        )
    ]
    assert not problems, "\n".join(problems)


def test_pages_with_their_own_policy_keep_it(tour: Tour) -> None:
    def policy_of(path: str) -> str:
        return str(next(v for v in tour.visits if v.path == path).response.headers[CSP])

    assert policy_of("/portal/signin") == PORTAL_HEADERS["Content-Security-Policy"]
    assert policy_of("/share/view") == PORTAL_HEADERS["Content-Security-Policy"]
    assert policy_of("/oauth/authorize") == PAGE_HEADERS["Content-Security-Policy"]


class _Markup(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.inline: list[str] = []
        self.assets: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        named = dict(attrs)
        self.inline += [f"{tag} {name}=" for name, _ in attrs if name.startswith("on")]
        if "style" in named:
            self.inline.append(f"{tag} style=")
        if tag == "style" or (tag == "script" and not named.get("src")):
            self.inline.append(f"<{tag}> element")
        if tag == "script" and named.get("src"):
            self.assets.append(str(named["src"]))
        if tag == "link" and named.get("rel") == "stylesheet":
            self.assets.append(str(named["href"]))


def test_the_launch_page_needs_nothing_its_policy_forbids(tour: Tour) -> None:
    page = next(v for v in tour.visits if v.path == "/apps/launch/").response
    markup = _Markup()
    markup.feed(page.text)
    assert markup.inline == []
    assert sorted(markup.assets) == ["../lib/fhir-client.min.js", "launch.css", "launch.js"]
    for asset in markup.assets:
        path = "/apps/lib/fhir-client.min.js" if asset.startswith("..") else f"/apps/launch/{asset}"
        served = next(v for v in tour.visits if v.path == path).response
        assert served.status_code == 200
    policy = directives(page.headers[CSP])
    # The launch page signs in at its own origin, with its own script and stylesheet.
    assert policy["script-src"] == ["'self'"]
    assert policy["style-src"] == ["'self'"]
    assert policy["connect-src"] == ["'self'"]


def test_ohif_runs_no_inline_script_and_loads_nothing_from_elsewhere(tour: Tour) -> None:
    for path in ("/apps/ohif/", "/apps/ohif/viewer"):  # the app, and one of its own routes
        page = next(v for v in tour.visits if v.path == path).response
        assert page.status_code == 200
        markup = _Markup()
        markup.feed(page.text)
        assert not [i for i in markup.inline if i.startswith("<script")]
        assert markup.assets and all(a.startswith("/apps/") for a in markup.assets)
        policy = directives(page.headers[CSP])
        # WebAssembly codecs, but no eval and no inline script.
        assert policy["script-src"] == ["'self'", "'wasm-unsafe-eval'"]
        assert policy["connect-src"] == ["'self'", "blob:", "data:"]
        assert policy["default-src"] == ["'none'"] and policy["frame-ancestors"] == ["'none'"]
        assert all("http" not in source for sources in policy.values() for source in sources)
    missing = next(v for v in tour.visits if v.path == "/apps/ohif/missing.js").response
    assert missing.status_code == 404


def test_a_crash_still_carries_the_headers(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, database_url=f"sqlite+aiosqlite:///{tmp_path / 'g.db'}")
    migrate(settings)
    app = create_app(settings)

    async def crash(request: Request) -> Response:
        raise RuntimeError("a bug")

    app.router.routes.append(Route("/crash", crash))
    with TestClient(app, raise_server_exceptions=False) as client:
        response = client.get("/crash")
    assert response.status_code == 500
    assert response.headers["x-content-type-options"] == "nosniff"
    assert strictness_problems(response.headers.get(CSP)) == []
