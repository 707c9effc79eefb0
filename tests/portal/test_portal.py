"""The patient portal: sign-in, the jacket, and revoking an app (in-process, form posts)."""

from __future__ import annotations

import re

from tests.auth.test_authorize import (
    PASSPHRASE,
    REDIRECT,
    approve,
    authorize_params,
    follow_to_consent,
    hidden,
    pkce,
)
from tests.auth.test_authorize import app_id as app_id
from tests.auth.test_authorize import patient as patient
from tests.auth.test_oauth_api import Harness, bearer
from tests.auth.test_oauth_api import harness as harness


def sign_in(harness: Harness, code: str, passphrase: str = PASSPHRASE) -> int:
    harness.client.cookies.clear()
    page = harness.client.get("/portal/signin")
    assert page.status_code == 200
    assert page.headers["x-frame-options"] == "DENY"
    assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
    answer = harness.client.post(
        "/portal/signin",
        data={
            "csrf_token": hidden(page.text, "csrf_token"),
            "mode": "patient",
            "access_code": code,
            "passphrase": passphrase,
        },
        follow_redirects=False,
    )
    return answer.status_code


def test_sign_in_shows_the_jacket(harness: Harness, patient: dict[str, str]) -> None:
    assert harness.client.get("/portal/", follow_redirects=False).status_code == 303
    if sign_in(harness, patient["code"]) == 401:
        page = harness.client.get("/portal/signin")
        harness.client.post(
            "/portal/signin",
            data={
                "csrf_token": hidden(page.text, "csrf_token"),
                "mode": "activate",
                "access_code": patient["code"],
                "birth_date": "1961-04-12",
                "passphrase": PASSPHRASE,
            },
        )
    jacket = harness.client.get("/portal/")
    assert jacket.status_code == 200
    assert jacket.text.count("<tr>") == 11  # a header row and ten studies
    assert "Report available" in jacket.text
    wrong = sign_in(harness, patient["code"], "not the passphrase")
    assert wrong == 401


def test_revoking_an_app_in_the_portal_stops_its_tokens(
    harness: Harness, patient: dict[str, str], app_id: str
) -> None:
    verifier, challenge = pkce()
    consent_page = follow_to_consent(harness, authorize_params(app_id, challenge), patient)
    redirected = approve(harness, consent_page)
    token = harness.client.post(
        "/oauth/token",
        data={
            "grant_type": "authorization_code",
            "code": redirected["code"],
            "redirect_uri": REDIRECT,
            "code_verifier": verifier,
            "client_id": app_id,
        },
    ).json()
    assert harness.client.get("/fhir/ImagingStudy", headers=bearer(token)).status_code == 200
    assert sign_in(harness, patient["code"]) == 303
    apps = harness.client.get("/portal/apps")
    assert "Image Viewer" in apps.text and "Read and search your imaging studies" in apps.text
    forms = re.findall(r'action="[^"]*/portal/apps/([0-9a-f]+)/revoke"', apps.text)
    assert forms
    no_csrf = harness.client.post(f"/portal/apps/{forms[0]}/revoke", data={})
    assert no_csrf.status_code == 400
    for grant in forms:
        revoked = harness.client.post(
            f"/portal/apps/{grant}/revoke",
            data={"csrf_token": hidden(apps.text, "csrf_token")},
            follow_redirects=False,
        )
        assert revoked.status_code == 303
    assert harness.client.get("/fhir/ImagingStudy", headers=bearer(token)).status_code == 401
    assert "No app can see your images" in harness.client.get("/portal/apps").text
    activity = harness.client.get("/portal/activity").text
    for line in (
        "You allowed an app",
        "Image Viewer",
        "Searched your records",
        "You withdrew an app",
    ):
        assert line in activity, line
    refreshed = harness.client.post(
        "/oauth/token",
        data={
            "grant_type": "refresh_token",
            "refresh_token": token["refresh_token"],
            "client_id": app_id,
        },
    )
    assert refreshed.status_code == 400
