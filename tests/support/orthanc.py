"""A private Orthanc with its DICOMweb plugin, for tests and benchmarks.

Temporary storage, free ports, loopback only; the system service is never used.
"""

from __future__ import annotations

import json
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import requests

PLUGIN_CANDIDATES = (
    "/usr/share/orthanc/plugins/libOrthancDicomWeb.so",
    "/usr/lib/orthanc/libOrthancDicomWeb.so",
)


class OrthancUnavailable(RuntimeError):
    pass


@dataclass
class OrthancServer:
    http_url: str
    workdir: Path
    process: subprocess.Popen[bytes]

    @property
    def dicomweb_url(self) -> str:
        return f"{self.http_url}/dicom-web"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _binary() -> str:
    found = shutil.which("Orthanc") or (
        "/usr/sbin/Orthanc" if Path("/usr/sbin/Orthanc").exists() else None
    )
    if not found:
        raise OrthancUnavailable(
            "Orthanc is not installed (apt-get install orthanc orthanc-dicomweb)"
        )
    return found


def _plugin() -> str:
    for candidate in PLUGIN_CANDIDATES:
        if Path(candidate).exists():
            return candidate
    versioned = sorted(Path("/usr/lib/orthanc").glob("libOrthancDicomWeb.so*"))
    if versioned:
        return str(versioned[-1])
    raise OrthancUnavailable(
        "the Orthanc DICOMweb plugin is not installed (apt-get install orthanc-dicomweb)"
    )


def start_orthanc(
    workdir: Path,
    *,
    binary: str | None = None,
    http_port: int | None = None,
    detached: bool = False,
) -> OrthancServer:
    """Start an Orthanc and wait until it answers; the caller stops ``server.process``.
    ``detached``: in a session of its own, to outlive the caller (scripts/stack.sh)."""
    workdir.mkdir(parents=True, exist_ok=True)
    storage = workdir / "storage"
    storage.mkdir(exist_ok=True)
    http_port = http_port or _free_port()
    config = {
        "Name": f"test-{http_port}",
        "StorageDirectory": str(storage),
        "IndexDirectory": str(storage),
        "HttpPort": http_port,
        "RemoteAccessAllowed": False,  # loopback only
        "AuthenticationEnabled": False,
        "DicomServerEnabled": False,
        "StorageCompression": False,
        "OverwriteInstances": True,
        "ConcurrentJobs": 2,
        "HttpTimeout": 60,
        # One thread per kept-alive connection: the default 50 left half of
        # bench/load.py's 100 direct clients waiting until they timed out.
        "HttpThreadsCount": 128,
        "Plugins": [_plugin()],
        "DicomWeb": {
            "Enable": True,
            "Root": "/dicom-web/",
            "EnableWado": True,
            "StudiesMetadata": "Full",
            "SeriesMetadata": "Full",
        },
    }
    config_path = workdir / "orthanc.json"
    config_path.write_text(json.dumps(config, indent=2))
    log_path = workdir / "orthanc.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [binary or _binary(), str(config_path)],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=detached,
        )
    server = OrthancServer(f"http://127.0.0.1:{http_port}", workdir, process)
    try:
        deadline = time.monotonic() + 30
        while True:
            if process.poll() is not None:
                tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-40:])
                raise OrthancUnavailable(f"Orthanc exited at start:\n{tail}")
            try:
                if requests.get(f"{server.http_url}/system", timeout=1).ok:
                    break
            except requests.RequestException:
                pass
            if time.monotonic() > deadline:
                raise OrthancUnavailable("Orthanc did not answer within 30 s")
            time.sleep(0.1)
    except BaseException:
        stop_process(process)
        raise
    return server


def stop_process(process: subprocess.Popen[bytes]) -> None:
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@contextmanager
def run_orthanc(
    workdir: Path, *, binary: str | None = None, http_port: int | None = None
) -> Iterator[OrthancServer]:
    """``http_port`` and an existing ``workdir`` restart an Orthanc where it was (fault tests)."""
    server = start_orthanc(workdir, binary=binary, http_port=http_port)
    try:
        yield server
    finally:
        stop_process(server.process)


def upload_files(server: OrthancServer, paths: Iterable[Path]) -> int:
    """Orthanc's own REST upload: a test convenience (the product uses STOW-RS)."""
    count = 0
    with requests.Session() as session:
        for path in paths:
            session.post(f"{server.http_url}/instances", data=path.read_bytes()).raise_for_status()
            count += 1
    return count
