"""A standalone launch in a real headless Chromium: OHIF's launch page, sign-in, consent, studies.

Playwright drives Debian's Chromium (``executable_path``); nothing is downloaded.
"""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fixtures.generate import BENCH_PATIENT_ID
from gateway.auth.clients import ClientKind
from gateway.auth.service import AuthServices
from gateway.store.database import Database
from gateway.store.patients import PatientIndex
from tests.conftest import make_settings, serve_gateway

pytestmark = [pytest.mark.browser, pytest.mark.slow]
PASSPHRASE = "browser test passphrase"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "browser"


@pytest.fixture(scope="module")
def gateway_with_viewer(
    tmp_path_factory: pytest.TempPathFactory, embedded_data_dir: Path
) -> Iterator[dict[str, Any]]:
    workdir = tmp_path_factory.mktemp("browser")
    with serve_gateway(workdir, data_dir=str(embedded_data_dir), auth_required="true") as base:
        settings = make_settings(
            embedded_data_dir,
            database_url=f"sqlite+aiosqlite:///{workdir / 'gateway.db'}",
            public_url=base,
        )

        async def prepare() -> dict[str, Any]:
            database = Database(settings.effective_database_url)
            auth = AuthServices.build(settings, database.sessions)
            try:
                key = ("HOSP-A", BENCH_PATIENT_ID)
                fhir_id = (await PatientIndex(database.sessions).ids_for([key]))[key]
                account = await auth.accounts.enroll_patient(fhir_id, "1961-04-12", "Jane Doe")
                viewer = f"{base}/apps/launch/"
                app = await auth.clients.add(
                    name="Demo viewer", kind=ClientKind.public, redirect_uris=[viewer]
                )
                return {
                    "base": base,
                    "viewer": f"{viewer}?client_id={app.client.client_id}",
                    "code": account.login,
                }
            finally:
                await auth.aclose()
                await database.dispose()

        yield asyncio.run(prepare())


def test_patient_activates_and_shares_two_studies(gateway_with_viewer: dict[str, Any]) -> None:
    playwright_api = pytest.importorskip("playwright.sync_api")
    if not Path(CHROMIUM).exists():
        pytest.fail("Chromium is missing: scripts/test.sh installs the Debian package chromium")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with playwright_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True)
        try:
            page = browser.new_page()
            page.goto(gateway_with_viewer["viewer"])
            page.get_by_role("button", name="Sign in and open my images").click()
            # First visit: activate the access code with the date of birth.
            page.get_by_text("First time here? Activate your access code").click()
            page.fill("#activate_code", gateway_with_viewer["code"])
            page.fill("#birth_date", "1961-04-12")
            page.fill("#new_passphrase", PASSPHRASE)
            page.get_by_role("button", name="Activate and sign in").click()
            page.wait_for_url("**/oauth/consent**")
            assert "Demo viewer" in page.inner_text("h1")
            # Keep studies, untick documents, and share only two studies for a week.
            page.get_by_label("Read and search your reports and documents").uncheck()
            page.get_by_label("Only the studies I tick below").check()
            boxes = page.locator('input[name="study"]')
            assert boxes.count() == 10
            boxes.nth(0).check()
            boxes.nth(1).check()
            page.get_by_label("One week").check()
            page.screenshot(path=str(ARTIFACTS / "consent.png"), full_page=True)
            page.get_by_role("button", name="Approve").click()
            page.wait_for_url(f"{gateway_with_viewer['base']}/apps/ohif/**")
            # OHIF lists the two studies shared with it, and nothing else.
            rows = page.locator("tbody tr", has_text="Doe, Jane")
            rows.first.wait_for(timeout=30_000)
            assert rows.count() == 2
            page.screenshot(path=str(ARTIFACTS / "viewer.png"), full_page=True)
            # The patient withdraws the app in the portal.
            portal = browser.new_page()
            portal.goto(f"{gateway_with_viewer['base']}/portal/signin")
            portal.fill("#access_code", gateway_with_viewer["code"])
            portal.fill("#passphrase", PASSPHRASE)
            portal.get_by_role("button", name="Sign in", exact=True).click()
            portal.wait_for_url("**/portal/")
            assert portal.locator("tbody tr").count() == 10
            portal.get_by_role("link", name="Apps").click()
            portal.screenshot(path=str(ARTIFACTS / "portal-apps.png"), full_page=True)
            portal.get_by_role("button", name="Revoke Demo viewer").click()
            portal.wait_for_url("**/portal/apps?withdrawn=*")
            assert "No app can see your images" in portal.inner_text("main")
            # The viewer's token is refused from now on.
            refused = page.evaluate(
                """async (base) => {
                    const key = JSON.parse(sessionStorage.getItem('SMART_KEY'));
                    const state = JSON.parse(sessionStorage.getItem(key));
                    const token = state.tokenResponse.access_token;
                    const headers = {Authorization: 'Bearer ' + token};
                    return (await fetch(base + '/fhir/ImagingStudy', {headers})).status;
                }""",
                gateway_with_viewer["base"],
            )
            assert refused == 401
        finally:
            browser.close()
