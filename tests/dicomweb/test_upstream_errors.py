"""A PACS that is down, slow or broken: 503 + Retry-After, 502; never a 500."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from gateway.app import create_app
from tests.conftest import make_settings, migrate


class Broken(BaseHTTPRequestHandler):
    mode = "garbage"

    def do_GET(self) -> None:
        if self.mode == "slow":
            time.sleep(3)
        if self.mode == "error":
            self.send_response(500)
            self.end_headers()
            self.wfile.write(b"Traceback (most recent call last): secret internals")
            return
        self.send_response(200)
        self.send_header("Content-Type", "application/dicom+json")
        self.end_headers()
        self.wfile.write(b"<html>this is not DICOM JSON</html>")

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def broken_pacs(request: pytest.FixtureRequest) -> Iterator[str]:
    handler = type("Handler", (Broken,), {"mode": request.param})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/dicom-web"
    server.shutdown()


def client_for(tmp_path: Path, url: str) -> TestClient:
    settings = make_settings(tmp_path, dicomweb_url=url, upstream_read_timeout=0.5)
    migrate(settings)
    return TestClient(create_app(settings))


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_unreachable_pacs_is_503_with_retry_after(tmp_path: Path) -> None:
    with client_for(tmp_path, f"http://127.0.0.1:{closed_port()}/dicom-web") as client:
        response = client.get("/fhir/ImagingStudy")
        assert response.status_code == 503
        assert response.headers["retry-after"].isdigit()
        assert response.json()["resourceType"] == "OperationOutcome"
        ready = client.get("/readyz")
        assert ready.status_code == 503 and ready.json()["checks"]["archive"] != "ok"


@pytest.mark.parametrize(
    ("broken_pacs", "status"),
    [("slow", 503), ("garbage", 502), ("error", 502)],
    indirect=["broken_pacs"],
)
def test_broken_pacs_answers(tmp_path: Path, broken_pacs: str, status: int) -> None:
    with client_for(tmp_path, broken_pacs) as client:
        for path in ("/fhir/ImagingStudy", "/fhir/ImagingStudy/1.2.3", "/fhir/Patient?name=x"):
            response = client.get(path)
            assert response.status_code == status, (path, response.text)
            if status == 503:  # too slow: when to ask again
                assert response.headers["retry-after"].isdigit()
            body = response.json()
            assert body["resourceType"] == "OperationOutcome"
            assert "secret" not in response.text and "Traceback" not in response.text
