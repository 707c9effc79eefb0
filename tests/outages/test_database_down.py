"""The database goes away: every area answers 503 + Retry-After in its own format, then recovers.

PostgreSQL is taken away behind a TCP relay (pooled connections break, new
ones are refused); SQLite by putting a folder where its file was, so it
cannot be opened. A walk over the areas (FHIR, DICOMweb, the OAuth endpoints
and pages, the portal, share links, the admin API) with the credentials a
client held before the outage.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit

import pytest
from starlette.testclient import TestClient

from gateway.auth.clients import ClientKind
from tests.auth.test_authorize import (
    PASSPHRASE,
    REDIRECT,
    authorize_params,
    follow_to_consent,
    hidden,
    pkce,
)
from tests.auth.test_oauth_api import JWT_BEARER, Harness, bearer
from tests.portal.support import (
    DATABASES,
    Clock,
    create_share,
    enroll,
    enter_pin,
    portal_harness,
    portal_sign_in,
    shareable,
)

Check = Callable[[TestClient], Any]
# Any syntactically valid series and instance: the caller's access is decided first.
THUMBNAIL = "/studies/{}/series/1.2.3/instances/1.2.4/thumbnail"


@contextmanager
def outage_harness(database: str, tmp_path: Path, data_dir: Path) -> Iterator[tuple[Harness, Any]]:
    """A portal harness, and a switch that takes the database away (False) and back (True)."""
    if database == "postgres":
        from tests.support.postgres import throwaway_database
        from tests.support.tcp_proxy import tcp_proxy

        with throwaway_database() as url, tcp_proxy(("127.0.0.1", 5432)) as proxy:
            relayed = url.replace("@127.0.0.1:5432/", f"@127.0.0.1:{proxy.port}/")
            with portal_harness(tmp_path, data_dir, Clock(), database_url=relayed) as harness:
                yield harness, lambda up: proxy.restore() if up else proxy.cut()
        return
    file = tmp_path / "g.db"
    with portal_harness(
        tmp_path, data_dir, Clock(), database_url=f"sqlite+aiosqlite:///{file}"
    ) as harness:

        def switch(up: bool) -> None:
            # Open connections would go on reading the moved file: close them, as a restart would.
            harness.call(harness.services.database.engine.dispose)
            if up:
                file.rmdir()
                (tmp_path / "away").rename(file)
                for extra in ("-wal", "-shm"):
                    if (tmp_path / f"away{extra}").exists():
                        shutil.move(tmp_path / f"away{extra}", f"{file}{extra}")
            else:
                file.rename(tmp_path / "away")
                file.mkdir()
                for extra in ("-wal", "-shm"):
                    if Path(f"{file}{extra}").exists():
                        shutil.move(f"{file}{extra}", tmp_path / f"away{extra}")

        yield harness, switch


def _walk(harness: Harness) -> list[tuple[str, str, Check]]:
    """(area, name, request) for every area, with credentials made while the database was up."""
    client = harness.client
    patient = enroll(harness)
    system = harness.backend_token("system/*.rs")
    admin = harness.backend_token("admin/enrollments")
    client_id, key = harness.backend_client()
    assertion = harness.assertion(client_id, key)
    patient_token = harness.patient_token(patient.fhir_id, "launch/patient patient/*.rs")
    app = harness.call(
        harness.services.auth.clients.add,
        name="Viewer",
        kind=ClientKind.public,
        redirect_uris=[REDIRECT],
    )
    _, challenge = pkce()
    follow_to_consent(
        harness, authorize_params(app.client.client_id, challenge), {"code": patient.code}
    )
    started = client.get(
        "/oauth/authorize?" + urlencode(authorize_params(app.client.client_id, challenge)),
        follow_redirects=False,
    )
    request_id = urlsplit(started.headers["location"]).query.split("request=")[1]
    assert portal_sign_in(client, patient.code) == 303
    studies = shareable(client)
    _, _, link, pin = create_share(client, studies[:1], days="7")
    assert link and pin
    assert enter_pin(client, link, pin).status_code == 303
    study = studies[0]
    signin_csrf = hidden(client.get("/portal/signin").text, "csrf_token")
    return [
        ("fhir", "search", lambda c: c.get("/fhir/ImagingStudy", headers=bearer(patient_token))),
        ("fhir", "read", lambda c: c.get(f"/fhir/ImagingStudy/{study}", headers=bearer(system))),
        ("fhir", "audit", lambda c: c.get("/fhir/AuditEvent", headers=bearer(patient_token))),
        ("fhir", "no token", lambda c: c.get("/fhir/Patient")),
        ("dicomweb", "qido", lambda c: c.get("/dicomweb/studies", headers=bearer(system))),
        (
            "dicomweb",
            "metadata",
            lambda c: c.get(f"/dicomweb/studies/{study}/metadata", headers=bearer(patient_token)),
        ),
        (
            "oauth",
            "token",
            lambda c: c.post(
                "/oauth/token",
                data={
                    "grant_type": "client_credentials",
                    "scope": "system/*.rs",
                    "client_assertion_type": JWT_BEARER,
                    "client_assertion": assertion,
                },
            ),
        ),
        (
            "oauth",
            "introspect",
            lambda c: c.post(
                "/oauth/introspect",
                data={"token": patient_token["access_token"]},
                headers=bearer(system),
            ),
        ),
        (
            "oauth",
            "revoke",
            lambda c: c.post(
                "/oauth/revoke",
                data={
                    "token": patient_token["access_token"],
                    "client_id": patient_token["client_id"],
                },
            ),
        ),
        (
            "oauth",
            "register",
            lambda c: c.post(
                "/oauth/register",
                json={"client_name": "New", "redirect_uris": ["https://new.example/cb"]},
            ),
        ),
        (
            "oauth-page",
            "authorize",
            lambda c: c.get(
                "/oauth/authorize?" + urlencode(authorize_params(app.client.client_id, challenge)),
                follow_redirects=False,
            ),
        ),
        ("oauth-page", "signin", lambda c: c.get(f"/oauth/signin?request={request_id}")),
        ("oauth-page", "consent", lambda c: c.get(f"/oauth/consent?request={request_id}")),
        ("page", "portal sign-in page", lambda c: c.get("/portal/signin")),
        (
            "page",
            "portal sign-in",
            lambda c: c.post(
                "/portal/signin",
                data={
                    "csrf_token": signin_csrf,
                    "mode": "patient",
                    "access_code": patient.code,
                    "passphrase": PASSPHRASE,
                },
            ),
        ),
        ("page", "jacket", lambda c: c.get("/portal/")),
        ("page", "shares", lambda c: c.get("/portal/shares")),
        ("page", "activity", lambda c: c.get("/portal/activity")),
        ("page", "share link", lambda c: c.get(link)),
        ("page", "shared studies", lambda c: c.get("/share/view")),
        (
            "dicomweb",
            "portal images",
            lambda c: c.get(
                f"/portal/dicomweb/studies/{study}/series/1.2.3/instances/1.2.4/thumbnail"
            ),
        ),
        (
            "admin",
            "enroll",
            lambda c: c.post(
                "/admin/enrollments",
                json={"patient": patient.fhir_id, "birthDate": "1961-04-12"},
                headers=bearer(admin),
            ),
        ),
    ]


def assert_unavailable(area: str, name: str, response: Any) -> None:
    where = f"{area} {name}: {response.status_code} {response.text[:300]}"
    assert response.status_code == 503, where
    assert response.headers["retry-after"].isdigit(), where
    media = response.headers.get("content-type", "")
    if area == "fhir":
        outcome = response.json()
        assert outcome["resourceType"] == "OperationOutcome", where
        assert outcome["issue"][0]["code"] == "transient", where
    elif area == "dicomweb":
        assert media.startswith("text/plain") and response.headers["warning"].startswith("299"), (
            where
        )
    elif area in ("oauth", "admin"):
        assert response.json()["error"] == "temporarily_unavailable", where
        assert response.headers["cache-control"] == "no-store", where
    else:
        assert media.startswith("text/html"), where
        assert "try again" in response.text.lower(), where
    assert "Traceback" not in response.text and "sqlalchemy" not in response.text.lower(), where


@pytest.mark.slow
@pytest.mark.parametrize("database", DATABASES)
def test_every_area_answers_503_while_the_database_is_away(
    database: str, tmp_path: Path, embedded_data_dir: Path
) -> None:
    with outage_harness(database, tmp_path, embedded_data_dir) as (harness, switch):
        walk = _walk(harness)
        switch(False)
        for area, name, ask in walk:
            assert_unavailable(area, name, ask(harness.client))
        ready = harness.client.get("/readyz")
        assert ready.status_code == 503 and ready.json()["checks"]["database"] != "ok"
        assert harness.client.get("/fhir/metadata").status_code == 200  # needs no database
        switch(True)
        assert harness.client.get("/readyz").status_code == 200
        answers = {name: ask(harness.client).status_code for _, name, ask in walk[:5]}
        assert answers["search"] == 200 and answers["read"] == 200, answers
