"""Many clients at once: the deployed topology against Orthanc directly (issue 12).

    .venv/bin/python bench/load.py [--clients 100] [--seconds 30] [--json out.json]

Starts tests/support/stack.py's topology (nginx from deploy/nginx.conf, two
``gateway serve`` replicas with GATEWAY_OFFLOAD=nginx on a throwaway PostgreSQL
database, a private Orthanc) and loads the fixture studies. Tokens are required:
one backend token (system/*.rs) for every gateway request.

Each run keeps --clients async clients busy for --seconds, each cycling through
the same mix, so every request answers the same question both ways:

- gateway: nginx's /fhir/ImagingStudy?_count=20, /dicomweb/studies?limit=20,
  /dicomweb/studies/{uid}/metadata
- direct:  Orthanc's /dicom-web/studies?limit=20 (the FHIR search's nearest
  equivalent, as in bench/fhir_search.py), the same QIDO, the same metadata

The two runs alternate (direct, gateway, direct, gateway: --rounds 2 by
default), and the figures are over all rounds. Reports req/s, p50, p95 and
errors for each, and the ratios (targets: 0 errors, throughput >= 1.0 of
direct, p95 <= direct).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.dataplane import Tokens  # noqa: E402
from bench.support import machine  # noqa: E402
from fixtures.generate import write_fixtures  # noqa: E402
from tests.support.stack import running_stack  # noqa: E402


async def run_clients(
    base: str, paths: list[str], headers: dict[str, str], clients: int, seconds: float
) -> dict[str, Any]:
    latencies: list[float] = []
    errors: dict[str, int] = {}
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=base, timeout=30, limits=limits) as http:
        deadline = time.perf_counter() + seconds

        async def client(number: int) -> None:
            turn = number
            while time.perf_counter() < deadline:
                path = paths[turn % len(paths)]
                turn += 1
                started = time.perf_counter()
                try:
                    answer = await http.get(path, headers=headers)
                    await answer.aread()
                    failure = None if answer.status_code == 200 else str(answer.status_code)
                except httpx.HTTPError as exc:
                    failure = type(exc).__name__
                latencies.append(time.perf_counter() - started)
                if failure:
                    errors[failure] = errors.get(failure, 0) + 1

        began = time.perf_counter()
        await asyncio.gather(*(client(n) for n in range(clients)))
        elapsed = time.perf_counter() - began
    latencies.sort()
    return {
        "requests": len(latencies),
        "seconds": elapsed,
        "latencies": latencies,
        "errors": errors,
    }


def profile(pid: int, output: Path, seconds: float) -> subprocess.Popen[bytes]:
    """py-spy (pip install py-spy) sampling one replica, as a flame graph."""
    py_spy = str(Path(sys.executable).parent / "py-spy")
    command = [py_spy, "record", "-o", str(output), "-d", str(int(seconds)), "-p", str(pid)]
    return subprocess.Popen(command, stdout=subprocess.DEVNULL)


def summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    latencies = sorted(x for run in runs for x in run["latencies"])
    seconds = sum(run["seconds"] for run in runs)
    return {
        "req_per_s": round(sum(run["requests"] for run in runs) / seconds, 1),
        "p50_ms": round(statistics.median(latencies) * 1000, 1),
        "p95_ms": round(latencies[int(len(latencies) * 0.95)] * 1000, 1),
        "errors": sum(sum(run["errors"].values()) for run in runs),
        "error_kinds": {
            kind: sum(run["errors"].get(kind, 0) for run in runs)
            for kind in {kind for run in runs for kind in run["errors"]}
        },
        "requests": len(latencies),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument("--seconds", type=float, default=30)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--json", type=Path)
    parser.add_argument(
        "--profile",
        type=Path,
        help="py-spy flame graph (SVG) of replica 1 during the first gateway run",
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-load-") as folder:
        files = write_fixtures(Path(folder) / "fixtures")
        with running_stack(Path(folder) / "stack", replicas=2, offload="nginx") as stack:
            orthanc = stack.pacs_dicomweb_url
            with httpx.Client(timeout=60) as http:
                for path in files:
                    http.post(
                        orthanc.removesuffix("/dicom-web") + "/instances",
                        content=path.read_bytes(),
                    ).raise_for_status()
                uid = http.get(f"{orthanc}/studies?limit=1").json()[0]["0020000D"]["Value"][0]
            headers = Tokens(stack.database_url).header()
            gateway_paths = [
                "/fhir/ImagingStudy?_count=20",
                "/dicomweb/studies?limit=20",
                f"/dicomweb/studies/{uid}/metadata",
            ]
            direct_paths = ["/studies?limit=20", "/studies?limit=20", f"/studies/{uid}/metadata"]
            # Warm both (connections, the study index) before measuring.
            asyncio.run(run_clients(stack.url, gateway_paths, headers, 10, 2))
            asyncio.run(run_clients(orthanc, direct_paths, {}, 10, 2))
            runs: dict[str, list[dict[str, Any]]] = {"direct": [], "gateway": []}
            for round_number in range(args.rounds):
                runs["direct"].append(
                    asyncio.run(run_clients(orthanc, direct_paths, {}, args.clients, args.seconds))
                )
                profiler = None
                if args.profile and round_number == 0:
                    profiler = profile(stack.pids["gateway-1"], args.profile, args.seconds)
                runs["gateway"].append(
                    asyncio.run(
                        run_clients(stack.url, gateway_paths, headers, args.clients, args.seconds)
                    )
                )
                if profiler is not None:
                    profiler.wait(timeout=60)
    direct, gateway = summary(runs["direct"]), summary(runs["gateway"])
    result = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "load": os.getloadavg(),
        "clients": args.clients,
        "seconds": args.seconds,
        "rounds": args.rounds,
        "direct": direct,
        "gateway": gateway,
        "throughput_ratio": round(gateway["req_per_s"] / direct["req_per_s"], 2),
        "p95_ratio": round(gateway["p95_ms"] / direct["p95_ms"], 2),
    }
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
