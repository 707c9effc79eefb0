"""ImagingStudy search through the gateway vs the direct study-level QIDO, on one Orthanc.

    .venv/bin/python bench/fhir_search.py [--rounds 300] [--json out.json] [--profile out.prof]
        [--postgres [--postgres-url URL] | --database-url URL]

Starts a private Orthanc (Debian packages orthanc + orthanc-dicomweb), loads the
fixture studies with STOW-RS, starts `gateway serve` (uvicorn, one worker, SQLite;
with --postgres a throwaway database on the PostgreSQL server, dropped at the end;
with --database-url that database, which must be empty or the gateway's;
tokens required, the default freshness bound) in front of it, mints a system token
(system/*.rs) and a patient token (patient/ImagingStudy.rs) in its database, then
alternates, round after round, over keep-alive connections:
  direct:               GET /dicom-web/studies?PatientID={mrn}  (the study-level QIDO alone)
  system-cold:          GET /fhir/ImagingStudy?patient={id}&_count=50, system token, right
                        after the patient was marked stale in the index (as when the
                        freshness bound has passed): the gateway revalidates with one
                        study-level QIDO, and takes unchanged studies' reports and
                        series/instances from the database
  system-warm:          the same search again, inside the bound: no call to the PACS
  patient-cold/-warm:   GET /fhir/ImagingStudy?_count=50 with the patient token, the same way
and reports p50/p95 of each and the ratios to direct (targets: cold <= 2.0, warm <= 0.5).
The very first search of a patient (an empty index: 3 calls, the old cold path) happens
once per run and is reported as measured, not as a percentile.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

import httpx
from pydicom import dcmread

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.support import DEFAULT_POSTGRES, throwaway_postgres  # noqa: E402
from fixtures.generate import BENCH_PATIENT_ID, PATIENTS, write_fixtures  # noqa: E402
from gateway.auth.clients import ClientKind  # noqa: E402
from gateway.auth.secrets import new_id  # noqa: E402
from gateway.auth.service import AuthServices  # noqa: E402
from gateway.dicomweb.http_upstream import HttpUpstream  # noqa: E402
from gateway.settings import load_settings  # noqa: E402
from gateway.store.database import Database  # noqa: E402
from gateway.store.models import Grant  # noqa: E402
from gateway.store.patients import PatientIndex  # noqa: E402
from gateway.store.study_index import StudyIndex  # noqa: E402
from tests.support.orthanc import run_orthanc  # noqa: E402

PATHS = ("direct", "system-cold", "system-warm", "patient-cold", "patient-warm")


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


class Bench:
    """The gateway's own database, opened beside it: tokens, and marking the index stale."""

    def __init__(self, database_url: str, base: str) -> None:
        self.settings = load_settings(_env_file=None, database_url=database_url, public_url=base)
        self.database = Database(database_url)
        self.auth = AuthServices.build(self.settings, self.database.sessions)
        self.index = StudyIndex(self.database.sessions)
        issuer = next(p.issuer for p in PATIENTS if p.patient_id == BENCH_PATIENT_ID)
        self.key = (issuer, BENCH_PATIENT_ID)
        self.client_id: str | None = None

    async def token(self, scope: str, context: dict[str, str]) -> str:
        if self.client_id is None:
            # system/ scopes reach every patient only for a client registered as an operator.
            created = await self.auth.clients.add(
                name="fhir_search bench",
                kind=ClientKind.backend,
                jwks={"keys": []},
                scope="system/*.rs",
                operator=True,
            )
            self.client_id = created.client.client_id
        grant = Grant(id=new_id(), client_id=self.client_id, scope=scope, context=context)
        async with self.database.sessions() as session:
            session.add(grant)
            await session.commit()
        issued = await self.auth.tokens.issue(grant, backend=True)
        return str(issued["access_token"])

    async def patient(self) -> str:
        return (await PatientIndex(self.database.sessions).ids_for([self.key]))[self.key]

    async def stale(self) -> None:
        await self.index.stale([self.key])

    async def aclose(self) -> None:
        await self.auth.aclose()
        await self.database.dispose()


def start_gateway(
    dicomweb_url: str, workdir: Path, profile: Path | None = None, database_url: str | None = None
) -> tuple[subprocess.Popen[bytes], str, str]:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    data_dir = workdir / f"var-{port}"
    database_url = database_url or f"sqlite+aiosqlite:///{data_dir / 'gateway.db'}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    env.update(
        GATEWAY_DICOMWEB_URL=dicomweb_url,
        GATEWAY_DATA_DIR=str(data_dir),
        GATEWAY_DATABASE_URL=database_url,
        GATEWAY_PUBLIC_URL=base,
        GATEWAY_LOG_LEVEL="warning",
        GATEWAY_RELEASE_DELAY_HOURS="0",  # the patient sees all ten studies, as a system does
    )
    profiler = ["-m", "cProfile", "-o", str(profile)] if profile else []
    process = subprocess.Popen(
        [sys.executable, *profiler, "-m", "gateway", "serve", "--port", str(port), "--migrate"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{base}/readyz", timeout=2).status_code == 200:
                return process, base, database_url
        except httpx.TransportError:
            time.sleep(0.1)
    process.kill()
    raise SystemExit("the gateway did not become ready")


def shape(bundle: dict) -> list[tuple[str, int, int]]:
    return sorted(
        (r["id"], r["numberOfInstances"], len(r["series"]))
        for r in (e["resource"] for e in bundle["entry"])
    )


async def measure(args: argparse.Namespace, dicomweb_url: str, workdir: Path) -> dict:
    gateway, base, database_url = start_gateway(
        dicomweb_url, workdir, args.profile, args.database_url
    )
    bench = Bench(database_url, base)
    try:
        patient = await bench.patient()
        system = await bench.token("system/*.rs", {})
        mine = await bench.token("launch/patient patient/ImagingStudy.rs", {"patient": patient})
        searches = {
            "system": (
                f"{base}/fhir/ImagingStudy?patient={patient}&_count=50",
                {"Authorization": f"Bearer {system}"},
            ),
            "patient": (
                f"{base}/fhir/ImagingStudy?_count=50",
                {"Authorization": f"Bearer {mine}"},
            ),
        }
        direct = (
            f"{dicomweb_url}/studies?PatientID={BENCH_PATIENT_ID}",
            {"Accept": "application/dicom+json"},
        )
        timings: dict[str, list[float]] = {name: [] for name in PATHS}
        async with httpx.AsyncClient(timeout=30) as client:

            async def timed(url: str, headers: dict[str, str]) -> tuple[float, httpx.Response]:
                started = time.perf_counter()
                response = await client.get(url, headers=headers)
                elapsed = (time.perf_counter() - started) * 1000
                response.raise_for_status()
                return elapsed, response

            first_ms, first = await timed(*searches["patient"])  # an empty index
            expected = shape(first.json())
            assert len(expected) == 10, expected
            direct_count = len((await timed(*direct))[1].json())
            assert direct_count == 10, direct_count
            for name in ("system", "patient"):
                assert shape((await timed(*searches[name]))[1].json()) == expected
            for round_number in range(args.warmup + args.rounds):
                measured = round_number >= args.warmup
                elapsed, _ = await timed(*direct)
                if measured:
                    timings["direct"].append(elapsed)
                for name in ("system", "patient"):
                    await bench.stale()
                    for kind in ("cold", "warm"):
                        elapsed, _ = await timed(*searches[name])
                        if measured:
                            timings[f"{name}-{kind}"].append(elapsed)
    finally:
        await bench.aclose()
        # SIGINT: uvicorn stops cleanly, and cProfile writes its stats on the way out.
        gateway.send_signal(signal.SIGINT if args.profile else signal.SIGTERM)
        gateway.wait(timeout=30)
    return {"timings": timings, "first_ms": round(first_ms, 2), "studies": len(expected)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=300, help="measured rounds (default 300)")
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    parser.add_argument(
        "--profile", type=Path, help="run the gateway under cProfile, writing its stats here"
    )
    parser.add_argument(
        "--postgres", action="store_true", help="a throwaway PostgreSQL database, not SQLite"
    )
    parser.add_argument(
        "--postgres-url", default=DEFAULT_POSTGRES, help="the server for --postgres"
    )
    parser.add_argument("--database-url", help="the gateway's database (default: SQLite)")
    args = parser.parse_args()

    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as scratch, ExitStack() as cleanup:
        if args.postgres:
            args.database_url = cleanup.enter_context(throwaway_postgres(args.postgres_url))
        workdir = Path(scratch)
        files = write_fixtures(workdir / "fixtures")
        with run_orthanc(workdir / "orthanc") as orthanc:
            asyncio.run(load(orthanc.dicomweb_url, files))
            measured = asyncio.run(measure(args, orthanc.dicomweb_url, workdir))
    timings = measured["timings"]
    figures: dict = {
        name: {
            "p50_ms": round(statistics.median(samples), 2),
            "p95_ms": round(percentile(samples, 0.95), 2),
            "mean_ms": round(statistics.fmean(samples), 2),
        }
        for name, samples in timings.items()
    }
    for name in PATHS[1:]:
        for level in ("p50", "p95"):
            figures[name][f"{level}_ratio"] = round(
                figures[name][f"{level}_ms"] / figures["direct"][f"{level}_ms"], 2
            )
    figures["first_search_ms"] = measured["first_ms"]
    figures["rounds"] = args.rounds
    figures["database"] = (args.database_url or "sqlite").split(":", 1)[0]
    figures["studies"] = measured["studies"]
    figures["load_before"] = [round(x, 2) for x in load_before]
    figures["load_after"] = [round(x, 2) for x in os.getloadavg()]
    python = platform.python_version()
    figures["machine"] = f"{platform.machine()}, {os.cpu_count()} cores, Python {python}"
    print(
        f"ImagingStudy search, 1 patient, {measured['studies']} studies, {args.rounds} rounds, "
        f"tokens required, {figures['database']}; load average before {figures['load_before']}, "
        f"after {figures['load_after']}"
    )
    print("| path | p50 ms | p95 ms | mean ms | p50 / direct | p95 / direct |")
    print("| --- | --- | --- | --- | --- | --- |")
    for name in PATHS:
        f = figures[name]
        ratios = f"{f['p50_ratio']} | {f['p95_ratio']}" if name != "direct" else "1 | 1"
        print(f"| {name} | {f['p50_ms']} | {f['p95_ms']} | {f['mean_ms']} | {ratios} |")
    print(f"first search of the patient (empty index, patient token): {measured['first_ms']} ms")
    print("targets: cold p50 ratio <= 2.0, warm p50 ratio <= 0.5")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
