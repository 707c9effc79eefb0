"""Reports need a DocumentReference permission on every route that returns their content.

A patient who unticks "reports" on the consent page gives the app
``patient/ImagingStudy.rs`` alone. Its images are the app's; the report text
(an SR's content, a PDF's bytes) is not, whether asked for as a FHIR
DocumentReference or through DICOMweb: rendered, metadata, retrieval at any
level, bulk data, or a QIDO ``includefield`` (issue 10, item 5).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pydicom import dcmread

from fixtures.generate import BENCH_PATIENT_ID
from tests.auth.test_oauth_api import Harness, bearer
from tests.auth.test_oauth_api import harness as harness

ENCAPSULATED_DOCUMENT = "00420011"
CONTENT_SEQUENCE = "0040A730"


def _documents(files: list[Path], modality: str) -> list[dict[str, str]]:
    found = []
    for path in files:
        ds = dcmread(path, stop_before_pixels=True)
        if ds.PatientID == BENCH_PATIENT_ID and ds.Modality == modality:
            found.append(
                {
                    "study": str(ds.StudyInstanceUID),
                    "series": str(ds.SeriesInstanceUID),
                    "instance": str(ds.SOPInstanceUID),
                }
            )
    return found


@pytest.fixture(scope="module")
def tokens(harness: Harness) -> dict[str, dict[str, str]]:
    system = harness.backend_token("system/*.rs")
    patient = harness.client.get(
        f"/fhir/Patient?identifier={BENCH_PATIENT_ID}", headers=bearer(system)
    ).json()["entry"][0]["resource"]["id"]
    images_only = harness.patient_token(patient, "launch/patient patient/ImagingStudy.rs")
    with_reports = harness.patient_token(
        patient, "launch/patient patient/ImagingStudy.rs patient/DocumentReference.rs"
    )
    return {"images": bearer(images_only), "reports": bearer(with_reports)}


def _paths(sr: dict[str, str], pdf: dict[str, str]) -> list[str]:
    instance = "/dicomweb/studies/{study}/series/{series}/instances/{instance}"
    return [
        (instance + "/rendered?accept=text/html").format(**sr),
        (instance + "/rendered?accept=text/plain").format(**sr),
        (instance + "/rendered").format(**sr),
        (instance + "/metadata").format(**sr),
        instance.format(**sr),
        "/dicomweb/studies/{study}/series/{series}".format(**sr),
        "/dicomweb/studies/{study}/series/{series}/metadata".format(**sr),
        "/dicomweb/studies/{study}".format(**sr),
        "/dicomweb/studies/{study}/metadata".format(**sr),
        (instance + "/rendered?accept=application/pdf").format(**pdf),
        (instance + f"/bulk/{ENCAPSULATED_DOCUMENT}").format(**pdf),
        f"/fhir/DocumentReference/{sr['instance']}",
        f"/fhir/Binary/{sr['instance']}",
    ]


def test_without_the_permission_no_report_content_comes_back(
    harness: Harness, tokens: dict[str, dict[str, str]], fixture_files: list[Path]
) -> None:
    sr, pdf = _documents(fixture_files, "SR")[0], _documents(fixture_files, "DOC")[0]
    for path in _paths(sr, pdf):
        denied = harness.client.get(path, headers=tokens["images"])
        assert denied.status_code == 403, (path, denied.status_code, denied.text[:200])
        allowed = harness.client.get(path, headers=tokens["reports"])
        assert allowed.status_code == 200, (path, allowed.status_code, allowed.text[:200])


def test_the_images_of_a_reported_study_stay_the_apps(
    harness: Harness, tokens: dict[str, dict[str, str]], fixture_files: list[Path]
) -> None:
    sr = _documents(fixture_files, "SR")[0]
    series = harness.client.get(
        f"/dicomweb/studies/{sr['study']}/series?includefield=Modality", headers=tokens["images"]
    ).json()
    images = [
        s["0020000E"]["Value"][0]
        for s in series
        if s["00080060"]["Value"][0] not in ("SR", "KO", "DOC")
    ]
    assert images
    for uid in images:
        path = f"/dicomweb/studies/{sr['study']}/series/{uid}"
        assert harness.client.get(path, headers=tokens["images"]).status_code == 200, path
        metadata = harness.client.get(f"{path}/metadata", headers=tokens["images"])
        assert metadata.status_code == 200


def test_qido_never_carries_report_text_without_the_permission(
    harness: Harness, tokens: dict[str, dict[str, str]], fixture_files: list[Path]
) -> None:
    sr = _documents(fixture_files, "SR")[0]

    def listed(headers: dict[str, str]) -> list[dict[str, Any]]:
        found = harness.client.get(
            f"/dicomweb/studies/{sr['study']}/instances?includefield=all"
            f"&includefield={CONTENT_SEQUENCE}",
            headers=headers,
        )
        assert found.status_code == 200
        return [i for i in found.json() if i["00080018"]["Value"][0] == sr["instance"]]

    assert listed(tokens["images"]) and all(
        CONTENT_SEQUENCE not in item for item in listed(tokens["images"])
    )
