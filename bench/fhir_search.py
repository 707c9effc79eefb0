"""ImagingStudy search through the gateway vs the direct study-level QIDO, on one Orthanc.

    .venv/bin/python bench/fhir_search.py [--rounds 300] [--json out.json]

Starts a private Orthanc (Debian packages orthanc + orthanc-dicomweb), loads the
fixture studies with STOW-RS, starts `gateway serve` (uvicorn, one worker) in
front of it twice (one with the study detail cache off, one with the default
cache), then alternates, round after round, over keep-alive connections:
  gateway-cold: GET /fhir/ImagingStudy?patient={id}  cache off: 2 QIDO calls per search
  gateway-warm: the same, default cache: 1 QIDO call per search once seen
  direct:       GET /dicom-web/studies?PatientID={mrn}  (the study-level QIDO alone)
and reports p50/p95 of each and the ratios to direct (target: p50 ratio <= 2.0).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
from pydicom import dcmread

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fixtures.generate import BENCH_PATIENT_ID, write_fixtures  # noqa: E402
from gateway.dicomweb.http_upstream import HttpUpstream  # noqa: E402
from tests.support.orthanc import run_orthanc  # noqa: E402


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def percentile(samples: list[float], fraction: float) -> float:
    ordered = sorted(samples)
    index = min(len(ordered) - 1, max(0, round(fraction * (len(ordered) - 1))))
    return ordered[index]


async def load(dicomweb_url: str, files: list[Path]) -> None:
    upstream = HttpUpstream(dicomweb_url)
    datasets = [dcmread(p) for p in files]
    for start in range(0, len(datasets), 25):
        result = await upstream.store_instances(datasets[start : start + 25])
        if result.failed:
            raise SystemExit(f"STOW failed: {result.failed}")
    await upstream.aclose()


def start_gateway(
    dicomweb_url: str, workdir: Path, cache_seconds: float
) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    env.update(
        GATEWAY_DICOMWEB_URL=dicomweb_url,
        GATEWAY_DATA_DIR=str(workdir / f"var-{port}"),
        GATEWAY_STUDY_CACHE_SECONDS=str(cache_seconds),
        GATEWAY_PUBLIC_URL=base,
        GATEWAY_LOG_LEVEL="warning",
        # The relay is measured here; the token gate's cost is bench/token_check.py's.
        GATEWAY_AUTH_REQUIRED="false",
    )
    process = subprocess.Popen(
        [sys.executable, "-m", "gateway", "serve", "--port", str(port), "--migrate"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{base}/readyz", timeout=2).status_code == 200:
                return process, base
        except httpx.TransportError:
            time.sleep(0.1)
    process.kill()
    raise SystemExit("the gateway did not become ready")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=300, help="measured rounds (default 300)")
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as scratch:
        workdir = Path(scratch)
        files = write_fixtures(workdir / "fixtures")
        with run_orthanc(workdir / "orthanc") as orthanc:
            asyncio.run(load(orthanc.dicomweb_url, files))
            cold, cold_base = start_gateway(orthanc.dicomweb_url, workdir, 0)
            warm, warm_base = start_gateway(orthanc.dicomweb_url, workdir, 300)
            try:
                with httpx.Client(timeout=30) as client:
                    urls = {}
                    for name, base in (("gateway-cold", cold_base), ("gateway-warm", warm_base)):
                        found = client.get(
                            f"{base}/fhir/Patient", params={"identifier": BENCH_PATIENT_ID}
                        ).json()
                        patient = found["entry"][0]["resource"]["id"]
                        urls[name] = f"{base}/fhir/ImagingStudy?patient={patient}&_count=50"
                    direct_url = f"{orthanc.dicomweb_url}/studies?PatientID={BENCH_PATIENT_ID}"
                    check = client.get(urls["gateway-cold"]).json()
                    studies = len(check.get("entry", []))
                    instances = sum(
                        e["resource"].get("numberOfInstances", 0) for e in check["entry"]
                    )

                    def shape(bundle: dict) -> list[tuple[str, int, int]]:
                        return [
                            (r["id"], r["numberOfInstances"], len(r["series"]))
                            for r in (e["resource"] for e in bundle["entry"])
                        ]

                    assert shape(client.get(urls["gateway-warm"]).json()) == shape(check)
                    direct_count = len(
                        client.get(direct_url, headers={"Accept": "application/dicom+json"}).json()
                    )
                    assert studies == direct_count == 10, (studies, direct_count)
                    plan = [
                        ("direct", direct_url, {"Accept": "application/dicom+json"}),
                        ("gateway-cold", urls["gateway-cold"], {}),
                        ("gateway-warm", urls["gateway-warm"], {}),
                    ]
                    timings: dict[str, list[float]] = {name: [] for name, _, _ in plan}
                    for round_number in range(args.warmup + args.rounds):
                        for name, url, headers in plan:
                            started = time.perf_counter()
                            response = client.get(url, headers=headers)
                            elapsed = time.perf_counter() - started
                            response.raise_for_status()
                            if round_number >= args.warmup:
                                timings[name].append(elapsed * 1000)
            finally:
                for process in (cold, warm):
                    process.terminate()
                    process.wait(timeout=10)

    figures = {
        name: {
            "p50_ms": round(statistics.median(samples), 2),
            "p95_ms": round(percentile(samples, 0.95), 2),
            "mean_ms": round(statistics.fmean(samples), 2),
        }
        for name, samples in timings.items()
    }
    for name in ("gateway-cold", "gateway-warm"):
        for level in ("p50", "p95"):
            figures[f"ratio_{name.split('-')[1]}_{level}"] = round(
                figures[name][f"{level}_ms"] / figures["direct"][f"{level}_ms"], 2
            )
    figures["rounds"] = args.rounds
    figures["studies"] = studies
    figures["instances"] = instances
    python = platform.python_version()
    figures["machine"] = f"{platform.machine()}, {os.cpu_count()} cores, Python {python}"
    print(
        f"ImagingStudy search, 1 patient, {studies} studies, {instances} instances, "
        f"{args.rounds} rounds"
    )
    print("| path | p50 ms | p95 ms | mean ms | p50 / direct | p95 / direct |")
    print("| --- | --- | --- | --- | --- | --- |")
    for name in ("direct", "gateway-cold", "gateway-warm"):
        f = figures[name]
        kind = name.split("-")[-1]
        ratios = (
            f"{figures[f'ratio_{kind}_p50']} | {figures[f'ratio_{kind}_p95']}"
            if name != "direct"
            else "1 | 1"
        )
        print(f"| {name} | {f['p50_ms']} | {f['p95_ms']} | {f['mean_ms']} | {ratios} |")
    print("target: p50 ratio <= 2.0")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
