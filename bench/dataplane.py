"""WADO-RS study retrieval four ways: Orthanc directly, plain nginx, the gateway alone,
and the gateway behind nginx with offload (issue 12).

    .venv/bin/python bench/dataplane.py [--megabytes 520] [--rounds 5] [--json out.json]

Builds one synthetic CT study of about --megabytes (bench/dicomweb.py's
generator), starts the deployed topology (tests/support/stack.py: nginx from
deploy/nginx.conf, one gateway replica with GATEWAY_OFFLOAD=nginx on a
throwaway PostgreSQL database, a private Orthanc) and loads the study. Beside
it: a plain nginx reverse proxy to Orthanc (same 256 KiB buffers, nothing
else), and a `gateway serve` with offload off on the same database. Tokens are
required: each round gets a fresh backend token (system/*.rs).

Each round retrieves the whole study as multipart/related (application/dicom)
once per path, in a rotating order, reading in 1 MiB chunks:

- direct:  Orthanc's /dicom-web/studies/{uid}
- nginx:   the plain proxy's /dicom-web/studies/{uid}
- gateway: the offload-off gateway's /dicomweb/studies/{uid}
- offload: nginx's /dicomweb/studies/{uid} (a replica decides, nginx moves the bytes)

Reports each path's median MB/s and its ratio to direct, offload / nginx
(target >= 0.95), and the RSS growth of the offloading replica and of the
offload-off gateway (peak VmHWM minus VmRSS after a warm-up; target <= 64 MB).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.dicomweb import pull, rss_kib, upload, write_study  # noqa: E402
from bench.support import machine  # noqa: E402
from gateway.auth.clients import ClientKind  # noqa: E402
from gateway.auth.service import AuthServices  # noqa: E402
from gateway.settings import load_settings  # noqa: E402
from gateway.store.database import Database  # noqa: E402
from tests.conftest import serve_gateway  # noqa: E402
from tests.support.stack import free_port, running_stack, start_nginx  # noqa: E402

PLAIN_NGINX = """
worker_processes auto;
pid nginx.pid;
error_log stderr warn;
events { worker_connections 1024; }
http {
    access_log off;
    proxy_max_temp_file_size 0;
    proxy_buffer_size 256k;
    proxy_buffers 4 256k;
    proxy_busy_buffers_size 256k;
    upstream pacs { server PACS; keepalive 32; }
    server {
        listen 127.0.0.1:PORT;
        location / {
            proxy_pass http://pacs;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }
    }
}
"""


class Tokens:
    """Backend tokens for one registered client, straight from the token service."""

    def __init__(self, database_url: str) -> None:
        self.database_url = database_url
        self.client_id = asyncio.run(self._run(self._register))

    async def _run(self, action: Any) -> Any:
        settings = load_settings(_env_file=None, database_url=self.database_url)
        database = Database(self.database_url)
        auth = AuthServices.build(settings, database.sessions)
        try:
            return await action(auth)
        finally:
            await auth.aclose()
            await database.dispose()

    @staticmethod
    async def _register(auth: AuthServices) -> str:
        created = await auth.clients.add(
            name="dataplane bench",
            kind=ClientKind.backend,
            jwks={"keys": []},
            scope="system/*.rs",
            operator=True,
        )
        return created.client.client_id

    def header(self) -> dict[str, str]:
        async def issue(auth: AuthServices) -> Any:
            return await auth.tokens.client_credentials(self.client_id, ["system/*.rs"])

        token = asyncio.run(self._run(issue))
        return {"Authorization": f"Bearer {token['access_token']}"}


def pid_listening(url: str) -> int:
    """The pid of the process serving ``url``'s port (from /proc/net/tcp and fds)."""
    import os

    port = int(url.rsplit(":", 1)[1].split("/")[0])
    inodes = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if int(fields[1].split(":")[1], 16) == port and fields[3] == "0A":
            inodes.add(fields[9])
    for pid in (p for p in os.listdir("/proc") if p.isdigit()):
        try:
            for fd in Path(f"/proc/{pid}/fd").iterdir():
                if os.readlink(fd).removeprefix("socket:[").removesuffix("]") in inodes:
                    return int(pid)
        except OSError:
            continue
    raise RuntimeError(f"nothing listens on {url}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--megabytes", type=int, default=520)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        work = Path(scratch)
        study, count = write_study(work / "study", args.megabytes)
        with running_stack(work / "stack", replicas=1, offload="nginx") as stack:
            upload(stack.pacs_dicomweb_url.removesuffix("/dicom-web"), work / "study")
            pacs = httpx.URL(stack.pacs_dicomweb_url)
            plain_port = free_port()
            config = PLAIN_NGINX.replace("PACS", f"{pacs.host}:{pacs.port}").replace(
                "PORT", str(plain_port)
            )
            plain = start_nginx(work / "plain-nginx", config)
            tokens = Tokens(stack.database_url)
            try:
                time.sleep(0.5)
                with serve_gateway(
                    work / "gateway",
                    dicomweb_url=stack.pacs_dicomweb_url,
                    database_url=stack.database_url,
                    auth_required="true",
                    log_level="warning",
                ) as gateway_url:
                    figures = measure(
                        {
                            "direct": f"{stack.pacs_dicomweb_url}/studies/{study}",
                            "nginx": f"http://127.0.0.1:{plain_port}{pacs.path}/studies/{study}",
                            "gateway": f"{gateway_url}/dicomweb/studies/{study}",
                            "offload": f"{stack.url}/dicomweb/studies/{study}",
                        },
                        {
                            "gateway": pid_listening(gateway_url),
                            "offload": pid_listening(stack.replicas[0]),
                        },
                        tokens,
                        args.rounds,
                    )
            finally:
                plain.terminate()
                plain.wait(timeout=10)
    report = {
        "command": " ".join(["bench/dataplane.py", *sys.argv[1:]]),
        "machine": machine(),
        "date": datetime.now(UTC).date().isoformat(),
        "instances": count,
        "rounds": args.rounds,
        **figures,
    }
    text = json.dumps(report, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")


def measure(
    urls: dict[str, str], pids: dict[str, int], tokens: Tokens, rounds: int
) -> dict[str, Any]:
    names = list(urls)
    speeds: dict[str, list[float]] = {name: [] for name in names}
    sizes: dict[str, int] = {}
    with httpx.Client(timeout=600) as client:
        auth = tokens.header()
        for name in names:  # warm every path once
            client.headers.update(auth if name in pids else {})
            pull(client, urls[name])
            client.headers.pop("Authorization", None)
        baseline = {name: rss_kib(pid, "VmRSS") for name, pid in pids.items()}
        for number in range(rounds):
            auth = tokens.header()
            order = names[number % len(names) :] + names[: number % len(names)]
            for name in order:
                client.headers.update(auth if name in pids else {})
                size, seconds = pull(client, urls[name])
                client.headers.pop("Authorization", None)
                sizes[name] = size
                speeds[name].append(size / seconds / 1e6)
        peaks = {name: rss_kib(pid, "VmHWM") for name, pid in pids.items()}
    median = {name: statistics.median(values) for name, values in speeds.items()}
    if len(set(sizes.values())) != 1:
        raise SystemExit(f"the paths answered different sizes: {sizes}")
    return {
        "study_megabytes": round(sizes["direct"] / 1e6, 1),
        "paths": {
            name: {
                "mb_per_s": round(median[name], 1),
                "ratio_to_direct": round(median[name] / median["direct"], 3),
                "each_round_mb_per_s": [round(v, 1) for v in speeds[name]],
            }
            for name in names
        },
        "offload_over_nginx": round(median["offload"] / median["nginx"], 3),
        "rss_growth_mb": {name: round((peaks[name] - baseline[name]) / 1024, 1) for name in pids},
        "rss_baseline_mb": {name: round(baseline[name] / 1024, 1) for name in pids},
    }


if __name__ == "__main__":
    main()
