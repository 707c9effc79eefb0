"""The production topology on loopback, from Debian packages, for tests, benchmarks
and ``scripts/stack.sh``: nginx in front of gateway replicas on PostgreSQL, in
front of Orthanc with its DICOMweb plugin.

    python -m tests.support.stack start [--dir DIR] [--replicas 2] [--offload nginx]
    python -m tests.support.stack status|stop [--dir DIR]

``start`` leaves every process running in a session of its own and writes
``DIR/stack.json`` (pids, URLs, the database it made); ``stop`` ends those
processes and drops that database. In Python, ``running_stack(workdir)`` does
both around a ``with``. nginx runs from ``deploy/nginx.conf`` rendered into
``DIR/nginx`` with its own prefix (``nginx -p``), never the system service.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import httpx

ROOT = Path(__file__).resolve().parents[2]
TEMPLATE = ROOT / "deploy" / "nginx.conf"
PLACEHOLDER = re.compile(r"\$\{([A-Z][A-Z0-9_]*)\}")
DEFAULT_POSTGRES = "postgresql+asyncpg://postgres@127.0.0.1:5432/test"
NGINX_CANDIDATES = ("/usr/sbin/nginx", "/usr/local/sbin/nginx", "/usr/local/nginx/sbin/nginx")


class StackUnavailable(RuntimeError):
    pass


@dataclass
class Stack:
    workdir: str
    url: str  # nginx: the address clients use (GATEWAY_PUBLIC_URL)
    replicas: list[str]
    pacs_dicomweb_url: str
    database_url: str
    offload: str
    pids: dict[str, int] = field(default_factory=dict)
    created_database: bool = False
    own_orthanc: bool = False

    @property
    def state_file(self) -> Path:
        return Path(self.workdir) / "stack.json"

    def save(self) -> None:
        self.state_file.write_text(json.dumps(asdict(self), indent=2))

    @classmethod
    def load(cls, workdir: Path) -> Stack:
        return cls(**json.loads((workdir / "stack.json").read_text()))


def nginx_binary() -> str:
    found = shutil.which("nginx") or next((c for c in NGINX_CANDIDATES if Path(c).exists()), None)
    if not found:
        raise StackUnavailable("nginx is not installed (apt-get install nginx)")
    return found


def render(template: str, values: Mapping[str, str]) -> str:
    """``${NAME}`` replaced by ``values[NAME]``; a placeholder without a value is an error."""
    missing = sorted(set(PLACEHOLDER.findall(template)) - set(values))
    if missing:
        raise StackUnavailable(f"no value for {', '.join(missing)} in {TEMPLATE.name}")
    return PLACEHOLDER.sub(lambda m: values[m.group(1)], template)


def nginx_values(
    listen: str, replicas: list[str], pacs_dicomweb_url: str, prefix: str = "/_pacs"
) -> dict[str, str]:
    pacs = urlsplit(pacs_dicomweb_url)
    return {
        "NGINX_LISTEN": listen,
        "GATEWAY_SERVERS": " ".join(f"server {urlsplit(r).netloc};" for r in replicas),
        "PACS_SERVER": pacs.netloc,
        "PACS_DICOMWEB_PATH": pacs.path.rstrip("/"),
        "PACS_AUTHORIZATION": "",
        "OFFLOAD_PREFIX": prefix,
    }


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_nginx(folder: Path, config: str) -> subprocess.Popen[bytes]:
    """nginx with its own prefix, in the foreground of a session of its own."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "nginx.conf").write_text(config)
    binary = nginx_binary()
    command = [binary, "-p", f"{folder}/", "-c", "nginx.conf", "-e", "stderr"]
    checked = subprocess.run([*command, "-t"], capture_output=True, text=True)
    if checked.returncode != 0:
        raise StackUnavailable(f"nginx refused its configuration:\n{checked.stderr}")
    with (folder / "nginx.log").open("wb") as log:
        return subprocess.Popen(
            [*command, "-g", "daemon off;"],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def _gateway_env(settings: Mapping[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    env.update({f"GATEWAY_{k.upper()}": v for k, v in settings.items()})
    env["PYTHONPATH"] = str(ROOT)
    return env


def _wait(url: str, process: subprocess.Popen[bytes], log: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with suppress(httpx.TransportError):
            if httpx.get(url, timeout=2).status_code == 200:
                return
        if process.poll() is not None:
            raise StackUnavailable(f"{url} exited at start:\n{log.read_text(errors='replace')}")
        time.sleep(0.1)
    raise StackUnavailable(f"{url} not ready within {timeout} s:\n{log.read_text()[-3000:]}")


async def _admin(admin_url: str, statement: str) -> None:
    from sqlalchemy import text

    from gateway.store.database import Database

    admin = Database(admin_url)
    try:
        autocommit = admin.engine.execution_options(isolation_level="AUTOCOMMIT")
        async with autocommit.connect() as connection:
            await connection.execute(text(statement))
    finally:
        await admin.dispose()


def _admin_url() -> str:
    return os.environ.get("GATEWAY_TEST_POSTGRES_URL", DEFAULT_POSTGRES)


def start(
    workdir: Path,
    *,
    replicas: int = 2,
    offload: str = "nginx",
    dicomweb_url: str | None = None,
    database_url: str | None = None,
    settings: Mapping[str, str] | None = None,
) -> Stack:
    """Start the topology and return when nginx and every replica answer /readyz.

    ``dicomweb_url`` reuses a running PACS (else a private Orthanc starts);
    ``database_url`` a PostgreSQL database (else a throwaway one is made in the
    local cluster and dropped by ``stop``). ``settings`` go to every replica.
    """
    from tests.support.orthanc import start_orthanc

    workdir = workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    nginx_port = free_port()
    url = f"http://127.0.0.1:{nginx_port}"
    stack = Stack(
        workdir=str(workdir),
        url=url,
        replicas=[f"http://127.0.0.1:{free_port()}" for _ in range(replicas)],
        pacs_dicomweb_url=dicomweb_url or "",
        database_url=database_url or "",
        offload=offload,
    )
    stack.save()
    try:
        if not dicomweb_url:
            orthanc = start_orthanc(workdir / "orthanc", detached=True)
            stack.pacs_dicomweb_url = orthanc.dicomweb_url
            stack.pids["orthanc"] = orthanc.process.pid
            stack.own_orthanc = True
            stack.save()
        if not database_url:
            name = f"gateway_stack_{uuid.uuid4().hex[:10]}"
            asyncio.run(_admin(_admin_url(), f'CREATE DATABASE "{name}"'))
            stack.database_url = _admin_url().rsplit("/", 1)[0] + f"/{name}"
            stack.created_database = True
            stack.save()
        shared = {
            "dicomweb_url": stack.pacs_dicomweb_url,
            "database_url": stack.database_url,
            "public_url": url,
            "offload": offload,
            "forwarded_allow_ips": "127.0.0.1",
            "log_level": "warning",
            **(settings or {}),
        }
        gateway = [sys.executable, "-m", "gateway"]
        upgrade = subprocess.run(
            [*gateway, "db", "upgrade"],
            env=_gateway_env({**shared, "data_dir": str(workdir / "gateway-1")}),
            capture_output=True,
            text=True,
        )
        if upgrade.returncode != 0:
            raise StackUnavailable(f"gateway db upgrade failed:\n{upgrade.stdout}{upgrade.stderr}")
        for number, replica in enumerate(stack.replicas, start=1):
            folder = workdir / f"gateway-{number}"
            folder.mkdir(exist_ok=True)
            log = folder / "gateway.log"
            env = _gateway_env({**shared, "data_dir": str(folder)})
            port = urlsplit(replica).port
            with log.open("wb") as out:
                process = subprocess.Popen(
                    [*gateway, "serve", "--host", "127.0.0.1", "--port", str(port)],
                    env=env,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            stack.pids[f"gateway-{number}"] = process.pid
            stack.save()
            _wait(f"{replica}/readyz", process, log)
        template = TEMPLATE.read_text()
        values = nginx_values(
            f"127.0.0.1:{nginx_port}",
            stack.replicas,
            stack.pacs_dicomweb_url,
            shared.get("offload_prefix", "/_pacs"),
        )
        nginx = start_nginx(workdir / "nginx", render(template, values))
        stack.pids["nginx"] = nginx.pid
        stack.save()
        _wait(f"{url}/readyz", nginx, workdir / "nginx" / "nginx.log")
    except BaseException:
        stop(workdir)
        raise
    return stack


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A child of this process that exited stays a zombie until reaped.
    with suppress(ChildProcessError):
        if os.waitpid(pid, os.WNOHANG)[0] == pid:
            return False
    return True


def _end(pid: int, timeout: float = 10) -> None:
    with suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    if _alive(pid):
        with suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def stop(workdir: Path) -> None:
    """End what ``start`` started (nginx first), and drop the database it made."""
    workdir = workdir.resolve()
    if not (workdir / "stack.json").exists():
        return
    stack = Stack.load(workdir)
    order = ["nginx", *sorted(k for k in stack.pids if k.startswith("gateway-")), "orthanc"]
    for name in order:
        if name in stack.pids:
            _end(stack.pids[name])
    if stack.created_database and stack.database_url:
        name = stack.database_url.rsplit("/", 1)[1]
        with suppress(Exception):
            asyncio.run(_admin(_admin_url(), f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    stack.pids.clear()
    stack.save()


def status(workdir: Path) -> dict[str, object]:
    stack = Stack.load(workdir.resolve())
    return {
        "url": stack.url,
        "replicas": stack.replicas,
        "pacs": stack.pacs_dicomweb_url,
        "database": stack.database_url,
        "offload": stack.offload,
        "processes": {name: _alive(pid) for name, pid in stack.pids.items()},
    }


@contextmanager
def running_stack(workdir: Path, **options: object) -> Iterator[Stack]:
    stack = start(workdir, **options)  # type: ignore[arg-type]
    try:
        yield stack
    finally:
        stop(workdir)


def main() -> None:
    parser = argparse.ArgumentParser(description="nginx + gateway replicas + Orthanc on loopback")
    parser.add_argument("command", choices=["start", "stop", "status"])
    parser.add_argument("--dir", type=Path, default=ROOT / "var" / "stack")
    parser.add_argument("--replicas", type=int, default=2)
    parser.add_argument("--offload", choices=["nginx", "off"], default="nginx")
    parser.add_argument("--dicomweb-url", help="a running PACS (default: a private Orthanc)")
    parser.add_argument("--database-url", help="a PostgreSQL database (default: a new one)")
    args = parser.parse_args()
    if args.command == "start":
        if (args.dir / "stack.json").exists() and any(
            status(args.dir)["processes"].values()  # type: ignore[attr-defined]
        ):
            raise SystemExit(f"a stack is already running in {args.dir}: stop it first")
        stack = start(
            args.dir,
            replicas=args.replicas,
            offload=args.offload,
            dicomweb_url=args.dicomweb_url,
            database_url=args.database_url,
        )
        print(f"gateway (through nginx): {stack.url}")
        for number, replica in enumerate(stack.replicas, start=1):
            print(f"replica {number}:               {replica}")
        print(f"PACS DICOMweb:           {stack.pacs_dicomweb_url}")
        print(f"database:                {stack.database_url}")
        print(f"state and logs:          {stack.workdir}")
    elif args.command == "stop":
        stop(args.dir)
        print(f"stopped the stack in {args.dir.resolve()}")
    else:
        if not (args.dir / "stack.json").exists():
            raise SystemExit(f"no stack in {args.dir}")
        print(json.dumps(status(args.dir), indent=2))


if __name__ == "__main__":
    main()
