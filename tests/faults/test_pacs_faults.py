"""A real Orthanc behind a real ``gateway serve`` is killed or frozen mid-request.

- SIGKILL while a large WADO-RS study retrieve streams through the gateway: the
  client must see the body break off (a transport error), never a clean end of
  a 200 that silently lacks instances. Orthanc restarted on the same port and
  storage: the gateway serves again, without a restart of its own.
- SIGSTOP past the gateway's read timeout (2 s here): a new request gets the
  documented 503 with ``Retry-After`` (docs/configuration.md,
  ``GATEWAY_UPSTREAM_READ_TIMEOUT``, ``GATEWAY_PACS_TIMEOUT_SECONDS``) within the
  timeout plus slack, a stream in progress breaks off, and the
  worker keeps answering what needs no PACS (``/healthz``, ``/fhir/metadata``)
  meanwhile. SIGCONT: it serves again.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from io import BytesIO
from pathlib import Path

import httpx
import numpy as np
import pytest
import requests
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from tests.conftest import free_port, serve_gateway
from tests.faults.support import Findings, timed
from tests.support.orthanc import OrthancServer, run_orthanc

pytestmark = [pytest.mark.slow, pytest.mark.orthanc]
READ_TIMEOUT = 2.0
SLACK = 8.0
INSTANCES = 40
SIDE = 1024  # 16-bit pixels: 2 MiB an instance, 80 MiB the study
WADO = {"Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*'}


@dataclass
class Pacs:
    workdir: Path
    port: int
    study: str
    size: int
    gateway: str
    orthanc: OrthancServer
    stack: ExitStack = field(default_factory=ExitStack)

    def restart(self) -> None:
        self.orthanc = self.stack.enter_context(run_orthanc(self.workdir, http_port=self.port))


def _large_study(server: OrthancServer) -> str:
    """Random pixels (incompressible), so the study cannot fit in the sockets' buffers."""
    template = dcmread(get_testdata_file("CT_small.dcm"))
    study, series = generate_uid(), generate_uid()
    rng = np.random.default_rng(11)
    with requests.Session() as session:
        for number in range(INSTANCES):
            ds = template.copy()
            ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
            ds.SOPInstanceUID = generate_uid()
            ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
            ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
            ds.InstanceNumber = number + 1
            ds.Rows = ds.Columns = SIDE
            ds.PixelData = rng.integers(0, 4096, SIDE * SIDE, dtype=np.uint16).tobytes()
            buffer = BytesIO()
            ds.save_as(buffer, enforce_file_format=True)
            session.post(f"{server.http_url}/instances", data=buffer.getvalue()).raise_for_status()
    return study


@pytest.fixture(scope="module")
def pacs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pacs]:
    workdir = tmp_path_factory.mktemp("pacs")
    port = free_port()
    with ExitStack() as stack:
        orthanc = stack.enter_context(run_orthanc(workdir / "orthanc", http_port=port))
        study = _large_study(orthanc)
        with requests.get(
            f"{orthanc.dicomweb_url}/studies/{study}", headers=WADO, stream=True, timeout=60
        ) as whole:
            size = sum(len(chunk) for chunk in whole.iter_content(1 << 20))
        gateway = stack.enter_context(
            serve_gateway(
                workdir / "gateway",
                dicomweb_url=orthanc.dicomweb_url,
                upstream_read_timeout=str(READ_TIMEOUT),
            )
        )
        made = Pacs(workdir / "orthanc", port, study, size, gateway, orthanc)
        stack.enter_context(made.stack)
        yield made


def _stream(url: str, during: threading.Event, act: object) -> tuple[str, int, float]:
    """Retrieve ``url``; after the first MiB, run ``act``. (outcome, bytes, seconds after)."""
    received, acted_at = 0, 0.0
    with httpx.stream("GET", url, headers=WADO, timeout=READ_TIMEOUT + SLACK * 2) as response:
        assert response.status_code == 200, response.read()[:300]
        try:
            for chunk in response.iter_raw(1 << 16):
                received += len(chunk)
                if received > (1 << 20) and not during.is_set():
                    during.set()
                    time.sleep(0.3)  # let the buffers on the way fill
                    act()  # type: ignore[operator]
                    acted_at = time.monotonic()
        except httpx.TransportError as exc:
            return f"broke off ({type(exc).__name__})", received, time.monotonic() - acted_at
    return "clean end", received, time.monotonic() - acted_at


def test_a_frozen_pacs_times_out_and_the_worker_stays_responsive(pacs: Pacs) -> None:
    findings = Findings()
    pid = pacs.orthanc.process.pid
    base = pacs.gateway
    try:
        os.kill(pid, signal.SIGSTOP)
        pending: dict[str, tuple[object, float]] = {}

        def ask(name: str, url: str, **kwargs: object) -> threading.Thread:
            def run() -> None:
                pending[name] = timed(lambda: httpx.get(url, timeout=60, **kwargs))  # type: ignore[arg-type]

            thread = threading.Thread(target=run)
            thread.start()
            return thread

        slow = [
            ask("QIDO", f"{base}/dicomweb/studies?StudyInstanceUID={pacs.study}"),
            ask("WADO", f"{base}/dicomweb/studies/{pacs.study}", headers=WADO),
            ask("FHIR", f"{base}/fhir/ImagingStudy/{pacs.study}"),
        ]
        time.sleep(0.5)
        for path in ("/healthz", "/fhir/metadata"):
            answer, seconds = timed(lambda path=path: httpx.get(base + path, timeout=30))
            findings.expect(
                isinstance(answer, httpx.Response) and answer.status_code == 200 and seconds < 2,
                f"{path} while the PACS is frozen: {answer!r} after {seconds:.1f} s",
            )
        for thread in slow:
            thread.join(READ_TIMEOUT + SLACK * 3)
        for name in ("QIDO", "WADO", "FHIR"):
            answer, seconds = pending.get(name, ("no answer", 0.0))
            status = answer.status_code if isinstance(answer, httpx.Response) else answer
            findings.expect(
                status == 503 and "retry-after" in answer.headers,  # type: ignore[union-attr]
                f"{name} to a frozen PACS: {status!r} (want 503 + Retry-After, as documented)",
            )
            findings.expect(
                seconds < READ_TIMEOUT + SLACK,
                f"{name} to a frozen PACS answered after {seconds:.1f} s "
                f"(read timeout {READ_TIMEOUT} s)",
            )
    finally:
        os.kill(pid, signal.SIGCONT)

    # Frozen in the middle of a stream: the body breaks off, it does not end cleanly.
    frozen = threading.Event()
    try:
        outcome, received, seconds = _stream(
            f"{base}/dicomweb/studies/{pacs.study}",
            frozen,
            lambda: os.kill(pid, signal.SIGSTOP),
        )
    finally:
        os.kill(pid, signal.SIGCONT)
    findings.expect(
        outcome.startswith("broke off"),
        f"a stream whose PACS froze: {outcome} after {received} of {pacs.size} bytes",
    )
    findings.expect(
        seconds < READ_TIMEOUT + SLACK,
        f"a stream whose PACS froze ended {seconds:.1f} s after the freeze",
    )

    after = httpx.get(f"{base}/dicomweb/studies?StudyInstanceUID={pacs.study}", timeout=30)
    findings.expect(after.status_code == 200, f"QIDO after SIGCONT: {after.status_code}")
    findings.check()


def test_a_pacs_killed_mid_stream_breaks_the_body_and_is_used_again_once_back(
    pacs: Pacs,
) -> None:
    findings = Findings()
    base = pacs.gateway
    killed = threading.Event()
    outcome, received, _ = _stream(
        f"{base}/dicomweb/studies/{pacs.study}", killed, pacs.orthanc.process.kill
    )
    assert killed.is_set(), "the stream ended before the first MiB"
    findings.expect(
        received < pacs.size,
        f"the whole study ({received} bytes) passed before the kill: make it larger",
    )
    findings.expect(
        outcome.startswith("broke off"),
        f"a stream whose PACS was killed: {outcome} after {received} of {pacs.size} bytes "
        "(a 200 that silently lacks instances)",
    )
    pacs.orthanc.process.wait(timeout=10)

    down = httpx.get(f"{base}/dicomweb/studies/{pacs.study}/metadata", timeout=30)
    findings.expect(
        down.status_code == 503 and down.headers.get("retry-after", "").isdigit(),
        f"metadata while the PACS is down: {down.status_code} {dict(down.headers)!r}",
    )

    pacs.restart()
    back: list[int] = []
    for _ in range(3):
        back.append(
            httpx.get(f"{base}/dicomweb/studies/{pacs.study}/metadata", timeout=30).status_code
        )
    findings.expect(back == [200, 200, 200], f"metadata once the PACS is back: {back}")
    study_url = f"{base}/dicomweb/studies/{pacs.study}"
    with httpx.stream("GET", study_url, headers=WADO, timeout=60) as again:
        whole = sum(len(chunk) for chunk in again.iter_raw(1 << 20))
    # Each answer has its own multipart boundary; the instances are the same bytes.
    findings.expect(
        abs(whole - pacs.size) < 4096, f"the study once back: {whole} of {pacs.size} bytes"
    )
    findings.check()
