"""A PACS that dies mid-answer, offloaded: the client never gets a complete-looking study.

Orthanc ends WADO-RS bodies by closing the connection, so when it is killed
mid-answer nginx cannot tell the close from the end, and ends the client's
chunked answer normally. What protects the client is the multipart closing
boundary, which never comes: nginx relays, it does not make answers up
(docs/deployment.md, "When the PACS breaks off mid-answer").
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import httpx
import pytest

from bench.dicomweb import upload, write_study
from tests.support.stack import running_stack

pytestmark = [pytest.mark.slow, pytest.mark.orthanc, pytest.mark.postgres]


def test_a_pacs_killed_mid_answer_leaves_the_study_unfinished(tmp_path: Path) -> None:
    study, _ = write_study(tmp_path / "study", 24)
    with running_stack(
        tmp_path / "stack", replicas=1, settings={"auth_required": "false"}
    ) as stack:
        upload(stack.pacs_dicomweb_url.removesuffix("/dicom-web"), tmp_path / "study")
        received, tail, aborted = 0, b"", False
        boundary = b""
        started = time.monotonic()
        try:
            with httpx.Client(timeout=30) as client:
                with client.stream("GET", f"{stack.url}/dicomweb/studies/{study}") as answer:
                    assert answer.status_code == 200
                    boundary = answer.headers["content-type"].split("boundary=")[1].encode()
                    for chunk in answer.iter_raw(1 << 16):
                        received += len(chunk)
                        tail = (tail + chunk)[-len(boundary) - 8 :]
                        if received > 2_000_000 and "orthanc" in stack.pids:
                            os.kill(stack.pids.pop("orthanc"), signal.SIGKILL)
        except httpx.TransportError:
            aborted = True
        assert time.monotonic() - started < 30, "the answer hung"
        assert "orthanc" not in stack.pids, "the study was smaller than expected"
        assert received < 24 * 1024 * 1024
        assert aborted or b"--" + boundary + b"--" not in tail
