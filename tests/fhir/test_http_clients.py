"""Real HTTP: `gateway serve` under uvicorn, driven by FHIR clients we did not write."""

from __future__ import annotations

import httpx
import pytest
from dicomweb_client.api import DICOMwebClient
from fhirpy import SyncFHIRClient

from fixtures.generate import BENCH_PATIENT_ID

pytestmark = pytest.mark.slow


def test_fhirpy_searches_studies_of_a_patient(served: str) -> None:
    client = SyncFHIRClient(f"{served}/fhir")
    patients = client.resources("Patient").search(identifier=BENCH_PATIENT_ID).fetch()
    assert len(patients) == 1
    studies = client.resources("ImagingStudy").search(patient=patients[0].id).fetch_all()
    assert len(studies) == 10
    assert all(s["subject"]["reference"] == f"Patient/{patients[0].id}" for s in studies)
    first = client.reference("ImagingStudy", studies[0].id).to_resource()
    assert first["id"] == studies[0].id


def test_errors_over_real_http_are_outcomes(served: str) -> None:
    response = httpx.get(f"{served}/fhir/ImagingStudy", params={"started": "garbage"})
    assert response.status_code == 400
    assert response.json()["resourceType"] == "OperationOutcome"
    assert "Traceback" not in response.text


@pytest.fixture(params=["embedded", pytest.param("orthanc", marks=pytest.mark.orthanc)])
def served_url(request: pytest.FixtureRequest) -> str:
    return str(
        request.getfixturevalue("served" if request.param == "embedded" else "served_orthanc")
    )


def test_following_the_endpoint_retrieves_what_the_study_lists(served_url: str) -> None:
    """ImagingStudy -> Endpoint.address -> dicomweb-client: every listed instance arrives."""
    client = SyncFHIRClient(f"{served_url}/fhir")
    patient = client.resources("Patient").search(identifier=BENCH_PATIENT_ID).fetch()[0]
    study = client.resources("ImagingStudy").search(patient=patient.id, _count=1).fetch()[0]
    # fhirpy resolves server references, not contained ones ("#wado-rs", listed first):
    # follow the shared Endpoint, and check the contained one names the same service.
    shared = next(e for e in study["endpoint"] if not e["reference"].startswith("#"))
    endpoint = client.reference(reference=shared["reference"]).to_resource()
    assert endpoint["connectionType"]["code"] == "dicom-wado-rs"
    assert study["contained"][0]["address"] == endpoint["address"]
    dicomweb = DICOMwebClient(url=endpoint["address"])
    study_uid = study["identifier"][0]["value"].removeprefix("urn:oid:")
    listed = {
        (series["uid"], instance["uid"])
        for series in study["series"]
        for instance in series["instance"]
    }
    retrieved = dicomweb.retrieve_study(study_uid)
    assert {(str(d.SeriesInstanceUID), str(d.SOPInstanceUID)) for d in retrieved} == listed
    series = study["series"][0]
    instance = dicomweb.retrieve_instance(study_uid, series["uid"], series["instance"][0]["uid"])
    assert str(instance.SOPClassUID) == series["instance"][0]["sopClass"]["code"].removeprefix(
        "urn:oid:"
    )


def test_document_reference_over_real_http(served_url: str) -> None:
    client = SyncFHIRClient(f"{served_url}/fhir")
    patient = client.resources("Patient").search(identifier=BENCH_PATIENT_ID).fetch()[0]
    documents = client.resources("DocumentReference").search(patient=patient.id).fetch_all()
    assert documents
    pdfs = [
        d for d in documents if d["content"][0]["attachment"]["contentType"] == "application/pdf"
    ]
    reports = [d for d in documents if d["content"][0]["attachment"]["contentType"] == "text/html"]
    for document in pdfs[:1] + reports[:1]:
        attachment = document["content"][0]["attachment"]
        response = httpx.get(attachment["url"])
        assert response.status_code == 200
        assert response.headers["content-type"].startswith(attachment["contentType"])
        assert len(response.content) == attachment["size"]
