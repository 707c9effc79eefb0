"""What each QIDO call of an ImagingStudy search costs on Orthanc, measured alone.

    .venv/bin/python bench/orthanc_qido_cost.py [--calls 60]

Explains the cold-path figure of bench/fhir_search.py: the study-, series- and
instance-level queries for the 10-study benchmark patient, with and without
the attributes the FHIR mapping asks for.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fixtures.generate import BENCH_PATIENT_ID, write_fixtures  # noqa: E402
from gateway.dicomweb.dicomjson import INSTANCE_FIELDS, SERIES_FIELDS, STUDY_FIELDS  # noqa: E402
from tests.support.orthanc import run_orthanc, upload_files  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=60)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        files = write_fixtures(Path(scratch) / "fixtures")
        with run_orthanc(Path(scratch) / "orthanc") as orthanc, httpx.Client() as client:
            upload_files(orthanc, files)
            patient = {"PatientID": BENCH_PATIENT_ID}
            probes = [
                ("studies", {}),
                ("studies", {"includefield": list(STUDY_FIELDS)}),
                ("series", {}),
                ("series", {"includefield": list(SERIES_FIELDS)}),
                ("instances", {}),
                ("instances", {"includefield": list(INSTANCE_FIELDS)}),
            ]
            print("| call | p50 ms | results |")
            print("| --- | --- | --- |")
            for level, extra in probes:
                samples = []
                for _ in range(args.calls + 10):
                    started = time.perf_counter()
                    response = client.get(
                        f"{orthanc.dicomweb_url}/{level}",
                        params={**patient, **extra},
                        headers={"Accept": "application/dicom+json"},
                    )
                    response.raise_for_status()
                    samples.append((time.perf_counter() - started) * 1000)
                label = f"/{level}?PatientID=" + (" + includefield" if extra else "")
                median = statistics.median(samples[10:])
                print(f"| {label} | {median:.2f} | {len(response.json())} |")


if __name__ == "__main__":
    main()
