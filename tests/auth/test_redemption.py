"""Codes, refresh tokens and launches are spent once, even in parallel; a failed try spends nothing.

Parallel requests here really overlap: each is its own ``httpx.AsyncClient`` on
the app (``tests/support/browsers.py``), gathered in the harness's event loop,
on SQLite and on PostgreSQL. ``SELECT ... FOR UPDATE`` does nothing on SQLite,
so two redemptions of one code both got tokens there before.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.auth.clients import ClientKind
from gateway.auth.tokens import s256
from tests.auth.test_oauth_api import Harness, bearer
from tests.portal.support import DATABASES, Clock, portal_harness
from tests.support.browsers import Browser

REDIRECT = "https://app.example/cb"
SCOPE = "launch/patient offline_access patient/ImagingStudy.rs"
PARALLEL = 8
TRIALS = 12


@pytest.fixture(params=DATABASES)
def harness(
    request: pytest.FixtureRequest, tmp_path: Path, embedded_data_dir: Path
) -> Iterator[Harness]:
    with portal_harness(tmp_path, embedded_data_dir, Clock(), request.param) as made:
        yield made


def public_app(harness: Harness) -> str:
    created = harness.call(
        harness.services.auth.clients.add,
        name="Racing app",
        kind=ClientKind.public,
        redirect_uris=[REDIRECT],
    )
    return str(created.client.client_id)


def new_code(harness: Harness, client_id: str, verifier: str) -> str:
    return str(
        harness.call(
            harness.services.auth.tokens.create_code,
            client_id=client_id,
            account_id="patient-account",
            scope=SCOPE.split(),
            context={"patient": "pid-1"},
            redirect_uri=REDIRECT,
            code_challenge=s256(verifier),
            nonce=None,
        )
    )


def code_form(client_id: str, code: str, verifier: str, **changes: str) -> dict[str, str]:
    return {
        "grant_type": "authorization_code",
        "code": code,
        "redirect_uri": REDIRECT,
        "code_verifier": verifier,
        "client_id": client_id,
        **changes,
    }


def together(harness: Harness, forms: list[dict[str, str]]) -> list[httpx.Response]:
    """Every form posted to the token endpoint at once, each from its own client."""

    async def run() -> list[httpx.Response]:
        browsers = [Browser(harness) for _ in forms]
        try:
            return list(
                await asyncio.gather(
                    *(
                        b.http.post("/oauth/token", data=f)
                        for b, f in zip(browsers, forms, strict=True)
                    )
                )
            )
        finally:
            for browser in browsers:
                await browser.aclose()

    return harness.call(run)  # type: ignore[no-any-return]


def one_winner(answers: list[httpx.Response]) -> dict[str, Any]:
    statuses = [a.status_code for a in answers]
    assert statuses.count(200) == 1, statuses
    assert all(a.json()["error"] == "invalid_grant" for a in answers if a.status_code != 200)
    return next(a.json() for a in answers if a.status_code == 200)


@pytest.mark.slow
def test_a_code_redeemed_in_parallel_gives_tokens_once(harness: Harness) -> None:
    app = public_app(harness)
    for _ in range(TRIALS):
        verifier = secrets.token_urlsafe(48)
        code = new_code(harness, app, verifier)
        one_winner(together(harness, [code_form(app, code, verifier)] * PARALLEL))


@pytest.mark.slow
def test_a_refresh_token_rotated_in_parallel_gives_one_pair(harness: Harness) -> None:
    app = public_app(harness)
    for _ in range(TRIALS):
        verifier = secrets.token_urlsafe(48)
        first = harness.client.post(
            "/oauth/token", data=code_form(app, new_code(harness, app, verifier), verifier)
        ).json()
        refresh = {
            "grant_type": "refresh_token",
            "refresh_token": first["refresh_token"],
            "client_id": app,
        }
        one_winner(together(harness, [refresh] * PARALLEL))


def test_a_launch_redeemed_in_parallel_opens_once(harness: Harness) -> None:
    launches = harness.services.auth.launches

    async def race() -> list[dict[str, Any] | None]:
        launch_id = await launches.create("ehr", {"patient": "pid-1"})
        return list(await asyncio.gather(*(launches.redeem(launch_id) for _ in range(PARALLEL))))

    for _ in range(TRIALS):
        contexts = harness.call(race)
        assert [c for c in contexts if c is not None] == [{"patient": "pid-1"}]


def test_failed_redemptions_leave_the_code_to_its_app(harness: Harness) -> None:
    app, other = public_app(harness), public_app(harness)
    verifier = secrets.token_urlsafe(48)
    code = new_code(harness, app, verifier)
    failures = [
        code_form(other, code, verifier),
        code_form(app, code, secrets.token_urlsafe(48)),
        code_form(app, code, verifier, redirect_uri=REDIRECT + "/other"),
        code_form(app, code, s256(verifier)),
    ]
    for form in failures:
        answer = harness.client.post("/oauth/token", data=form)
        assert answer.status_code == 400 and answer.json()["error"] == "invalid_grant"
    token = harness.client.post("/oauth/token", data=code_form(app, code, verifier))
    assert token.status_code == 200, token.text
    assert harness.client.get("/fhir/ImagingStudy", headers=bearer(token.json())).status_code == 200
    # Another client's try at the spent code withdraws nothing; its own app's replay does.
    stranger = harness.client.post("/oauth/token", data=code_form(other, code, verifier))
    assert stranger.status_code == 400
    assert harness.client.get("/fhir/ImagingStudy", headers=bearer(token.json())).status_code == 200
    replay = harness.client.post("/oauth/token", data=code_form(app, code, verifier))
    assert replay.status_code == 400 and replay.json()["error"] == "invalid_grant"
    assert harness.client.get("/fhir/ImagingStudy", headers=bearer(token.json())).status_code == 401
