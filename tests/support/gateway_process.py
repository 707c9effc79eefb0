"""A real ``gateway serve`` process that a test can kill (SIGKILL) and start again.

``tests.conftest.serve_gateway`` serves for the length of a ``with``; crash tests
need the process itself: kill it at a chosen moment, then start a new one on
the same port, database and data folder, as a supervisor would.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from tests.conftest import free_port


class GatewayProcess:
    def __init__(self, workdir: Path, **settings: str) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.workdir = workdir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
        env.update({f"GATEWAY_{k.upper()}": v for k, v in settings.items()})
        env.setdefault("GATEWAY_DATA_DIR", str(workdir / "var"))
        env.setdefault("GATEWAY_DATABASE_URL", f"sqlite+aiosqlite:///{workdir / 'gateway.db'}")
        env.setdefault("GATEWAY_PUBLIC_URL", self.url)
        self.env = env
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0

    @property
    def log(self) -> str:
        return "\n".join(
            (self.workdir / f"gateway-{n}.log").read_text(errors="replace")
            for n in range(1, self.starts + 1)
        )

    def spawn(self) -> subprocess.Popen[bytes]:
        """Start the process and return at once (``start`` waits until it is ready)."""
        self.starts += 1
        with (self.workdir / f"gateway-{self.starts}.log").open("wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "gateway", "serve", "--port", str(self.port), "--migrate"],
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        return self.process

    def start(self, ready: str = "/readyz", timeout: float = 30.0) -> None:
        self.spawn()
        assert self.process is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if httpx.get(self.url + ready, timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if self.process.poll() is not None:
                raise RuntimeError(f"gateway exited at start:\n{self.log[-3000:]}")
            time.sleep(0.05)
        raise RuntimeError(f"gateway not ready within {timeout} s:\n{self.log[-3000:]}")

    def kill(self) -> None:
        """SIGKILL: no shutdown, no flush, no lifespan end."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.kill()


@contextmanager
def gateway_process(workdir: Path, **settings: str) -> Iterator[GatewayProcess]:
    gateway = GatewayProcess(workdir, **settings)
    gateway.start()
    try:
        yield gateway
    finally:
        gateway.stop()
