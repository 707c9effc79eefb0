"""Real HTTP: `gateway serve` under uvicorn, driven by FHIR clients we did not write."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fhirpy import SyncFHIRClient

from fixtures.generate import BENCH_PATIENT_ID

pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def served(embedded_data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    env.update(
        GATEWAY_DATA_DIR=str(embedded_data_dir),
        GATEWAY_DATABASE_URL=f"sqlite+aiosqlite:///{tmp_path_factory.mktemp('served') / 'g.db'}",
        GATEWAY_PUBLIC_URL=base,
    )
    process = subprocess.Popen(
        [sys.executable, "-m", "gateway", "serve", "--port", str(port), "--migrate"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        for _ in range(100):
            try:
                if httpx.get(f"{base}/readyz").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if process.poll() is not None:
                raise RuntimeError(process.stdout.read().decode() if process.stdout else "")
            time.sleep(0.1)
        yield base
    finally:
        process.terminate()
        process.wait(timeout=10)


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
