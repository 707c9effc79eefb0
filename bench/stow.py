"""STOW-RS through the gateway vs straight to Orthanc, with tokens required.

    .venv/bin/python bench/stow.py [--instances 500] [--per-request 50] [--edge 128] [--rounds 5]

Starts a private Orthanc 1.10 (Debian packages) and `gateway serve` in front
of it (uvicorn, one worker, SQLite, GATEWAY_AUTH_REQUIRED=true). A backend
client is registered with an RSA key, as a hospital system would be, and gets
its token over HTTP: client_credentials with a signed JWT assertion, scope
system/ImagingStudy.c. Each round then stores --instances CT instances
(--edge x --edge, 16-bit) in multipart requests of --per-request, once
straight to Orthanc and once through the gateway with the token; the order
flips each round, so a drift in the machine's load falls on both alike. Both
paths send the same bodies but for the UIDs: each path and round stores into
a study of its own, so no store is a repeat of one already made.

Reports instances per second of both (medians over rounds), the ratio of each
round and of the medians (target >= 0.8), and the CPU seconds per 1,000
instances spent by Orthanc, the gateway and this client on each path (from
/proc/<pid>/stat: they do not depend on what else the machine runs).
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from joserfc import jwt
from joserfc.jwk import RSAKey
from pydicom.uid import generate_uid

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.dicomweb import _is_gateway, ct_instance  # noqa: E402
from bench.share_download import cpu_seconds  # noqa: E402
from bench.support import machine  # noqa: E402
from gateway.auth.client_auth import JWT_BEARER  # noqa: E402
from gateway.auth.clients import ClientKind  # noqa: E402
from gateway.auth.service import AuthServices  # noqa: E402
from gateway.settings import load_settings  # noqa: E402
from gateway.store.database import Database  # noqa: E402
from tests.conftest import serve_gateway  # noqa: E402
from tests.support.orthanc import run_orthanc  # noqa: E402

SCOPE = "system/ImagingStudy.c"
Body = tuple[str, bytes]  # (Content-Type, multipart body)


def bodies(count: int, per_request: int, edge: int) -> list[Body]:
    """Multipart STOW bodies of ``count`` new instances of one new study."""
    study, series = generate_uid(), generate_uid()
    pixels = np.random.default_rng(7).integers(0, 4096, (edge, edge), dtype=np.uint16).tobytes()
    made = []
    for first in range(0, count, per_request):
        boundary = uuid.uuid4().hex
        parts = []
        for number in range(first, min(count, first + per_request)):
            buffer = io.BytesIO()
            ct_instance(study, series, number, edge, pixels).save_as(
                buffer, enforce_file_format=True
            )
            parts.append(
                f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()
                + buffer.getvalue()
                + b"\r\n"
            )
        kind = f'multipart/related; type="application/dicom"; boundary={boundary}'
        made.append((kind, b"".join(parts) + f"--{boundary}--\r\n".encode()))
    return made


def store(client: httpx.Client, url: str, payloads: list[Body], token: str | None) -> float:
    """Seconds to store every body, one request after the other; every one must be 200."""
    headers = {"Accept": "application/dicom+json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    started = time.perf_counter()
    for kind, body in payloads:
        answer = client.post(url, content=body, headers={**headers, "Content-Type": kind})
        if answer.status_code != 200:
            raise SystemExit(f"STOW to {url}: HTTP {answer.status_code} {answer.text[:300]}")
    return time.perf_counter() - started


async def register_backend(database_url: str, base: str) -> tuple[str, RSAKey]:
    """A backend client with its own RSA key, registered as `gateway clients add` does."""
    settings = load_settings(_env_file=None, database_url=database_url, public_url=base)
    database = Database(database_url)
    auth = AuthServices.build(settings, database.sessions)
    key = RSAKey.generate_key(2048, parameters={"kid": "bench-stow"})
    try:
        created = await auth.clients.add(
            name="Bench hospital system",
            kind=ClientKind.backend,
            jwks={"keys": [key.as_dict(private=False)]},
            scope=SCOPE,
            operator=True,
        )
        return created.client.client_id, key
    finally:
        await auth.aclose()
        await database.dispose()


def backend_token(client: httpx.Client, base: str, client_id: str, key: RSAKey) -> str:
    """SMART Backend Services: client_credentials with a signed JWT assertion."""
    token_url = f"{base}/oauth/token"
    claims = {
        "iss": client_id,
        "sub": client_id,
        "aud": token_url,
        "exp": int(time.time()) + 240,
        "jti": uuid.uuid4().hex,
    }
    header = {"alg": "RS384", "kid": key.kid, "typ": "JWT"}
    assertion = jwt.encode(header, claims, key, algorithms=["RS384"])
    answer = client.post(
        token_url,
        data={
            "grant_type": "client_credentials",
            "scope": SCOPE,
            "client_assertion_type": JWT_BEARER,
            "client_assertion": assertion,
        },
    )
    answer.raise_for_status()
    return str(answer.json()["access_token"])


def measured(pids: dict[str, int | None], run: Callable[[], float], count: int) -> dict[str, Any]:
    before = {name: cpu_seconds(pid) for name, pid in pids.items()}
    seconds = run()
    return {
        "per_s": count / seconds,
        "cpu_s_per_1000": {
            name: (cpu_seconds(pid) - before[name]) * 1000 / count for name, pid in pids.items()
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--instances", type=int, default=500)
    parser.add_argument("--per-request", type=int, default=50)
    parser.add_argument("--edge", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    paths = ("direct", "gateway")
    # Made before anything is timed: (round, path) -> bodies of a study of its own.
    payloads = {
        (r, path): bodies(args.instances, args.per_request, args.edge)
        for r in range(args.rounds + 1)
        for path in paths
    }
    results: dict[str, list[dict[str, Any]]] = {path: [] for path in paths}
    with tempfile.TemporaryDirectory() as scratch:
        work = Path(scratch)
        with run_orthanc(work / "orthanc") as orthanc:
            database_url = f"sqlite+aiosqlite:///{work / 'gw' / 'gateway.db'}"
            with serve_gateway(
                work / "gw",
                dicomweb_url=orthanc.dicomweb_url,
                auth_required="true",
                log_level="warning",
                database_url=database_url,
            ) as base:
                pid = next(
                    int(p) for p in os.listdir("/proc") if p.isdigit() and _is_gateway(int(p), base)
                )
                client_id, key = asyncio.run(register_backend(database_url, base))
                urls = {
                    "direct": f"{orthanc.dicomweb_url}/studies",
                    "gateway": f"{base}/dicomweb/studies",
                }
                pids: dict[str, dict[str, int | None]] = {
                    "direct": {"orthanc": orthanc.process.pid, "client": None},
                    "gateway": {"orthanc": orthanc.process.pid, "gateway": pid, "client": None},
                }
                with httpx.Client(timeout=600) as client:
                    token = backend_token(client, base, client_id, key)
                    tokens = {"direct": None, "gateway": token}
                    for path in paths:  # warm both paths once (round 0 is not counted)
                        store(client, urls[path], payloads[0, path], tokens[path])
                    for r in range(1, args.rounds + 1):
                        for path in paths[:: 1 if r % 2 else -1]:
                            sent, url, bearer = payloads[r, path], urls[path], tokens[path]
                            results[path].append(
                                measured(
                                    pids[path],
                                    partial(store, client, url, sent, bearer),
                                    args.instances,
                                )
                            )
    direct = statistics.median(x["per_s"] for x in results["direct"])
    gateway = statistics.median(x["per_s"] for x in results["gateway"])
    figures = {
        "instances_per_round": args.instances,
        "per_request": args.per_request,
        "instance_bytes": len(payloads[0, "direct"][0][1]) // min(args.per_request, args.instances),
        "rounds": args.rounds,
        "direct_per_s": round(direct, 1),
        "gateway_per_s": round(gateway, 1),
        "ratio": round(gateway / direct, 2),
        "ratio_per_round": [
            round(g["per_s"] / d["per_s"], 2)
            for g, d in zip(results["gateway"], results["direct"], strict=True)
        ],
        "cpu_seconds_per_1000_instances": {
            path: {
                name: round(statistics.median(x["cpu_s_per_1000"][name] for x in runs), 3)
                for name in runs[0]["cpu_s_per_1000"]
            }
            for path, runs in results.items()
        },
        "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
        "machine": machine(),
        "date": time.strftime("%Y-%m-%d %H:%M"),
    }
    print(json.dumps(figures, indent=2))
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
