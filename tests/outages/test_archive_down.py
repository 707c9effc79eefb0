"""The PACS cannot be reached: 503 + Retry-After whoever asks and wherever the PACS is asked.

The patient, their app, a physician and a share recipient get their
credentials from a gateway over the embedded store; then the same database
is served by a gateway whose PACS is a closed port. Patient tokens, the
portal, share pages and the consent page ask the PACS for the patient's
jacket before anything else, so they are where a 500 used to come from.
"""

from __future__ import annotations

import socket
from pathlib import Path
from urllib.parse import urlencode

import pytest
from starlette.testclient import TestClient

from gateway.app import create_app
from gateway.auth.clients import ClientKind
from gateway.services import Services
from tests.auth.test_authorize import PASSPHRASE, REDIRECT, authorize_params, hidden, pkce
from tests.auth.test_oauth_api import bearer
from tests.conftest import make_settings
from tests.outages.test_database_down import THUMBNAIL, assert_unavailable
from tests.portal.support import (
    BASE,
    Clock,
    create_share,
    enroll,
    enter_pin,
    portal_harness,
    portal_sign_in,
    shareable,
)


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_no_token_type_page_or_launch_gets_a_500_while_the_pacs_is_down(
    tmp_path: Path, embedded_data_dir: Path
) -> None:
    clock = Clock()
    with portal_harness(tmp_path, embedded_data_dir, clock) as harness:
        patient = enroll(harness)
        tokens = {
            "patient": harness.patient_token(patient.fhir_id, "launch/patient patient/*.rs"),
            "practitioner": harness.practitioner_token(),
            "system": harness.backend_token(),
        }
        app = harness.call(
            harness.services.auth.clients.add,
            name="Viewer",
            kind=ClientKind.public,
            redirect_uris=[REDIRECT],
        )
        assert portal_sign_in(harness.client, patient.code) == 303
        studies = shareable(harness.client)
        _, _, link, pin = create_share(harness.client, studies[:1], days="7")
        assert link and pin
        study = studies[0]
        cookies = dict(harness.client.cookies.items())

    down = make_settings(
        embedded_data_dir,
        auth_required=True,
        public_url=BASE,
        release_delay_hours=0,
        database_url=f"sqlite+aiosqlite:///{tmp_path / 'g.db'}",
        dicomweb_url=f"http://127.0.0.1:{closed_port()}/dicom-web",
    )
    # Past the study index's freshness bound, so that every page needs the PACS
    # (inside it, lists are answered from the index: tests/records/test_study_index.py).
    clock.advance(seconds=down.index_freshness_seconds + 1)
    services = Services.build(down, clock=clock)
    with TestClient(create_app(down, services=services), base_url=BASE) as client:
        for holder, token in tokens.items():
            for area, path in [
                ("fhir", "/fhir/ImagingStudy"),
                ("fhir", f"/fhir/ImagingStudy/{study}"),
                ("fhir", "/fhir/DocumentReference"),
                ("dicomweb", "/dicomweb/studies"),
                ("dicomweb", f"/dicomweb/studies/{study}"),
                ("dicomweb", f"/dicomweb/studies/{study}/metadata"),
            ]:
                assert_unavailable(
                    area, f"{holder} {path}", client.get(path, headers=bearer(token))
                )

        for name, value in cookies.items():
            client.cookies.set(name, value)
        for path in [
            "/portal/",
            f"/portal/studies/{study}",
            f"/portal/studies/{study}/download",
            "/portal/shares",
        ]:
            assert_unavailable("page", path, client.get(path))
        assert_unavailable(
            "dicomweb",
            "portal images",
            client.get(f"/portal/dicomweb{THUMBNAIL.format(study)}"),
        )

        client.cookies.clear()
        assert enter_pin(client, link, pin).status_code == 303
        for path in ["/share/view", "/share/view/download", f"/share/view/studies/{study}"]:
            assert_unavailable("page", path, client.get(path))

        # A new launch: sign-in works (the database is up); the consent page needs the jacket.
        client.cookies.clear()
        _, challenge = pkce()
        started = client.get(
            "/oauth/authorize?" + urlencode(authorize_params(app.client.client_id, challenge)),
            follow_redirects=False,
        )
        assert started.status_code == 303, started.text
        page = client.get(started.headers["location"]).text
        signed = client.post(
            "/oauth/signin",
            data={
                "csrf_token": hidden(page, "csrf_token"),
                "request": hidden(page, "request"),
                "mode": "patient",
                "access_code": patient.code,
                "passphrase": PASSPHRASE,
            },
            follow_redirects=False,
        )
        assert signed.status_code == 303, signed.text
        assert "/oauth/consent?" in signed.headers["location"]
        assert_unavailable("oauth-page", "consent", client.get(signed.headers["location"]))


@pytest.mark.parametrize("path", ["/fhir/metadata/", "/fhir/metadata"])
def test_metadata_answers_with_or_without_a_trailing_slash(
    path: str, embedded_gateway: object
) -> None:
    response = embedded_gateway.client.get(path)  # type: ignore[attr-defined]
    assert response.status_code == 200, response.text
    assert response.json()["resourceType"] == "CapabilityStatement"


def test_a_known_type_with_a_trailing_slash_is_a_404_outcome_not_a_405(
    embedded_gateway: object,
) -> None:
    response = embedded_gateway.client.get("/fhir/ImagingStudy/")  # type: ignore[attr-defined]
    assert response.status_code == 404
    assert response.json()["resourceType"] == "OperationOutcome"
    deleted = embedded_gateway.client.delete("/fhir/ImagingStudy/1.2.3")  # type: ignore[attr-defined]
    assert deleted.status_code == 405
