"""A patient's whole journey in a real headless Chromium, against `gateway serve` over HTTP.

Staff enroll the patient through the admin API; the patient activates in the
portal, lets an app see two studies (and the token sees exactly those, over
FHIR and DICOMweb), withdraws it in the portal; makes a share link that a
physician opens with the PIN, views and downloads; a second link locks after
five wrong PINs; the first is withdrawn and refused; and the Activity page
lists all of it. Screenshots go to test-artifacts/browser/.

Playwright drives Debian's Chromium (``executable_path``); nothing is downloaded.
"""

from __future__ import annotations

import asyncio
import shutil
import time
import uuid
import zipfile
from collections.abc import Iterator
from io import BytesIO
from pathlib import Path
from typing import Any

import httpx
import pytest
from joserfc import jwt
from joserfc.jwk import RSAKey

from fixtures.generate import BENCH_PATIENT_ID
from gateway.auth.client_auth import JWT_BEARER
from gateway.auth.clients import ClientKind
from gateway.auth.service import AuthServices
from gateway.store.database import Database
from tests.conftest import make_settings, serve_gateway

pytestmark = [pytest.mark.browser, pytest.mark.slow]
PASSPHRASE = "a journey passphrase"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "browser"


@pytest.fixture(scope="module")
def served(
    tmp_path_factory: pytest.TempPathFactory, embedded_data_dir: Path
) -> Iterator[dict[str, Any]]:
    workdir = tmp_path_factory.mktemp("journey")
    with serve_gateway(
        workdir,
        data_dir=str(embedded_data_dir),
        auth_required="true",
        release_delay_hours="0",
    ) as base:
        settings = make_settings(
            embedded_data_dir,
            database_url=f"sqlite+aiosqlite:///{workdir / 'gateway.db'}",
            public_url=base,
        )

        async def register() -> dict[str, Any]:
            database = Database(settings.effective_database_url)
            auth = AuthServices.build(settings, database.sessions)
            try:
                key = RSAKey.generate_key(2048, parameters={"kid": "registry"})
                registry = await auth.clients.add(
                    name="Registration desk",
                    kind=ClientKind.backend,
                    jwks={"keys": [key.as_dict(private=False)]},
                    scope="admin/enrollments",
                )
                viewer = f"{base}/apps/launch/"
                app = await auth.clients.add(
                    name="Demo viewer", kind=ClientKind.public, redirect_uris=[viewer]
                )
                return {
                    "registry": registry.client.client_id,
                    "key": key,
                    "viewer": f"{viewer}?client_id={app.client.client_id}",
                }
            finally:
                await auth.aclose()
                await database.dispose()

        yield {"base": base, "log": workdir / "gateway.log", **asyncio.run(register())}


def admin_token(served: dict[str, Any]) -> str:
    claims = {
        "iss": served["registry"],
        "sub": served["registry"],
        "aud": f"{served['base']}/oauth/token",
        "exp": int(time.time()) + 240,
        "jti": uuid.uuid4().hex,
    }
    assertion = jwt.encode(
        {"alg": "RS384", "kid": "registry", "typ": "JWT"}, claims, served["key"], ["RS384"]
    )
    answer = httpx.post(
        f"{served['base']}/oauth/token",
        data={
            "grant_type": "client_credentials",
            "scope": "admin/enrollments",
            "client_assertion_type": JWT_BEARER,
            "client_assertion": assertion,
        },
    )
    assert answer.status_code == 200, answer.text
    return str(answer.json()["access_token"])


def shot(page: Any, name: str) -> None:
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def sign_in_to_portal(page: Any, base: str, code: str) -> None:
    page.goto(f"{base}/portal/signin")
    page.fill("#access_code", code)
    page.fill("#passphrase", PASSPHRASE)
    page.get_by_role("button", name="Sign in", exact=True).click()
    page.wait_for_url("**/portal/")


def create_share(page: Any, base: str, label: str, ticks: int) -> tuple[str, str, list[str]]:
    page.goto(f"{base}/portal/shares")
    boxes = page.locator('input[name="study"]')
    chosen = []
    for index in range(ticks):
        boxes.nth(index).check()
        chosen.append(boxes.nth(index).get_attribute("value"))
    page.fill("#label", label)
    page.get_by_role("button", name="Create the share link").click()
    page.wait_for_selector("#share-pin")
    return page.inner_text("#share-link"), page.inner_text("#share-pin"), chosen


def test_a_patients_journey(served: dict[str, Any]) -> None:
    playwright_api = pytest.importorskip("playwright.sync_api")
    if not Path(CHROMIUM).exists():
        pytest.fail("Chromium is missing: scripts/test.sh installs the Debian package chromium")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    base = served["base"]

    # 1. Staff enroll the patient and print the letter.
    token = admin_token(served)
    enrolled = httpx.post(
        f"{base}/admin/enrollments",
        json={"identifier": {"system": "HOSP-A", "value": BENCH_PATIENT_ID}},
        headers={"Authorization": f"Bearer {token}"},
    )
    assert enrolled.status_code == 201, enrolled.text
    code = enrolled.json()["access_code"]
    letter_url = enrolled.json()["letter"]

    with playwright_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True)
        try:
            staff = browser.new_context(
                extra_http_headers={"Authorization": f"Bearer {token}"}
            ).new_page()
            staff.goto(letter_url)
            assert f"{code[:4]} {code[4:]}" in staff.inner_text("body")
            shot(staff, "journey-1-enrollment-letter")

            # 2. The patient activates the code in the portal, on a phone-sized screen.
            patient = browser.new_context(viewport={"width": 390, "height": 844}).new_page()
            patient.goto(f"{base}/portal/signin")
            patient.get_by_text("First time here? Activate your access code").click()
            patient.fill("#activate_code", code)
            patient.fill("#birth_date", "1970-01-01")  # from the archive, via the enrollment
            patient.fill("#new_passphrase", PASSPHRASE)
            patient.get_by_role("button", name="Activate and sign in").click()
            patient.wait_for_url("**/portal/")
            assert patient.locator("tbody tr").count() == 10
            shot(patient, "journey-2-jacket-phone")

            # 3. An app asks; the patient shares two studies with it.
            app = browser.new_context().new_page()
            app.goto(served["viewer"])
            app.get_by_role("button", name="Sign in and open my images").click()
            app.fill("#access_code", code)
            app.fill("#passphrase", PASSPHRASE)
            app.get_by_role("button", name="Sign in", exact=True).click()
            app.wait_for_url("**/oauth/consent**")
            app.get_by_label("Only the studies I tick below").check()
            boxes = app.locator('input[name="study"]')
            chosen = {boxes.nth(i).get_attribute("value") for i in (0, 1)}
            for i in (0, 1):
                boxes.nth(i).check()
            app.get_by_label("One week").check()
            shot(app, "journey-3-consent")
            app.get_by_role("button", name="Approve").click()
            # The launch page hands over to OHIF, with the token in the tab's storage.
            app.wait_for_url(f"{base}/apps/ohif/**")
            app_token = app.evaluate(
                "() => JSON.parse(sessionStorage.getItem(JSON.parse("
                "sessionStorage.getItem('SMART_KEY')))).tokenResponse.access_token"
            )
            headers = {"Authorization": f"Bearer {app_token}"}
            searched = httpx.get(f"{base}/fhir/ImagingStudy?_count=50", headers=headers).json()
            queried = httpx.get(f"{base}/dicomweb/studies", headers=headers).json()
            assert {e["resource"]["id"] for e in searched["entry"]} == chosen
            assert {s["0020000D"]["Value"][0] for s in queried} == chosen
            other = next(
                uid
                for uid in patient.locator("a[href*='/portal/studies/']").evaluate_all(
                    "(links) => links.map((a) => a.href.split('/').pop())"
                )
                if uid not in chosen
            )
            for path in (f"fhir/ImagingStudy/{other}", f"dicomweb/studies/{other}/metadata"):
                assert httpx.get(f"{base}/{path}", headers=headers).status_code == 404
            shot(app, "journey-4-app")

            # 4. The patient withdraws the app; its token is refused at once.
            patient.get_by_role("link", name="Apps").click()
            assert patient.locator("tbody td:nth-child(3) li").count() == 2
            shot(patient, "journey-4b-apps")
            patient.get_by_role("button", name="Revoke Demo viewer").click()
            patient.wait_for_url("**/portal/apps?withdrawn=*")
            assert "Access withdrawn from Demo viewer." in patient.inner_text("main")
            assert httpx.get(f"{base}/fhir/ImagingStudy", headers=headers).status_code == 401

            # 5. A share link for a physician: the link and PIN are shown once.
            link, pin, shared = create_share(patient, base, "Dr. Recipient", 2)
            shot(patient, "journey-5-share-created")

            # 6. The physician opens it: a wrong PIN, then the right one.
            doctor_context = browser.new_context(accept_downloads=True)
            doctor = doctor_context.new_page()
            doctor.goto(link)
            doctor.fill("#pin", "000000" if pin != "000000" else "111111")
            doctor.get_by_role("button", name="Open").click()
            assert "4 tries left" in doctor.inner_text("main")
            doctor.fill("#pin", pin)
            doctor.get_by_role("button", name="Open").click()
            doctor.wait_for_url("**/share/view")
            listed = doctor.locator("tbody a").evaluate_all(
                "(links) => links.map((a) => a.href.split('/').pop())"
            )
            assert set(listed) == set(shared)
            shot(doctor, "journey-6-shared-studies")
            doctor.locator("tbody a").first.click()
            # Not wait_for_function: once it polls, it evals, which the page's policy forbids.
            width = doctor.locator(".viewer img").evaluate(
                "(img) => img.decode().then(() => img.naturalWidth)"
            )
            assert width > 0
            shot(doctor, "journey-7-shared-study-viewer")
            with doctor.expect_download() as downloading:
                doctor.get_by_role("link", name="Download this study (DICOM files, ZIP)").click()
            saved = Path(downloading.value.path())
            names = zipfile.ZipFile(BytesIO(saved.read_bytes())).namelist()
            assert any(n.endswith(".dcm") for n in names)

            # 7. A second link locks after five wrong PINs, even for the right one after.
            second_link, second_pin, _ = create_share(patient, base, "Wrong PINs", 1)
            thief = browser.new_context().new_page()
            thief.goto(second_link)
            wrong = "000000" if second_pin != "000000" else "111111"
            for _ in range(5):
                thief.fill("#pin", wrong)
                thief.get_by_role("button", name="Open").click()
            assert "locked" in thief.inner_text("main")
            thief.goto(second_link)
            assert "locked" in thief.inner_text("main")
            shot(thief, "journey-8-locked")

            # 8. The patient withdraws the first link: the physician is refused next click.
            patient.goto(f"{base}/portal/shares")
            assert "Locked after 5 wrong PINs" in patient.inner_text("main")
            patient.get_by_role("button", name="Withdraw the share for Dr. Recipient").click()
            patient.wait_for_url("**/portal/shares?withdrawn=*")
            assert "The share link for Dr. Recipient was withdrawn." in patient.inner_text("main")
            shot(patient, "journey-9-shares")
            doctor.goto(f"{base}/share/view")
            assert "ended" in doctor.inner_text("main")
            doctor.goto(link)
            assert "not valid" in doctor.inner_text("main")

            # 9. Activity: every access above, in plain words.
            patient.get_by_role("link", name="Activity").click()
            activity = patient.inner_text("main")
            for line in (
                "Activated the access code",
                "Staff enrolled you",
                "You allowed an app",
                "Demo viewer",
                "Searched your records",
                "Looked up your images",
                "You withdrew an app",
                "You created a share link",
                "A wrong PIN was entered for your share link",
                "Opened your share link with the PIN",
                "Share link: Dr. Recipient",
                "Viewed or downloaded images",
                "Downloaded shared studies",
                "Your share link locked after wrong PINs",
                "You withdrew a share link",
            ):
                assert line in activity, line
            shot(patient, "journey-10-activity")
        finally:
            browser.close()
    # The link's token never reached the server's log.
    assert link.rsplit("/", 1)[1] not in served["log"].read_text(errors="replace")
