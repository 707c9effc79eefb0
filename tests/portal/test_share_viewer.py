"""A share's recipient opens the shared studies in OHIF (``/share/ohif/``), through a
capability URL: limited to the share's studies and to reading them, short-lived and
renewed only while the share session lasts, ended by the share's withdrawal or
expiry at its next request. No browser here (``tests/apps/test_share_ohif_browser.py``
has one); OHIF's ``dist/`` is a stand-in, as in ``tests/apps/test_ohif_serving.py``."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from sqlalchemy import select

from gateway.apps.routes import FHIR_CLIENT, OHIF_DIST
from gateway.store.models import AuditRecord
from tests.apps.test_ohif_serving import INDEX
from tests.auth.test_oauth_api import Harness
from tests.portal.support import (
    DATABASES,
    Clock,
    Patient,
    create_share,
    enroll,
    enter_pin,
    portal_harness,
    portal_sign_in,
    shareable,
)

AS_STORED = {"Accept": "multipart/related; type=application/dicom; transfer-syntax=*"}
LIFETIME = 600  # GATEWAY_CAPABILITY_LIFETIME_SECONDS here


def stand_in_apps(folder: Path) -> Path:
    dist = folder / OHIF_DIST
    dist.mkdir(parents=True)
    (dist / "index.html").write_text(INDEX)
    (folder / FHIR_CLIENT).mkdir(parents=True)
    (folder / FHIR_CLIENT / "fhir-client.min.js").write_text("window.FHIR={}")
    (folder / "ohif").mkdir()
    for name in ("smart-auth.js", "share-viewer.js"):
        real = Path(__file__).parents[2] / "smart_apps" / "ohif" / name
        (folder / "ohif" / name).write_text(real.read_text())
    return folder


@pytest.fixture(scope="module")
def clock() -> Clock:
    return Clock()


@pytest.fixture(scope="module", params=DATABASES)
def harness(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    embedded_data_dir: Path,
    clock: Clock,
) -> Iterator[Harness]:
    workdir = tmp_path_factory.mktemp("share-viewer")
    apps = stand_in_apps(workdir / "smart_apps")
    with portal_harness(
        workdir,
        embedded_data_dir,
        clock,
        request.param,
        apps_dir=apps,
        capability_lifetime_seconds=LIFETIME,
    ) as made:
        yield made


@pytest.fixture(scope="module")
def patient(harness: Harness) -> Patient:
    return enroll(harness)


@pytest.fixture
def signed_in(harness: Harness, patient: Patient) -> Harness:
    harness.client.cookies.clear()
    assert portal_sign_in(harness.client, patient.code) == 303
    return harness


def make_share(harness: Harness, studies: list[str], days: str = "7") -> tuple[str, str, str]:
    """The patient shares ``studies``: (link, PIN, share id)."""
    client = harness.client

    def listed() -> set[str]:
        return set(
            re.findall(r'/portal/shares/([0-9a-f]+)/revoke"', client.get("/portal/shares").text)
        )

    before = listed()
    status, page, link, pin = create_share(client, studies, days=days, label="Viewer")
    assert status == 201 and link and pin, page
    (share_id,) = listed() - before
    return link, pin, share_id


def open_viewer(harness: Harness, studies: list[str], days: str = "7") -> dict[str, Any]:
    """The patient shares ``studies``; the recipient opens the link with its PIN and then
    the viewer. What the viewer's config holds, and the share's id."""
    return open_link(harness, *make_share(harness, studies, days))


def open_link(harness: Harness, link: str, pin: str, share_id: str) -> dict[str, Any]:
    client = harness.client
    assert enter_pin(client, link, pin).status_code == 303
    overview = client.get("/share/view")
    assert 'href="https://gateway.example/share/ohif/">Open in viewer</a>' in overview.text
    page = client.get("/share/ohif/")
    assert page.status_code == 200 and page.headers["referrer-policy"] == "no-referrer"
    assert '<script src="/share/ohif/share-viewer.js"></script>' in page.text
    assert '<script src="/share/ohif/app-config.js"></script>' in page.text
    assert "smart-auth.js" not in page.text and "fhir-client" not in page.text
    assert "script-src 'self' 'wasm-unsafe-eval'" in page.headers["content-security-policy"]
    # A viewer route answers the same page (a single-page app).
    assert client.get("/share/ohif/viewer?StudyInstanceUIDs=1.2.3").text == page.text
    config = client.get("/share/ohif/app-config.js", headers={"Sec-Fetch-Site": "same-origin"})
    assert config.status_code == 200
    assert config.headers["cache-control"] == "no-store"
    assert config.headers["cross-origin-resource-policy"] == "same-origin"
    session = json.loads(re.search(r"window.gatewayShareSession = (.*);\n", config.text)[1])  # type: ignore[index]
    root = re.search(r'"qidoRoot": "([^"]+)"', config.text)[1]  # type: ignore[index]
    assert re.search(r'"wadoRoot": "([^"]+)"', config.text)[1] == root  # type: ignore[index]
    assert '"routerBasename": "/share/ohif"' in config.text
    assert root == f"https://gateway.example/dicomweb/cap/{session['capability']}"
    return {**session, "base": urlsplit(root).path, "share": share_id}


def renew(harness: Harness, viewer: dict[str, Any], csrf: str | None = None) -> Any:
    return harness.client.post(
        "/share/ohif/renew",
        json={"capability": viewer["capability"]},
        headers={"X-CSRF-Token": csrf if csrf is not None else viewer["csrf"]},
    )


def uids(answer: Any) -> set[str]:
    assert answer.status_code in (200, 204), answer.text
    return (
        {s["0020000D"]["Value"][0] for s in answer.json()} if answer.status_code == 200 else set()
    )


def test_the_viewer_sees_exactly_the_shared_studies(signed_in: Harness) -> None:
    client = signed_in.client
    studies = shareable(client)
    shared, others = studies[:2], studies[2:]
    viewer = open_viewer(signed_in, shared)
    base = viewer["base"]
    # QIDO on the capability root: the shared studies, nothing else, whatever is asked.
    assert uids(client.get(f"{base}/studies")) == set(shared)
    assert uids(client.get(f"{base}/studies?limit=100&offset=0&includefield=00081030")) == set(
        shared
    )
    assert uids(client.get(f"{base}/studies?StudyInstanceUID={others[0]}")) == set()
    assert uids(client.get(f"{base}/studies?PatientID=*")) == set(shared)
    # WADO: the shared studies are read without any token; the patient's other studies
    # (and unknown ones) answer 404, by every retrieval.
    series = client.get(f"{base}/studies/{shared[0]}/series")
    assert series.status_code == 200
    assert client.get(f"{base}/studies/{shared[0]}/metadata").status_code == 200
    whole = client.get(f"{base}/studies/{shared[1]}", headers=AS_STORED)
    assert whole.status_code == 200 and b"DICM" in whole.content
    for other in (others[0], others[-1], "2.25.1"):
        assert client.get(f"{base}/studies/{other}/metadata").status_code == 404
        # A QIDO search inside it finds nothing, as inside a study that does not exist.
        assert client.get(f"{base}/studies/{other}/series").status_code == 204
        assert client.get(f"{base}/studies/{other}", headers=AS_STORED).status_code == 404
    # Read-only: no STOW through it.
    stored = client.post(
        f"{base}/studies", content=b"x", headers={"Content-Type": "multipart/related"}
    )
    assert stored.status_code in (404, 405)
    assert client.get(f"{base}/studies").headers["referrer-policy"] == "no-referrer"
    # The trail names the share's recipient for what the viewer read.
    records = signed_in.call(_audit_of, signed_in, viewer["share"])
    assert any(r.category == "dicomweb" and r.outcome == 200 for r in records), records
    assert any(r.action == "viewer" and "opened in the viewer" in r.detail for r in records)
    # The patient's Activity page says it in words.
    assert "Opened the shared studies in the viewer" in client.get("/portal/activity").text


async def _audit_of(harness: Harness, share_id: str) -> list[AuditRecord]:
    async with harness.services.database.sessions() as session:
        found = await session.scalars(
            select(AuditRecord).where(AuditRecord.user == f"share/{share_id}")
        )
        return list(found)


def test_the_config_is_for_this_site_and_this_session_only(signed_in: Harness) -> None:
    client = signed_in.client
    open_viewer(signed_in, shareable(client)[:1])
    cross = client.get("/share/ohif/app-config.js", headers={"Sec-Fetch-Site": "cross-site"})
    assert cross.status_code == 403 and "capability" not in cross.text
    client.cookies.delete("gateway_share", path="/share")
    assert client.get("/share/ohif/app-config.js").status_code == 401
    assert client.get("/share/ohif/").status_code == 401
    assert client.post("/share/ohif/renew", json={"capability": "x"}).status_code == 401


def test_the_capability_is_short_lived_and_renewed_only_while_the_session_lasts(
    signed_in: Harness, clock: Clock
) -> None:
    client = signed_in.client
    viewer = open_viewer(signed_in, shareable(client)[:1])
    base = viewer["base"]
    assert viewer["renewEvery"] == LIFETIME // 3
    # A renewal needs the page's CSRF token, and names a capability of this share.
    assert renew(signed_in, viewer, csrf="forged").status_code == 403
    assert renew(signed_in, {**viewer, "capability": "unknown"}).status_code == 404
    moved = 0
    try:
        for _ in range(4):  # four renewals, each before the end: it holds past one lifetime
            clock.advance(seconds=LIFETIME - 60)
            moved += LIFETIME - 60
            assert renew(signed_in, viewer).status_code == 200
            assert client.get(f"{base}/studies").status_code == 200
        # Not renewed: it ends after its lifetime.
        clock.advance(seconds=LIFETIME + 1)
        moved += LIFETIME + 1
        assert client.get(f"{base}/studies").status_code == 404
        assert renew(signed_in, viewer).status_code == 404
    finally:
        clock.advance(seconds=-moved)


def test_withdrawing_the_share_ends_the_viewer_at_its_next_request(
    signed_in: Harness, patient: Patient
) -> None:
    client = signed_in.client
    viewer = open_viewer(signed_in, shareable(client)[:2])
    base = viewer["base"]
    assert client.get(f"{base}/studies").status_code == 200
    assert signed_in.call(signed_in.services.shares.revoke, viewer["share"], patient.account_id)
    assert client.get(f"{base}/studies").status_code == 404
    assert renew(signed_in, viewer).status_code == 401
    ended = client.get("/share/ohif/")
    assert ended.status_code == 401 and "Your access to these studies has ended" in ended.text
    assert client.get("/share/view").status_code == 401


def test_the_capability_never_outlives_the_share(signed_in: Harness, clock: Clock) -> None:
    """Opened two minutes before the share ends, the viewer's capability (and any
    renewal of it) ends with the share, not a lifetime later."""
    client = signed_in.client
    link, pin, share_id = make_share(signed_in, shareable(client)[:1], days="1")
    moved = 0
    try:
        clock.advance(days=1, seconds=-120)
        moved = 86400 - 120
        viewer = open_link(signed_in, link, pin, share_id)
        answer = renew(signed_in, viewer)
        assert answer.status_code == 200
        share_ends = clock.now + timedelta(seconds=120)
        assert abs(datetime.fromisoformat(answer.json()["expires_at"]) - share_ends) < timedelta(
            seconds=1
        )
        assert client.get(f"{viewer['base']}/studies").status_code == 200
        clock.advance(seconds=121)
        moved += 121
        assert client.get(f"{viewer['base']}/studies").status_code == 404
        assert renew(signed_in, viewer).status_code == 401
    finally:
        clock.advance(seconds=-moved)
