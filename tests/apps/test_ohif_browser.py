"""OHIF Viewer, shipped from npm, through its SMART launch page, in a real headless Chromium.

`gateway demo` makes the data (a patient with released and held studies, OHIF
registered as a public app); `gateway serve` serves it over HTTP. The patient
launches OHIF standalone, signs in, approves, and OHIF lists exactly the
patient's released studies and draws a CT and an MR. Coming back does not ask
consent again (grant reuse). The token reaches OHIF through its
userAuthenticationService, never through a URL, and no gateway answer is an
error. Playwright drives Debian's Chromium (``executable_path``); nothing is
downloaded.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest
from playwright.sync_api import Browser, Page, Response, sync_playwright

from gateway.apps.routes import OHIF_DIST, SMART_APPS
from tests.support.gateway_process import GatewayProcess

pytestmark = [pytest.mark.browser, pytest.mark.slow]
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
# Counts the viewport canvas's lit pixels and distinct grey levels: blank is (0, 1).
CANVAS = """() => [...document.querySelectorAll('.cornerstone-viewport-element canvas, canvas')]
    .filter((c) => c.width > 64 && c.height > 64)
    .map((c) => {
        const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
        let lit = 0; const levels = new Set();
        for (let i = 0; i < d.length; i += 4) { if (d[i] > 8) lit++; levels.add(d[i]); }
        return [lit, levels.size];
    })"""


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    if not (SMART_APPS / OHIF_DIST / "index.html").is_file():
        pytest.fail("OHIF is not installed: run scripts/smart-apps.sh (scripts/test.sh does)")
    workdir = tmp_path_factory.mktemp("ohif")
    data_dir = workdir / "var"
    gateway = GatewayProcess(
        workdir,
        data_dir=str(data_dir),
        database_url=f"sqlite+aiosqlite:///{data_dir / 'gateway.db'}",
        auth_required="true",
        # Tokens live a minute, so that OHIF's side refreshes one within a test.
        access_token_seconds="60",
        # A share's viewer renews its capability every 10 s, so a test sees renewals and
        # the end of a withdrawn share without waiting minutes.
        capability_lifetime_seconds="30",
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    env.update({"GATEWAY_DATA_DIR": str(data_dir), "GATEWAY_PUBLIC_URL": gateway.url})
    seeded = subprocess.run(
        [sys.executable, "-m", "gateway", "demo", "--no-serve", "--port", str(gateway.port)],
        env=env,
        cwd=workdir,
        capture_output=True,
        timeout=300,
    )
    assert seeded.returncode == 0, seeded.stderr.decode(errors="replace")[-3000:]
    summary = json.loads((data_dir / "demo.json").read_text())
    gateway.start()
    try:
        yield {**summary, "base": gateway.url, "data_dir": str(data_dir), "gateway": gateway}
    finally:
        gateway.stop()


@pytest.fixture(scope="module")
def browser(demo: dict[str, Any]) -> Iterator[Browser]:
    if not Path(CHROMIUM).exists():
        pytest.fail("Chromium is missing: scripts/test.sh installs the Debian package chromium")
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, headless=True)
        try:
            yield launched
        finally:
            launched.close()


class Tab:
    """One browser context that keeps every request and every failed gateway answer."""

    def __init__(self, browser: Browser, base: str) -> None:
        self.context = browser.new_context(viewport={"width": 1400, "height": 900})
        self.page: Page = self.context.new_page()
        self.base = base
        self.urls: list[str] = []
        self.failures: list[tuple[int, str]] = []
        self.studies: dict[str, list[str]] = {}  # QIDO answers OHIF got: uid -> modalities
        self.page.on("request", lambda request: self.urls.append(request.url))
        self.page.on("response", self._response)

    def _response(self, response: Response) -> None:
        if not response.url.startswith(self.base):
            return
        if response.status >= 400:
            self.failures.append((response.status, response.url))
        if response.url.startswith(f"{self.base}/dicomweb/studies?") and response.status == 200:
            for study in response.json():
                uid = study["0020000D"]["Value"][0]
                self.studies[uid] = study.get("00080061", {}).get("Value", [])

    def token(self) -> str:
        """The access token fhirclient keeps in this tab's sessionStorage."""
        return str(
            self.page.evaluate(
                """() => JSON.parse(sessionStorage.getItem(
                    JSON.parse(sessionStorage.getItem('SMART_KEY')))).tokenResponse.access_token"""
            )
        )

    def drawn(self, timeout: float = 45.0) -> list[list[int]]:
        """The viewport canvases once one shows an image (lit, and many grey levels)."""
        deadline = time.monotonic() + timeout
        canvases: list[list[int]] = []
        while time.monotonic() < deadline:
            canvases = self.page.evaluate(CANVAS)
            if any(lit > 1000 and levels > 16 for lit, levels in canvases):
                return canvases
            time.sleep(0.5)
        self.page.screenshot(path=str(ARTIFACTS / "ohif-blank.png"))
        pytest.fail(f"no image drawn in OHIF at {self.page.url}: canvases {canvases}")


ARTIFACTS = Path("test-artifacts")


@pytest.fixture
def tab(browser: Browser, demo: dict[str, Any]) -> Iterator[Tab]:
    made = Tab(browser, demo["base"])
    try:
        yield made
    finally:
        made.context.close()


def sign_in_as_patient(tab: Tab, demo: dict[str, Any]) -> None:
    patient = demo["smart"]["patient"]
    tab.page.goto(demo["smart"]["app"]["open"])
    tab.page.get_by_role("button", name="Sign in and open my images").click()
    tab.page.wait_for_url("**/oauth/signin**")
    tab.page.fill("#access_code", patient["access_code"])
    tab.page.fill("#passphrase", patient["passphrase"])
    tab.page.get_by_role("button", name="Sign in", exact=True).click()
    tab.page.wait_for_url("**/oauth/consent**")
    assert "OHIF Viewer" in tab.page.inner_text("h1")
    tab.page.get_by_role("button", name="Approve").click()


def test_a_patient_launches_ohif_and_sees_their_released_ct_and_mr(
    tab: Tab, demo: dict[str, Any]
) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    base, states = demo["base"], demo["states"]
    sign_in_as_patient(tab, demo)
    tab.page.wait_for_url(f"{base}/apps/ohif/", timeout=30_000)
    name = "Doe, Jane"
    tab.page.locator("tbody tr", has_text=name).first.wait_for(timeout=30_000)
    # Exactly the patient's released studies: not the one held by the release delay,
    # nobody else's (the demo store holds seven patients).
    assert set(tab.studies) == set(states["released"]), tab.studies
    assert states["held"] and not {h["uid"] for h in states["held"]} & set(tab.studies)
    rows = tab.page.locator("tbody tr", has_text=name)
    assert rows.count() == len(states["released"])
    tab.page.screenshot(path=str(ARTIFACTS / "ohif-study-list.png"))
    token = tab.token()
    for modality in ("CT", "MR"):
        uid = next(u for u, found in sorted(tab.studies.items()) if modality in found)
        tab.page.goto(f"{base}/apps/ohif/viewer?{urlencode({'StudyInstanceUIDs': uid})}")
        tab.drawn()
        tab.page.screenshot(path=str(ARTIFACTS / f"ohif-{modality.lower()}.png"))
        assert any(url.startswith(f"{base}/dicomweb/studies/{uid}/series/") for url in tab.urls), (
            "OHIF fetched no images of the study"
        )
    # The token went in headers only, never in a URL.
    assert not [url for url in tab.urls if token in url or "access_token" in url]
    # A reload keeps the session (the token is in this tab's storage).
    tab.page.reload()
    tab.drawn()
    # Opening the app again: back in OHIF without the sign-in or the consent page.
    before = len(tab.urls)
    tab.page.goto(demo["smart"]["app"]["open"])
    tab.page.get_by_role("button", name="Sign in and open my images").click()
    tab.page.wait_for_url(f"{base}/apps/ohif/", timeout=30_000)
    again = tab.urls[before:]
    assert any(url.startswith(f"{base}/oauth/authorize?") for url in again)
    assert not [url for url in again if "/oauth/consent" in url or "/oauth/signin" in url]
    tab.page.locator("tbody tr", has_text=name).first.wait_for(timeout=30_000)
    assert tab.failures == [], tab.failures


def test_ohif_is_served_with_its_config_and_policy(tab: Tab, demo: dict[str, Any]) -> None:
    """The made config names this gateway's DICOMweb alone; nothing loads from elsewhere."""
    base = demo["base"]
    answer = tab.page.goto(f"{base}/apps/ohif/viewer?StudyInstanceUIDs=1.2.3")
    assert answer is not None and answer.status == 200  # the SPA's own route
    policy = answer.headers["content-security-policy"]
    assert "script-src 'self' 'wasm-unsafe-eval';" in policy and "unsafe-eval'" not in (
        policy.replace("'wasm-unsafe-eval'", "")
    )
    assert "connect-src 'self' blob: data:;" in policy and "frame-ancestors 'none'" in policy
    config = tab.page.request.get(f"{base}/apps/ohif/app-config.js").text()
    assert f'"qidoRoot": "{base}/dicomweb"' in config and "cloudfront" not in config
    assert tab.page.request.get(f"{base}/apps/ohif/missing.js").status == 404
    # No session: OHIF goes to the launch page rather than calling the API without a token.
    tab.page.wait_for_url(f"{base}/apps/launch/**", timeout=30_000)
    assert not [url for url in tab.urls if not url.startswith((base, "data:", "blob:"))]


def gateway_cli(demo: dict[str, Any], *args: str) -> str:
    """`gateway ...` on the demo's data folder and database; its standard output."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    env.update({"GATEWAY_DATA_DIR": demo["data_dir"], "GATEWAY_PUBLIC_URL": demo["base"]})
    done = subprocess.run(
        [sys.executable, "-m", "gateway", *args], env=env, capture_output=True, timeout=120
    )
    assert done.returncode == 0, done.stderr.decode(errors="replace")[-2000:]
    return done.stdout.decode().strip()


def test_a_physicians_ehr_launch_opens_the_study_in_context(tab: Tab, demo: dict[str, Any]) -> None:
    """An EHR opens OHIF for one patient and one study. The patient's MRN (IS-1005) is
    also another person's at another issuer: OHIF sees only this patient's studies."""
    base, smart = demo["base"], demo["smart"]
    chosen = next(
        p for p in demo["patients"] if (p["patient_id"], p["issuer"]) == ("IS-1005", "HOSP-A")
    )
    namesake = next(
        p for p in demo["patients"] if (p["patient_id"], p["issuer"]) == ("IS-1005", "HOSP-B")
    )
    operator = json.loads(
        gateway_cli(
            demo,
            "tokens",
            "issue",
            "--client",
            smart["operator"]["client_id"],
            "--scope",
            "system/ImagingStudy.rs",
        )
    )
    headers = {"Authorization": f"Bearer {operator['access_token']}"}

    def uids(patient: dict[str, Any]) -> set[str]:
        found = tab.page.request.get(
            f"{base}/fhir/ImagingStudy?patient={patient['fhir_id']}", headers=headers
        ).json()
        return {entry["resource"]["id"] for entry in found.get("entry", [])}

    own, theirs = uids(chosen), uids(namesake)
    assert own and theirs and not own & theirs
    study = sorted(own)[0]
    link = gateway_cli(
        demo,
        "launch",
        "--client",
        smart["app"]["client_id"],
        "--patient",
        chosen["fhir_id"],
        "--study",
        study,
    )
    tab.page.goto(link)
    tab.page.wait_for_url("**/oauth/signin**")
    tab.page.get_by_text("Physicians and staff").click()
    tab.page.fill("#username", smart["practitioner"]["username"])
    tab.page.fill("#password", smart["practitioner"]["password"])
    tab.page.locator("form:has(#username) button").click()
    tab.page.wait_for_url("**/oauth/consent**")
    tab.page.get_by_role("button", name="Approve").click()
    # The study from the launch's fhirContext, not the study list.
    tab.page.wait_for_url(
        f"{base}/apps/ohif/viewer?{urlencode({'StudyInstanceUIDs': study})}", timeout=30_000
    )
    tab.drawn()
    tab.page.screenshot(path=str(ARTIFACTS / "ohif-ehr-launch.png"))
    # What OHIF asked the gateway about this patient's other studies is theirs alone.
    assert study in tab.studies or any(study in url for url in tab.urls)
    assert set(tab.studies) <= own, set(tab.studies) - own
    assert tab.failures == [], tab.failures


def test_ohif_refreshes_the_token_before_it_expires(tab: Tab, demo: dict[str, Any]) -> None:
    """Tokens live 60 s here; smart-auth.js refreshes 30 s before the end, and OHIF
    keeps working on the new token without a new launch."""
    base = demo["base"]
    sign_in_as_patient(tab, demo)
    tab.page.wait_for_url(f"{base}/apps/ohif/", timeout=30_000)
    tab.page.locator("tbody tr").first.wait_for(timeout=30_000)
    first, before = tab.token(), len(tab.urls)
    deadline = time.monotonic() + 60
    while tab.token() == first and time.monotonic() < deadline:
        time.sleep(1)
    second = tab.token()
    assert second != first, "no refresh within a minute"
    refreshed = tab.page.request.get(
        f"{base}/dicomweb/studies", headers={"Authorization": f"Bearer {second}"}
    )
    assert refreshed.status == 200
    # Refreshed in place (a token request), not relaunched (no new authorize).
    since = tab.urls[before:]
    assert f"{base}/oauth/token" in since
    assert not [url for url in since if "/oauth/authorize" in url or "/apps/launch/" in url]
    uid = next(u for u, found in sorted(tab.studies.items()) if "CT" in found)
    tab.page.goto(f"{base}/apps/ohif/viewer?{urlencode({'StudyInstanceUIDs': uid})}")
    tab.drawn()
    assert tab.failures == [], tab.failures


def test_a_share_recipient_opens_exactly_the_shared_studies_in_ohif(
    browser: Browser, tab: Tab, demo: dict[str, Any]
) -> None:
    """The patient shares a CT and an MR from the portal; the recipient opens the link
    with its PIN, then OHIF, which lists exactly those two studies (through a capability
    URL, no token) and draws an image. The patient withdraws the share: the capability
    answers 404 at once, OHIF gets nothing more, and the tab goes to the share page,
    which says that access has ended."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    base, patient = demo["base"], demo["smart"]["patient"]
    # The patient, in a browser of their own: the portal's Shares page.
    portal = browser.new_context()
    mine = portal.new_page()
    mine.goto(f"{base}/portal/signin")
    mine.fill("#access_code", patient["access_code"])
    mine.fill("#passphrase", patient["passphrase"])
    mine.get_by_role("button", name="Sign in", exact=True).click()
    mine.wait_for_url(f"{base}/portal/")
    mine.goto(f"{base}/portal/shares")
    boxes = mine.locator('input[name="study"]')
    shared: list[str] = []
    for modality in ("CT", "MR"):
        row = mine.locator("label", has=boxes).filter(has_text=f" {modality} ").first
        row.locator("input").check()
        shared.append(str(row.locator("input").get_attribute("value")))
    mine.fill("#label", "OHIF recipient")
    mine.get_by_role("button", name="Create the share link").click()
    link, pin = mine.inner_text("#share-link"), mine.inner_text("#share-pin")
    assert set(shared) < set(demo["states"]["released"]) and len(set(shared)) == 2

    # The recipient: the link, the PIN, the share page, then the viewer.
    capability_answers: list[tuple[int, str]] = []  # (status, url) of /dicomweb/cap
    listed: set[str] = set()
    referers: list[str | None] = []
    addresses: list[str] = []

    def answered(response: Response) -> None:
        if response.url.startswith(f"{base}/dicomweb/cap/"):
            capability_answers.append((response.status, response.url))
            referers.append(response.request.headers.get("referer"))
            if "/studies?" in response.url and response.status == 200:
                listed.update(s["0020000D"]["Value"][0] for s in response.json())

    tab.page.on("response", answered)
    tab.page.on("framenavigated", lambda frame: addresses.append(frame.url))
    tab.page.goto(link)
    tab.page.fill("#pin", pin)
    tab.page.get_by_role("button", name="Open").click()
    tab.page.wait_for_url(f"{base}/share/view")
    tab.page.get_by_role("link", name="Open in viewer").click()
    tab.page.wait_for_url(f"{base}/share/ohif/", timeout=30_000)
    rows = tab.page.locator("tbody tr", has_text="Doe, Jane")
    rows.first.wait_for(timeout=30_000)
    tab.page.screenshot(path=str(ARTIFACTS / "ohif-share-list.png"))
    assert listed == set(shared), listed
    assert rows.count() == 2
    # An image of the shared CT is drawn, fetched through the capability.
    tab.page.goto(f"{base}/share/ohif/viewer?{urlencode({'StudyInstanceUIDs': shared[0]})}")
    tab.drawn()
    tab.page.screenshot(path=str(ARTIFACTS / "ohif-share-ct.png"))
    root = capability_answers[-1][1].split("/studies", 1)[0]
    secret = root.rsplit("/", 1)[-1]
    assert any(f"/studies/{shared[0]}/series/" in url for _, url in capability_answers)
    # The capability is renewed while the page is open (every 10 s here).
    with tab.page.expect_response(f"{base}/share/ohif/renew", timeout=30_000) as renewal:
        pass
    assert renewal.value.status == 200
    # No token anywhere, the secret never in the address bar nor in a Referer, nor in
    # the gateway's log; every request stayed on the gateway; no error so far.
    assert not [url for url in tab.urls if "access_token" in url or "/oauth/" in url]
    assert not [a for a in addresses if "/dicomweb/cap" in a or secret in a]
    assert referers and not [r for r in referers if r], referers
    assert secret not in demo["gateway"].log
    assert not [u for u in tab.urls if not u.startswith((base, "data:", "blob:"))]
    assert tab.failures == [], tab.failures

    # The patient withdraws the share from the portal.
    before = len(capability_answers)
    mine.goto(f"{base}/portal/shares")
    mine.get_by_role("button", name="Withdraw the share for OHIF recipient").click()
    assert "was withdrawn" in mine.inner_text("main")
    portal.close()
    probe = tab.page.request.get(f"{root}/studies")
    assert probe.status == 404
    # OHIF's next renewal is refused: the tab goes to the share page, which explains.
    tab.page.wait_for_url(f"{base}/share/view", timeout=30_000)
    assert "Your access to these studies has ended" in tab.page.inner_text("body")
    tab.page.screenshot(path=str(ARTIFACTS / "ohif-share-ended.png"))
    assert not [a for a in capability_answers[before:] if a[0] < 400], capability_answers[before:]
    # What failed is only what the withdrawal provoked: the renewal and the share page.
    assert {status for status, _ in tab.failures} <= {401, 404}, tab.failures
    assert any(url == f"{base}/share/ohif/renew" for _, url in tab.failures)
