"""`gateway serve` under real uvicorn: stalled bodies, secrets in URLs, proxies, a database away.

Each test talks HTTP (or a raw socket) to a child process started as an
operator would start it, and reads what that process logged.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from tests.auth.test_authorize import hidden
from tests.conftest import serve_gateway

pytestmark = pytest.mark.slow
TIMEOUT = 1.0
LIMIT = 3
SECRET = "eyJhbGciOiJSUzI1NiJ9.c2VjcmV0LXRva2VuLWluLXVybA.c2lnbmF0dXJl"


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    workdir = tmp_path_factory.mktemp("served-hardening")
    with serve_gateway(
        workdir, body_timeout=str(TIMEOUT), secret_attempts_per_ip=str(LIMIT)
    ) as base:
        yield base, workdir / "gateway.log"


def _stalled(base: str, request_head: str, sent: bytes) -> tuple[bytes, float, bytes]:
    """Send a head promising more than ``sent``, then only that; (answer, seconds, what follows)."""
    host, port = base.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=15) as sock:
        head = f"{request_head}\r\nHost: {host}\r\n\r\n"
        started = time.monotonic()
        sock.sendall(head.encode() + sent)
        answer = b""
        while b"\r\n\r\n" not in answer:
            chunk = sock.recv(65536)
            if not chunk:
                break
            answer += chunk
        took = time.monotonic() - started
        rest = b""
        while chunk := sock.recv(65536):  # the server closes: recv returns b"" (no hang)
            rest += chunk
        return answer + rest, took, rest


@pytest.mark.parametrize(
    ("request_head", "media"),
    [
        (
            "POST /dicomweb/studies HTTP/1.1\r\nContent-Length: 1048576\r\n"
            'Content-Type: multipart/related; type="application/dicom"; boundary=b',
            "text/plain",
        ),
        (
            "POST /oauth/token HTTP/1.1\r\nContent-Length: 1000\r\n"
            "Content-Type: application/x-www-form-urlencoded",
            "application/json",
        ),
        (
            "POST /oauth/register HTTP/1.1\r\nContent-Length: 1000\r\n"
            "Content-Type: application/json",
            "application/json",
        ),
    ],
)
def test_a_body_that_stops_arriving_gets_408_and_a_closed_connection(
    served: tuple[str, Path], request_head: str, media: str
) -> None:
    base, _ = served
    answer, took, _ = _stalled(base, request_head, b"0123456789")
    assert answer.startswith(b"HTTP/1.1 408 "), answer[:200]
    assert took < TIMEOUT + 10, took  # answered, not held open
    head = answer.split(b"\r\n\r\n", 1)[0].lower()
    assert b"connection: close" in head
    assert f"content-type: {media}".encode() in head


def test_a_token_in_the_url_never_reaches_the_log(served: tuple[str, Path]) -> None:
    base, log = served
    refused = httpx.get(f"{base}/fhir/ImagingStudy?access_token={SECRET}&_count=1")
    assert refused.status_code in (200, 400, 401)
    httpx.get(f"{base}/oauth/authorize?response_type=code&code={SECRET}&state=1")
    httpx.get(f"{base}/fhir/metadata", headers={"Authorization": f"Bearer {SECRET}"})
    time.sleep(0.5)  # the access log is written as the answer leaves
    text = log.read_text(errors="replace")
    assert "access_token=[masked]" in text
    assert SECRET not in text


def _sign_in_failures(base: str, count: int, forwarded: Callable[[int], str]) -> list[int]:
    """Wrong access codes, one browser; the statuses of ``count`` tries."""
    statuses = []
    with httpx.Client(base_url=base) as browser:
        for attempt in range(count):
            page = browser.get("/portal/signin").text
            answer = browser.post(
                "/portal/signin",
                data={
                    "csrf_token": hidden(page, "csrf_token"),
                    "mode": "patient",
                    "access_code": f"{10000000 + attempt}",
                    "passphrase": "wrong wrong wrong",
                },
                headers={"X-Forwarded-For": forwarded(attempt)},
            )
            statuses.append(answer.status_code)
    return statuses


def test_rotating_x_forwarded_for_does_not_escape_the_limit_by_default(
    served: tuple[str, Path],
) -> None:
    base, _ = served
    statuses = _sign_in_failures(base, LIMIT + 3, lambda n: f"203.0.113.{n + 1}")
    assert 429 not in statuses[:LIMIT], statuses
    assert statuses[LIMIT:] == [429] * 3, statuses


def test_behind_a_trusted_proxy_the_limit_keys_on_the_forwarded_address(tmp_path: Path) -> None:
    with serve_gateway(
        tmp_path, secret_attempts_per_ip=str(LIMIT), forwarded_allow_ips="127.0.0.1"
    ) as base:
        rotating = _sign_in_failures(base, LIMIT + 3, lambda n: f"198.51.100.{n + 1}")
        assert 429 not in rotating, rotating  # each address has its own budget
        one = _sign_in_failures(base, LIMIT + 2, lambda n: "192.0.2.7")
        assert one[LIMIT:] == [429, 429], one


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.parametrize("kind", ["postgres", "sqlite"])
def test_serve_against_an_unreachable_database_is_one_line_and_status_2(
    tmp_path: Path, kind: str
) -> None:
    if kind == "postgres":
        url = f"postgresql+asyncpg://gateway:hunter2pw@127.0.0.1:{_closed_port()}/gateway"
        shown = "127.0.0.1"
    else:
        (tmp_path / "a-folder").mkdir()
        url = f"sqlite+aiosqlite:///{tmp_path / 'a-folder'}"
        shown = "a-folder"
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    env.update(GATEWAY_DATABASE_URL=url, GATEWAY_DATA_DIR=str(tmp_path / "var"))
    done = subprocess.run(
        [sys.executable, "-m", "gateway", "serve", "--port", str(_closed_port())],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert "cannot reach the database" in lines[0] and shown in lines[0]
    assert "hunter2pw" not in done.stderr and "Traceback" not in done.stderr
