"""WADO-RS retrieval of a large study: through the gateway vs straight from Orthanc.

    .venv/bin/python bench/dicomweb.py [--megabytes 520] [--rounds 3]

Builds one synthetic CT study of about --megabytes (512x512 16-bit frames, one
per instance), loads it into a private Orthanc, starts `gateway serve` in front
of it, then retrieves the whole study as multipart/related (application/dicom)
alternately through the gateway and directly, reading the body in 1 MiB chunks.
Reports throughput of both, their ratio (target >= 0.9), and the gateway's peak
RSS growth during the transfer from /proc (target <= 64 MB).

Then stores --stow-instances small CT instances (128x128, 16-bit) with STOW-RS
in requests of 50, through the gateway and directly, each into a fresh study,
and reports instances per second and their ratio (target >= 0.8).

Last, renders one 512x512 CT frame of the large study as PNG through the
gateway --render-requests times and reports the p50 and p95 latency.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
from pydicom import Dataset
from pydicom.dataset import FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.conftest import serve_gateway  # noqa: E402
from tests.support.orthanc import run_orthanc  # noqa: E402

ACCEPT = {"Accept": 'multipart/related; type="application/dicom"'}
FRAME_BYTES = 512 * 512 * 2


def ct_instance(study: str, series: str, number: int, edge: int, pixels: bytes) -> Dataset:
    ds = Dataset()
    ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
    ds.PatientID, ds.PatientName, ds.Modality = "BENCH-DICOMWEB", "Bench^Dicomweb", "CT"
    ds.StudyDate, ds.SeriesNumber, ds.InstanceNumber = "20260101", 1, number + 1
    ds.Rows = ds.Columns = edge
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = pixels
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    return ds


def write_study(folder: Path, megabytes: int) -> tuple[str, int]:
    """One CT study of 512x512 16-bit instances adding up to about ``megabytes``."""
    count = max(1, megabytes * 1024 * 1024 // FRAME_BYTES)
    study, series = generate_uid(), generate_uid()
    rng = np.random.default_rng(7)
    pixels = rng.integers(0, 4096, (512, 512), dtype=np.uint16).tobytes()
    folder.mkdir(parents=True, exist_ok=True)
    for number in range(count):
        ds = ct_instance(study, series, number, 512, pixels)
        ds.save_as(folder / f"{number:05d}.dcm", enforce_file_format=True)
    return study, count


def stow_payloads(count: int, per_request: int = 50) -> list[tuple[str, bytes]]:
    """Multipart STOW bodies of small instances: (content type, body) per request."""
    study, series = generate_uid(), generate_uid()
    pixels = np.zeros((128, 128), dtype=np.uint16).tobytes()
    bodies = []
    for first in range(0, count, per_request):
        boundary = generate_uid()
        parts = []
        for number in range(first, min(count, first + per_request)):
            ds = ct_instance(study, series, number, 128, pixels)
            buffer = io.BytesIO()
            ds.save_as(buffer, enforce_file_format=True)
            parts.append(
                f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()
                + buffer.getvalue()
                + b"\r\n"
            )
        body = b"".join(parts) + f"--{boundary}--\r\n".encode()
        kind = f'multipart/related; type="application/dicom"; boundary={boundary}'
        bodies.append((kind, body))
    return bodies


def stow_rate(client: httpx.Client, url: str, count: int) -> float:
    payloads = stow_payloads(count)
    started = time.perf_counter()
    for kind, body in payloads:
        response = client.post(
            url, content=body, headers={"Content-Type": kind, "Accept": "application/dicom+json"}
        )
        if response.status_code != 200:
            raise SystemExit(f"STOW failed: HTTP {response.status_code} {response.text[:300]}")
    return count / (time.perf_counter() - started)


def render_latency(client: httpx.Client, base: str, study: str, requests: int) -> list[float]:
    """Milliseconds per PNG rendering of one 512x512 CT frame through the gateway."""
    first = client.get(
        f"{base}/dicomweb/studies/{study}/instances",
        params={"InstanceNumber": "1"},
        headers={"Accept": "application/dicom+json"},
    ).json()[0]
    series, instance = first["0020000E"]["Value"][0], first["00080018"]["Value"][0]
    url = f"{base}/dicomweb/studies/{study}/series/{series}/instances/{instance}/rendered"
    timings = []
    for number in range(requests + 5):
        started = time.perf_counter()
        response = client.get(url, headers={"Accept": "image/png"})
        elapsed = (time.perf_counter() - started) * 1000
        response.raise_for_status()
        if number >= 5:
            timings.append(elapsed)
    return timings


def upload(http_url: str, folder: Path) -> None:
    with httpx.Client(timeout=60) as client:
        for path in sorted(folder.iterdir()):
            client.post(f"{http_url}/instances", content=path.read_bytes()).raise_for_status()


def rss_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/{pid}/status")


def pull(client: httpx.Client, url: str) -> tuple[int, float]:
    started = time.perf_counter()
    total = 0
    with client.stream("GET", url, headers=ACCEPT) as response:
        response.raise_for_status()
        for chunk in response.iter_bytes(1 << 20):
            total += len(chunk)
    return total, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--megabytes", type=int, default=520)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--stow-instances", type=int, default=1000)
    parser.add_argument("--render-requests", type=int, default=50)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        work = Path(scratch)
        study, count = write_study(work / "study", args.megabytes)
        with run_orthanc(work / "orthanc") as orthanc:
            upload(orthanc.http_url, work / "study")
            with serve_gateway(
                work / "gw", dicomweb_url=orthanc.dicomweb_url, log_level="warning"
            ) as base:
                pid = int(
                    next(
                        p for p in os.listdir("/proc") if p.isdigit() and _is_gateway(int(p), base)
                    )
                )
                direct_url = f"{orthanc.dicomweb_url}/studies/{study}"
                gateway_url = f"{base}/dicomweb/studies/{study}"
                results: dict[str, list[float]] = {"direct": [], "gateway": []}
                sizes = {}
                with httpx.Client(timeout=600) as client:
                    pull(client, gateway_url)  # warm both paths once
                    baseline = rss_kib(pid, "VmRSS")
                    for _ in range(args.rounds):
                        for name, url in (("direct", direct_url), ("gateway", gateway_url)):
                            size, seconds = pull(client, url)
                            sizes[name] = size
                            results[name].append(size / seconds / 1e6)
                    peak = rss_kib(pid, "VmHWM")
                    render_ms = render_latency(client, base, study, args.render_requests)
                    stow_direct = stow_rate(
                        client, f"{orthanc.dicomweb_url}/studies", args.stow_instances
                    )
                    stow_gateway = stow_rate(
                        client, f"{base}/dicomweb/studies", args.stow_instances
                    )
    figures = {
        "study_megabytes": round(sizes["gateway"] / 1e6, 1),
        "instances": count,
        "direct_MBps": round(statistics.median(results["direct"]), 1),
        "gateway_MBps": round(statistics.median(results["gateway"]), 1),
        "gateway_rss_baseline_MB": round(baseline / 1024, 1),
        "gateway_peak_rss_growth_MB": round((peak - baseline) / 1024, 1),
        "rounds": args.rounds,
        "rendered_png_512_p50_ms": round(statistics.median(render_ms), 1),
        "rendered_png_512_p95_ms": round(sorted(render_ms)[int(0.95 * (len(render_ms) - 1))], 1),
        "stow_instances": args.stow_instances,
        "stow_direct_per_s": round(stow_direct, 1),
        "stow_gateway_per_s": round(stow_gateway, 1),
        "stow_ratio": round(stow_gateway / stow_direct, 2),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()}",
    }
    figures["throughput_ratio"] = round(figures["gateway_MBps"] / figures["direct_MBps"], 2)
    assert (
        sizes["gateway"] == sizes["direct"] or abs(sizes["gateway"] - sizes["direct"]) < count * 512
    )
    print(json.dumps(figures, indent=2))
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")


def _is_gateway(pid: int, base: str) -> bool:
    try:
        command = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    port = base.rsplit(":", 1)[1].encode()
    return b"gateway" in command and port in command


if __name__ == "__main__":
    main()
