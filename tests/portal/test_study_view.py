"""The portal's study pages: images one at a time, reports, the patient's own download,
held studies, and the image routes' own gate."""

from __future__ import annotations

import re
import zipfile
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from io import BytesIO
from pathlib import Path

import pytest

from gateway.auth import jacket
from tests.auth.test_oauth_api import Harness
from tests.portal.support import Clock, Patient, enroll, portal_harness, portal_sign_in


@pytest.fixture(scope="module")
def harness(tmp_path_factory: pytest.TempPathFactory, embedded_data_dir: Path) -> Iterator[Harness]:
    with portal_harness(
        tmp_path_factory.mktemp("study-view"), embedded_data_dir, Clock(), release_delay_hours=72
    ) as made:
        yield made


@pytest.fixture(scope="module")
def patient(harness: Harness) -> Patient:
    made = enroll(harness)
    assert portal_sign_in(harness.client, made.code) == 303
    return made


@pytest.fixture(scope="module")
def studies(harness: Harness, patient: Patient) -> list[jacket.JacketStudy]:
    made = harness.call(harness.services.records.jackets.of, patient.fhir_id)
    return jacket.lines(made)


def test_a_reported_study_shows_its_report_and_images(
    harness: Harness, patient: Patient, studies: list[jacket.JacketStudy]
) -> None:
    client = harness.client
    reported = next(s for s in studies if s.has_report)
    home = client.get("/portal/")
    assert f'/portal/studies/{reported.uid}"' in home.text
    page = client.get(f"/portal/studies/{reported.uid}")
    assert page.status_code == 200
    assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
    reports = re.findall(
        r'<a href="https://gateway.example(/portal/dicomweb/[^"]+rendered[^"]*)"', page.text
    )
    assert reports
    report = client.get(reports[0].replace("&amp;", "&"))
    assert report.status_code == 200
    assert report.headers["content-type"].split(";")[0] in ("text/html", "application/pdf")
    shown = re.search(
        r'src="https://gateway.example(/portal/dicomweb/[^"]+/rendered[^"]*)"', page.text
    )
    assert shown
    image = client.get(shown.group(1).replace("&amp;", "&"))
    assert image.status_code == 200 and image.content[:2] == b"\xff\xd8"  # a JPEG
    # Paging through a series: the next image is another instance.
    series_links = re.findall(r'href="[^"]*\?series=([0-9.]+)&amp;image=2"', page.text)
    if series_links:
        second = client.get(f"/portal/studies/{reported.uid}?series={series_links[0]}&image=2")
        assert "Image 2 of" in second.text


def test_the_patient_downloads_their_own_study(
    harness: Harness, studies: list[jacket.JacketStudy]
) -> None:
    answer = harness.client.get(f"/portal/studies/{studies[-1].uid}/download")
    assert answer.status_code == 200 and answer.headers["content-type"] == "application/zip"
    names = zipfile.ZipFile(BytesIO(answer.content)).namelist()
    assert names[0] == "README.txt" and any(n.endswith(".dcm") for n in names)


def test_someone_elses_study_is_not_found(harness: Harness) -> None:
    client = harness.client
    assert client.get("/portal/studies/1.2.3.4.5").status_code == 404
    assert client.get("/portal/studies/1.2.3.4.5/download").status_code == 404


def test_a_held_study_says_when_it_will_be_available(
    harness: Harness,
    patient: Patient,
    studies: list[jacket.JacketStudy],
) -> None:
    newest = max((s for s in studies if s.date), key=lambda s: s.date)
    clock = harness.services.clock
    assert isinstance(clock, Clock)
    before = clock.now
    clock.now = datetime.fromisoformat(newest.date).replace(tzinfo=UTC) + timedelta(days=1)
    try:
        page = harness.client.get(f"/portal/studies/{newest.uid}")
        assert page.status_code == 403 and "will be available to you from" in page.text
        assert "Available to you from" in harness.client.get("/portal/").text
        held_image = f"/portal/dicomweb/studies/{newest.uid}/series/1.2/instances/1.2.3/thumbnail"
        # The patient's own: told when, as on the study page (an app would get a 404).
        image = harness.client.get(held_image)
        assert image.status_code == 403 and "available to you" in image.text
        assert harness.client.get(f"/portal/studies/{newest.uid}/download").status_code == 404
    finally:
        clock.now = before


def test_the_image_routes_need_a_portal_session(
    harness: Harness, studies: list[jacket.JacketStudy]
) -> None:
    jar = dict(harness.client.cookies)
    harness.client.cookies.clear()
    try:
        path = f"/portal/dicomweb/studies/{studies[0].uid}/series/1.2/instances/1.2.3/thumbnail"
        assert harness.client.get(path).status_code == 401
    finally:
        harness.client.cookies.update(jar)
