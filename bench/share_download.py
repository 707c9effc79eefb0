"""A share-link recipient downloads a large study as a ZIP: throughput and gateway memory.

    .venv/bin/python bench/share_download.py [--megabytes 520] [--rounds 3]

Builds one synthetic CT study of about --megabytes (512x512 16-bit frames), loads
it into a private Orthanc, and starts `gateway serve` in front of it with tokens
required. It enrols the study's patient and makes a share link of the study
(as the portal does), then opens the link with its PIN over HTTP like a
browser. It then downloads /share/view/download (a ZIP of Part 10 files,
streamed from one WADO-RS request per series), in interleaved rounds with two
direct WADO-RS retrievals of the same study from Orthanc (the order flips each
round, so a drift in the machine's load falls on all alike): one with the
default Accept (Orthanc checks each instance's transfer syntax), and one as
stored (`transfer-syntax=*`, what the gateway itself asks for; cheaper for
Orthanc).

Reports the MB/s of each (medians), the ZIP's ratio to the faster direct
retrieval (target >= 0.5), the
gateway's peak RSS growth during the downloads, and the CPU seconds each
process spent per GB moved (from /proc/<pid>/stat, so they do not depend on
what else the machine runs): Orthanc's and the client's on the direct path,
and Orthanc's, the gateway's and the client's on the ZIP path. Memory should
stay flat whatever the study size. The last ZIP is checked: one Part 10 file
per instance.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import statistics
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.dicomweb import _is_gateway, pull, rss_kib, upload, write_study  # noqa: E402
from gateway.auth.service import AuthServices  # noqa: E402
from gateway.portal.shares import ShareService  # noqa: E402
from gateway.settings import load_settings  # noqa: E402
from gateway.store.database import Database  # noqa: E402
from gateway.store.patients import PatientIndex  # noqa: E402
from tests.conftest import serve_gateway  # noqa: E402
from tests.support.orthanc import run_orthanc  # noqa: E402

BENCH_PATIENT = ("", "BENCH-DICOMWEB")  # the patient bench/dicomweb.py writes
AS_STORED = 'multipart/related; type="application/dicom"; transfer-syntax=*'


async def make_share(database_url: str, base: str, study: str) -> tuple[str, str]:
    """Enrol the bench patient and share the study: (link, PIN)."""
    settings = load_settings(_env_file=None, database_url=database_url, public_url=base)
    database = Database(database_url)
    auth = AuthServices.build(settings, database.sessions)
    try:
        fhir_id = (await PatientIndex(database.sessions).ids_for([BENCH_PATIENT]))[BENCH_PATIENT]
        account = await auth.accounts.enroll_patient(fhir_id, "1970-01-01", "Bench Patient")
        shares = ShareService(database.sessions, public_url=base, default_days=7, max_days=90)
        created = await shares.create(
            account_id=account.id, patient_fhir_id=fhir_id, studies=[study], days=1
        )
        return shares.link(created.token), created.pin
    finally:
        await auth.aclose()
        await database.dispose()


def open_share(client: httpx.Client, link: str, pin: str) -> None:
    page = client.get(link)
    page.raise_for_status()
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
    assert csrf, "no CSRF token on the PIN page"
    opened = client.post(link, data={"csrf_token": csrf.group(1), "pin": pin})
    if opened.status_code != 303:
        raise SystemExit(f"the PIN did not open the share: HTTP {opened.status_code}")


def download(
    client: httpx.Client, url: str, keep: Path | None, accept: str = "*/*"
) -> tuple[int, float]:
    started = time.perf_counter()
    total = 0
    with client.stream("GET", url, headers={"Accept": accept}) as response:
        response.raise_for_status()
        with keep.open("wb") if keep else open(os.devnull, "wb") as sink:
            for chunk in response.iter_bytes(1 << 20):
                total += len(chunk)
                sink.write(chunk)
    return total, time.perf_counter() - started


def cpu_seconds(pid: int | None) -> float:
    """User + system CPU time of a process (this one when ``pid`` is None)."""
    if pid is None:
        times = os.times()
        return times.user + times.system
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measured(
    pids: dict[str, int | None], transfer: Callable[[], tuple[int, float]]
) -> tuple[float, dict[str, float]]:
    """MB/s of one transfer, and each process's CPU seconds per GB moved."""
    before = {name: cpu_seconds(pid) for name, pid in pids.items()}
    size, seconds = transfer()
    spent = {name: cpu_seconds(pid) - before[name] for name, pid in pids.items()}
    return size / seconds / 1e6, {name: cpu / (size / 1e9) for name, cpu in spent.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--megabytes", type=int, default=520)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        work = Path(scratch)
        study, count = write_study(work / "study", args.megabytes)
        with run_orthanc(work / "orthanc") as orthanc:
            upload(orthanc.http_url, work / "study")
            database_url = f"sqlite+aiosqlite:///{work / 'gw' / 'gateway.db'}"
            with serve_gateway(
                work / "gw",
                dicomweb_url=orthanc.dicomweb_url,
                auth_required="true",
                release_delay_hours="0",
                log_level="warning",
                database_url=database_url,
            ) as base:
                pid = next(
                    int(p) for p in os.listdir("/proc") if p.isdigit() and _is_gateway(int(p), base)
                )
                link, pin = asyncio.run(make_share(database_url, base, study))
                direct_url = f"{orthanc.dicomweb_url}/studies/{study}"
                zip_url = f"{base}/share/view/download"
                paths = ("direct", "direct_as_stored", "share_zip")
                speeds: dict[str, list[float]] = {name: [] for name in paths}
                cpu: dict[str, list[dict[str, float]]] = {name: [] for name in paths}
                direct_pids = {"orthanc": orthanc.process.pid, "client": None}
                pids = {
                    "direct": direct_pids,
                    "direct_as_stored": direct_pids,
                    "share_zip": {"orthanc": orthanc.process.pid, "gateway": pid, "client": None},
                }
                kept = work / "last.zip"
                with httpx.Client(timeout=600) as client:
                    open_share(client, link, pin)
                    download(client, zip_url, None)  # warm the path once
                    baseline = rss_kib(pid, "VmRSS")
                    transfers = {
                        "direct": lambda: pull(client, direct_url),
                        "direct_as_stored": lambda: download(client, direct_url, None, AS_STORED),
                        "share_zip": lambda: download(client, zip_url, None),
                    }
                    for round_number in range(args.rounds):
                        order = list(paths)[:: 1 if round_number % 2 == 0 else -1]
                        for name in order:
                            speed, spent = measured(pids[name], transfers[name])
                            speeds[name].append(speed)
                            cpu[name].append(spent)
                    peak = rss_kib(pid, "VmHWM")
                    zip_size, _ = download(client, zip_url, kept)  # to check, not timed
                members = [n for n in zipfile.ZipFile(kept).namelist() if n.endswith(".dcm")]
                if len(members) != count:
                    raise SystemExit(f"the ZIP holds {len(members)} files, not {count}")
    figures = {
        "study_megabytes": round(zip_size / 1e6, 1),
        "instances": count,
        "rounds": args.rounds,
        "direct_wado_MBps": round(statistics.median(speeds["direct"]), 1),
        "direct_wado_as_stored_MBps": round(statistics.median(speeds["direct_as_stored"]), 1),
        "share_zip_MBps": round(statistics.median(speeds["share_zip"]), 1),
        "gateway_rss_baseline_MB": round(baseline / 1024, 1),
        "gateway_peak_rss_growth_MB": round((peak - baseline) / 1024, 1),
        "zip_vs_faster_direct_per_round": [
            round(z / max(d, a), 2)
            for z, d, a in zip(
                speeds["share_zip"], speeds["direct"], speeds["direct_as_stored"], strict=True
            )
        ],
        "cpu_seconds_per_GB": {
            path: {name: round(statistics.median(r[name] for r in runs), 2) for name in runs[0]}
            for path, runs in cpu.items()
        },
        "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()}",
        "date": time.strftime("%Y-%m-%d %H:%M"),
    }
    faster = max(figures["direct_wado_MBps"], figures["direct_wado_as_stored_MBps"])
    figures["zip_vs_direct"] = round(figures["share_zip_MBps"] / figures["direct_wado_MBps"], 2)
    figures["zip_vs_faster_direct"] = round(figures["share_zip_MBps"] / faster, 2)
    print(json.dumps(figures, indent=2))
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
