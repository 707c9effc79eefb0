"""A PACS too slow to answer within GATEWAY_PACS_TIMEOUT_SECONDS: 503 with Retry-After
(SMART Imaging Access, "Slow backends"), on FHIR search, QIDO-RS and WADO-RS alike,
and the connection is not held for the PACS's read timeout."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import orjson
import pytest
from starlette.testclient import TestClient

from gateway.app import create_app
from gateway.dicomweb import dicomjson as dj
from tests.conftest import make_settings, migrate

STUDY = "1.2.826.0.1.3680043.9.7.1"
SERIES = "1.2.826.0.1.3680043.9.7.1.1"
INSTANCE = "1.2.826.0.1.3680043.9.7.1.1.1"
RECORD = {
    dj.tag("StudyInstanceUID"): dj.element("UI", STUDY),
    dj.tag("SeriesInstanceUID"): dj.element("UI", SERIES),
    dj.tag("SOPInstanceUID"): dj.element("UI", INSTANCE),
    dj.tag("SOPClassUID"): dj.element("UI", "1.2.840.10008.5.1.4.1.1.2"),
    dj.tag("Modality"): dj.element("CS", "CT"),
    dj.tag("PatientID"): dj.element("LO", "SLOW-1"),
}


class SlowPacs(BaseHTTPRequestHandler):
    """Answers QIDO at once unless ``slow_search``; holds retrievals ``delay`` seconds."""

    slow_search = False
    delay = 5.0
    released = threading.Event()

    def do_GET(self) -> None:
        searching = (
            "/studies/" not in self.path
            or "?" in self.path
            or self.path.endswith(("/instances", "/series"))
        )
        if not searching or self.slow_search:
            self.released.wait(self.delay)  # the "slow socket": nothing sent meanwhile
        try:
            self.send_response(200)
            if searching:
                self.send_header("Content-Type", "application/dicom+json")
                self.end_headers()
                self.wfile.write(orjson.dumps([RECORD]))
            else:
                self.send_header(
                    "Content-Type", 'multipart/related; type="application/dicom"; boundary=b'
                )
                self.end_headers()
                self.wfile.write(b"--b--\r\n")
        except OSError:
            pass  # the gateway gave up and closed

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(params=[False, True], ids=["slow-retrieval", "slow-search"])
def slow_pacs(request: pytest.FixtureRequest) -> Iterator[tuple[str, bool]]:
    handler = type(
        "Handler", (SlowPacs,), {"slow_search": request.param, "released": threading.Event()}
    )
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/dicom-web", request.param
    handler.released.set()
    server.shutdown()


def test_a_slow_pacs_is_503_with_retry_after(tmp_path: Path, slow_pacs: tuple[str, bool]) -> None:
    """The PACS holds its answer 5 s and the read timeout is 60 s: only the 0.5 s budget
    can turn the request into a 503 (without it, each would be a 200 after 5 s)."""
    url, slow_search = slow_pacs
    settings = make_settings(
        tmp_path,
        dicomweb_url=url,
        upstream_read_timeout=60,
        pacs_timeout_seconds=0.5,
        pacs_retry_after_seconds=7,
    )
    migrate(settings)
    with TestClient(create_app(settings)) as client:
        paths = [f"/dicomweb/studies/{STUDY}", f"/dicomweb/studies/{STUDY}/series/{SERIES}"]
        if slow_search:
            paths += ["/fhir/ImagingStudy?modality=CT", "/dicomweb/studies?PatientID=SLOW-1"]
        else:  # searches are answered: the budget is per request to the PACS
            answered = client.get("/fhir/ImagingStudy?modality=CT")
            assert answered.status_code == 200, answered.text
        for path in paths:
            response = client.get(path)
            assert response.status_code == 503, (path, response.text)
            assert response.headers["retry-after"] == "7"
            if path.startswith("/fhir"):
                assert response.json()["resourceType"] == "OperationOutcome"
            else:
                assert response.headers["warning"].startswith("299 ")
