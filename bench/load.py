"""Many clients at once: the deployed topology against Orthanc directly (issue 12).

    .venv/bin/python bench/load.py [--clients 100] [--seconds 30] [--rounds 2]
        [--modes patient,system] [--profile load.svg] [--json out.json]

Starts tests/support/stack.py's topology (nginx from deploy/nginx.conf, two
``gateway serve`` replicas with GATEWAY_OFFLOAD=nginx on a throwaway PostgreSQL
database, a private Orthanc, release delay 0) and loads the fixture studies.
Tokens are required. Two modes, each measured on its own:

- **patient** (the headline: patients are the product's main users): the
  fixture patients are enrolled, and each gets a token from a real SMART
  standalone launch through nginx (bench/smart.py: authorize, sign in,
  consent, token with PKCE). Client n holds patient n mod P's token and asks
  nginx for ``/fhir/ImagingStudy?patient={id}&_count=20``,
  ``/dicomweb/studies`` and ``/dicomweb/studies/{uid}/metadata`` of one of
  that patient's studies; directly, Orthanc's ``/dicom-web/studies?PatientID=``
  (twice: the FHIR search's nearest QIDO, as in bench/fhir_search.py) and the
  same metadata.
- **system**: one backend token (``system/*.rs``) for every request:
  ``/fhir/ImagingStudy?_count=20``, ``/dicomweb/studies?limit=20``,
  ``/dicomweb/studies/{uid}/metadata``; directly, ``/dicom-web/studies?limit=20``
  twice and the same metadata.

Each run keeps --clients async clients busy for --seconds, each cycling through
its three requests. Within a mode the runs alternate (direct, gateway, direct,
gateway: --rounds 2), and the figures are over all rounds. Reports req/s, p50,
p95 and errors for each, the p50 and p95 of each of the three requests, the CPU
milliseconds per answered request spent by each part of the stack (replicas,
nginx, the PostgreSQL backends of the stack's database, Orthanc; from /proc),
and the ratios (targets: 0 errors, throughput >= 1.0 of direct, p95 <= direct).
``--profile`` records py-spy (``pip install py-spy``) on replica 1 during each
mode's first gateway run: FILE-patient.svg, ... as flame graphs, or, for any
suffix but .svg, collapsed stacks (py-spy's raw format).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
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

from bench import smart  # noqa: E402
from bench.dataplane import Tokens  # noqa: E402
from bench.support import machine  # noqa: E402
from fixtures.generate import write_fixtures  # noqa: E402
from tests.support.stack import Stack, running_stack  # noqa: E402

Work = list[tuple[list[str], dict[str, str]]]  # per client: (paths, headers), cycled


async def run_clients(base: str, work: Work, clients: int, seconds: float) -> dict[str, Any]:
    latencies: list[float] = []
    by_kind: dict[int, list[float]] = {}  # by the request's place in its client's cycle
    errors: dict[str, int] = {}
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=base, timeout=30, limits=limits) as http:
        deadline = time.perf_counter() + seconds

        async def client(number: int) -> None:
            paths, headers = work[number % len(work)]
            turn = number
            while time.perf_counter() < deadline:
                kind = turn % len(paths)
                path = paths[kind]
                turn += 1
                started = time.perf_counter()
                try:
                    answer = await http.get(path, headers=headers)
                    await answer.aread()
                    failure = None if answer.status_code == 200 else str(answer.status_code)
                except httpx.HTTPError as exc:
                    failure = type(exc).__name__
                latencies.append(time.perf_counter() - started)
                by_kind.setdefault(kind, []).append(latencies[-1])
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
        "by_kind": by_kind,
        "errors": errors,
    }


def profile(pid: int, output: Path, seconds: float) -> subprocess.Popen[bytes]:
    """py-spy (pip install py-spy) sampling one replica: a flame graph (.svg), or
    collapsed stacks (any other suffix, py-spy's raw format)."""
    py_spy = str(Path(sys.executable).parent / "py-spy")
    command = [py_spy, "record", "-o", str(output), "-d", str(int(seconds)), "-p", str(pid)]
    if output.suffix != ".svg":
        command += ["--format", "raw"]
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


TICKS = os.sysconf("SC_CLK_TCK")


def _stat(pid: int) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.rindex(")") + 2 :].split()  # fields from the state on


def stack_processes(stack: Stack) -> dict[str, list[int]]:
    """The processes of each part: the replicas, nginx (its session), Orthanc, and the
    PostgreSQL backends serving the stack's database."""
    database = stack.database_url.rsplit("/", 1)[1]
    parts: dict[str, list[int]] = {"gateway": [], "nginx": [], "postgres": [], "orthanc": []}
    parts["gateway"] = [pid for name, pid in stack.pids.items() if name.startswith("gateway-")]
    parts["orthanc"] = [stack.pids["orthanc"]] if "orthanc" in stack.pids else []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        pid = int(entry.name)
        fields = _stat(pid)
        if fields is None:
            continue
        if int(fields[3]) == stack.pids.get("nginx"):  # session id
            parts["nginx"].append(pid)
        else:
            try:
                command = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if command.startswith(b"postgres: ") and f" {database} ".encode() in command:
                parts["postgres"].append(pid)
    return parts


def cpu_ticks(parts: dict[str, list[int]]) -> dict[tuple[str, int], int]:
    """User and system CPU time so far of each part's processes (all their threads)."""
    used = {}
    for part, pids in parts.items():
        for pid in pids:
            fields = _stat(pid)
            if fields is not None:
                used[(part, pid)] = int(fields[11]) + int(fields[12])  # utime, stime
    return used


def timed_run(stack: Stack, base: str, work: Work, clients: int, seconds: float) -> dict[str, Any]:
    """One run, with the CPU time each part of the stack spent during it (a process
    that ended meanwhile, such as a closed database connection, is left out)."""
    before = cpu_ticks(stack_processes(stack))
    run = asyncio.run(run_clients(base, work, clients, seconds))
    after = cpu_ticks(stack_processes(stack))
    spent = dict.fromkeys(("gateway", "nginx", "postgres", "orthanc"), 0.0)
    for (part, pid), ticks in after.items():
        spent[part] += (ticks - before.get((part, pid), 0)) / TICKS
    run["cpu_seconds"] = spent
    return run


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
        # p50 and p95 of each of the three requests (in the order the docstring names them)
        "by_request_ms": {
            str(kind): [
                round(statistics.median(found) * 1000, 1),
                round(found[int(len(found) * 0.95)] * 1000, 1),
            ]
            for kind in sorted({k for run in runs for k in run["by_kind"]})
            if (found := sorted(x for run in runs for x in run["by_kind"].get(kind, [])))
        },
        # CPU milliseconds per answered request, by part of the stack (all rounds).
        "cpu_ms_per_request": {
            part: round(
                1000 * sum(run["cpu_seconds"][part] for run in runs) / max(len(latencies), 1), 2
            )
            for part in runs[0]["cpu_seconds"]
        },
    }


def fixture_patients(http: httpx.Client, base: str, headers: dict[str, str]) -> list[str]:
    """The FHIR ids of the fixture patients (a system token's Patient search)."""
    found = http.get(f"{base}/fhir/Patient?_count=100", headers=headers)
    found.raise_for_status()
    return sorted(str(e["resource"]["id"]) for e in found.json().get("entry", []))


def patient_work(stack: Stack, system: dict[str, str]) -> tuple[Work, Work]:
    """Gateway and direct work for each enrolled patient, with its launched token."""
    gateway: Work = []
    direct: Work = []
    with httpx.Client(timeout=60) as http:
        patients = fixture_patients(http, stack.url, system)
        enrolled = smart.enroll(stack.database_url, patients)
        for patient in patients:
            token = smart.launch(stack.url, enrolled.client_id, enrolled.logins[patient])
            headers = {"Authorization": f"Bearer {token['access_token']}"}
            studies = http.get(f"{stack.url}/dicomweb/studies", headers=headers)
            studies.raise_for_status()
            first = studies.json()[0]
            uid = first["0020000D"]["Value"][0]
            patient_id = first["00100020"]["Value"][0]
            issuer = (first.get("00100021", {}).get("Value") or [""])[0]
            gateway.append(
                (
                    [
                        f"/fhir/ImagingStudy?patient={patient}&_count=20",
                        "/dicomweb/studies",
                        f"/dicomweb/studies/{uid}/metadata",
                    ],
                    headers,
                )
            )
            query = f"/studies?PatientID={patient_id}&IssuerOfPatientID={issuer}"
            direct.append(([query, query, f"/studies/{uid}/metadata"], {}))
    return gateway, direct


def system_work(stack: Stack, uid: str) -> tuple[Work, Work]:
    headers = Tokens(stack.database_url).header()  # backend tokens live 5 minutes: made now
    gateway = [
        "/fhir/ImagingStudy?_count=20",
        "/dicomweb/studies?limit=20",
        f"/dicomweb/studies/{uid}/metadata",
    ]
    direct = ["/studies?limit=20", "/studies?limit=20", f"/studies/{uid}/metadata"]
    return [(gateway, headers)], [(direct, {})]


def measure(
    stack: Stack, work: tuple[Work, Work], args: argparse.Namespace, profile_to: Path | None
) -> dict[str, Any]:
    gateway_work, direct_work = work
    orthanc = stack.pacs_dicomweb_url
    # Warm both (connections, the study index) before measuring.
    asyncio.run(run_clients(stack.url, gateway_work, 10, 2))
    asyncio.run(run_clients(orthanc, direct_work, 10, 2))
    runs: dict[str, list[dict[str, Any]]] = {"direct": [], "gateway": []}
    load = [os.getloadavg()[0]]
    for round_number in range(args.rounds):
        runs["direct"].append(timed_run(stack, orthanc, direct_work, args.clients, args.seconds))
        profiler = None
        if profile_to and round_number == 0:
            profiler = profile(stack.pids["gateway-1"], profile_to, args.seconds)
        runs["gateway"].append(
            timed_run(stack, stack.url, gateway_work, args.clients, args.seconds)
        )
        if profiler is not None:
            profiler.wait(timeout=120)
        load.append(os.getloadavg()[0])
    direct, gateway = summary(runs["direct"]), summary(runs["gateway"])
    return {
        "direct": direct,
        "gateway": gateway,
        "throughput_ratio": round(gateway["req_per_s"] / direct["req_per_s"], 2),
        "p95_ratio": round(gateway["p95_ms"] / direct["p95_ms"], 2),
        "load_1min": load,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument("--seconds", type=float, default=30)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--modes", default="patient,system")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--logs", type=Path, help="copy the replicas' logs here at the end")
    parser.add_argument(
        "--profile",
        type=Path,
        help="py-spy flame graphs (SVG) of replica 1 during each mode's first gateway run",
    )
    args = parser.parse_args()
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    result: dict[str, Any] = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "load_before": os.getloadavg(),
        "clients": args.clients,
        "seconds": args.seconds,
        "rounds": args.rounds,
    }
    with tempfile.TemporaryDirectory(prefix="bench-load-") as folder:
        files = write_fixtures(Path(folder) / "fixtures")
        settings = {"release_delay_hours": "0"}
        with running_stack(
            Path(folder) / "stack", replicas=2, offload="nginx", settings=settings
        ) as stack:
            orthanc = stack.pacs_dicomweb_url
            with httpx.Client(timeout=60) as http:
                for path in files:
                    http.post(
                        orthanc.removesuffix("/dicom-web") + "/instances",
                        content=path.read_bytes(),
                    ).raise_for_status()
                uid = http.get(f"{orthanc}/studies?limit=1").json()[0]["0020000D"]["Value"][0]
            for mode in modes:
                if mode == "patient":
                    system = Tokens(stack.database_url).header()
                    work = patient_work(stack, system)
                elif mode == "system":
                    work = system_work(stack, uid)
                else:
                    raise SystemExit(f"unknown mode {mode!r} (patient, system)")
                profile_to = None
                if args.profile:
                    profile_to = args.profile.with_name(
                        f"{args.profile.stem}-{mode}{args.profile.suffix}"
                    )
                result[mode] = measure(stack, work, args, profile_to)
            if args.logs:
                args.logs.mkdir(parents=True, exist_ok=True)
                for log in Path(stack.workdir).glob("gateway-*/gateway.log"):
                    shutil.copy(log, args.logs / f"{log.parent.name}.log")
    result["load_after"] = os.getloadavg()
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
