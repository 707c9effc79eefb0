"""Real HTTP: `gateway serve` under uvicorn, driven by FHIR clients we did not write."""

from __future__ import annotations

import httpx
import pytest
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
