"""A study held back by the release delay is "not yet" only to those who would see it.

To an app the patient gave some studies, a held study answers exactly as a study
that does not exist (404), so it learns nothing of it; the consent page shows it
as "available from <date>", with no box to tick (issue 10, item 6). An app given
all the patient's studies is told when it arrives.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

from fixtures.generate import BENCH_PATIENT_ID
from gateway.auth.clients import ClientKind
from tests.auth.test_authorize import (
    REDIRECT,
    authorize_params,
    follow_to_consent,
    hidden,
    pkce,
    redeem,
)
from tests.auth.test_oauth_api import Harness, bearer
from tests.portal.support import DATABASES, Clock, portal_harness

UNKNOWN = "2.25.1234567890123456789"


@pytest.fixture(scope="module", params=DATABASES)
def held(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    embedded_data_dir: Path,
) -> Iterator[tuple[Harness, dict[str, str], str]]:
    """A gateway whose clock stands one hour after the patient's newest study."""
    clock = Clock()
    workdir = tmp_path_factory.mktemp("held")
    with portal_harness(
        workdir, embedded_data_dir, clock, request.param, release_delay_hours=72
    ) as harness:
        system = bearer(harness.backend_token("system/*.rs"))
        patient = harness.client.get(
            f"/fhir/Patient?identifier={BENCH_PATIENT_ID}", headers=system
        ).json()["entry"][0]["resource"]["id"]
        newest = harness.client.get(
            f"/fhir/ImagingStudy?patient={patient}&_sort=-started&_count=1", headers=system
        ).json()["entry"][0]["resource"]
        clock.now = datetime.fromisoformat(newest["started"]) + timedelta(hours=1)
        account = harness.call(
            harness.services.auth.accounts.enroll_patient, patient, "1961-04-12", "Jane Doe"
        )
        yield harness, {"code": account.login, "fhir_id": patient}, newest["id"]


def _token(harness: Harness, patient: dict[str, str], studies: list[str] | None) -> dict[str, str]:
    """Through the consent page: all studies, or the ``studies`` ticked."""
    app = harness.call(
        harness.services.auth.clients.add,
        name="Viewer",
        kind=ClientKind.public,
        redirect_uris=[REDIRECT],
    ).client.client_id
    verifier, challenge = pkce()
    params = authorize_params(
        app, challenge, scope="launch/patient patient/ImagingStudy.rs patient/DocumentReference.rs"
    )
    page = follow_to_consent(harness, params, patient)
    answer = harness.client.post(
        "/oauth/consent",
        data={
            "csrf_token": hidden(page, "csrf_token"),
            "request": hidden(page, "request"),
            "decision": "approve",
            "scope": re.findall(r'name="scope" value="([^"]*)"', page),
            "studies": "all" if studies is None else "selected",
            "study": studies or [],
        },
        follow_redirects=False,
    )
    code = parse_qs(urlsplit(answer.headers["location"]).query)["code"][0]
    token = redeem(harness, code, verifier, app)
    assert token.status_code == 200, token.text
    return bearer(token.json())


def _consent_page(harness: Harness, patient: dict[str, str]) -> str:
    app = harness.call(
        harness.services.auth.clients.add,
        name="Look",
        kind=ClientKind.public,
        redirect_uris=[REDIRECT],
    ).client.client_id
    return follow_to_consent(harness, authorize_params(app, pkce()[1]), patient)


def test_the_consent_page_offers_no_box_for_a_held_study(held) -> None:  # type: ignore[no-untyped-def]
    harness, patient, study = held
    page = _consent_page(harness, patient)
    tickable = re.findall(r'name="study" value="([^"]*)"', page)
    assert tickable and study not in tickable
    assert "Available from" in page


def test_to_an_app_given_other_studies_a_held_study_is_unknown(held) -> None:  # type: ignore[no-untyped-def]
    harness, patient, study = held
    page = _consent_page(harness, patient)
    chosen = re.findall(r'name="study" value="([^"]*)"', page)[:1]
    headers = _token(harness, patient, chosen)
    for path in (
        "/fhir/ImagingStudy/{uid}",
        "/dicomweb/studies/{uid}/metadata",
        "/dicomweb/studies/{uid}",
    ):
        on_held = harness.client.get(path.format(uid=study), headers=headers)
        on_unknown = harness.client.get(path.format(uid=UNKNOWN), headers=headers)
        assert on_held.status_code == on_unknown.status_code == 404, path
        assert on_held.text.replace(study, UNKNOWN) == on_unknown.text, path


def test_an_app_given_all_studies_is_told_when(held) -> None:  # type: ignore[no-untyped-def]
    harness, patient, study = held
    headers = _token(harness, patient, None)
    read = harness.client.get(f"/fhir/ImagingStudy/{study}", headers=headers)
    assert read.status_code == 403 and "available to you" in read.text
