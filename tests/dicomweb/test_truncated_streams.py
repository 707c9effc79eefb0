"""A PACS whose answer ends early: the client's download fails, it never ends cleanly.

Once the 200 and its headers are out, the only honest signal left is to abort
the HTTP/1.1 response (no terminating chunk), so curl exits non-zero and httpx
raises. The PACS here is a real socket server that sends headers and part of a
body, then closes; the gateway runs under real uvicorn, reached over HTTP.
"""

from __future__ import annotations

import asyncio
import socketserver
import threading
import zipfile
from collections.abc import Iterator
from io import BytesIO
from pathlib import Path

import httpx
import orjson
import pytest

from gateway.dicomweb.http_upstream import HttpUpstream
from gateway.errors import UpstreamBadResponse
from gateway.records.access import EVERYTHING
from gateway.records.archive import study_archive
from tests.conftest import serve_gateway
from tests.support.series_pacs import part10

STUDY = "1.2.826.0.1.3680043.8.498.101"
SERIES = "1.2.826.0.1.3680043.8.498.102"
INSTANCE = "1.2.826.0.1.3680043.8.498.103"
BOUNDARY = "pacs-boundary-7f3a"
INSTANCE_PATH = f"studies/{STUDY}/series/{SERIES}/instances/{INSTANCE}"


def _record() -> dict[str, object]:
    def value(vr: str, *values: object) -> dict[str, object]:
        return {"vr": vr, "Value": list(values)}

    return {
        "0020000D": value("UI", STUDY),
        "0020000E": value("UI", SERIES),
        "00080018": value("UI", INSTANCE),
        "00080016": value("UI", "1.2.840.10008.5.1.4.1.1.2"),
        "00080060": value("CS", "CT"),
        "00080061": value("CS", "CT"),
        "00080020": value("DA", "20240102"),
        "00100020": value("LO", "TRUNC-1"),
        "00100010": value("PN", {"Alphabetic": "Cut^Short"}),
        "00200011": value("IS", 1),
        "00200013": value("IS", 1),
        "00201206": value("IS", 1),
        "00201208": value("IS", 1),
    }


def _part(payload: bytes) -> bytes:
    return f"--{BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n".encode() + payload + b"\r\n"


# A Part 10 file of the instance QIDO lists: what matters is that it is big and that the
# cut falls inside it (the ZIP reads its header to name it).
PAYLOAD = part10(STUDY, SERIES, 1, ("", "TRUNC-1"), 512 << 10, head={"SOPInstanceUID": INSTANCE})
WHOLE = _part(PAYLOAD) + f"--{BOUNDARY}--\r\n".encode()


class MisbehavingPacs(socketserver.StreamRequestHandler):
    """Answers QIDO properly and every retrieval as ``mode`` says."""

    mode = "close"

    def handle(self) -> None:
        request_line = self.rfile.readline().decode("latin-1")
        while self.rfile.readline() not in (b"\r\n", b"\n", b""):
            pass
        target = request_line.split(" ")[1] if " " in request_line else "/"
        path = target.split("?")[0].removeprefix("/dicom-web/")
        if path.rsplit("/", 1)[-1] in ("studies", "series", "instances"):  # QIDO
            self._json(orjson.dumps([_record()]))
        elif path.endswith("/metadata"):
            self._body("application/dicom+json", orjson.dumps([_record()]))
        else:
            media = f'multipart/related; type="application/dicom"; boundary={BOUNDARY}'
            self._body(media, WHOLE)

    def _json(self, body: bytes) -> None:
        self.wfile.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/dicom+json\r\n"
            + f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
            + body
        )

    def _body(self, media_type: str, whole: bytes) -> None:
        head = f"HTTP/1.1 200 OK\r\nContent-Type: {media_type}\r\nConnection: close\r\n"
        cut = whole[: len(whole) // 2]
        if self.mode == "whole":  # ends by closing, as Orthanc does, but complete
            self.wfile.write(head.encode() + b"\r\n" + whole)
        elif self.mode == "close":  # ends by closing, cut short
            self.wfile.write(head.encode() + b"\r\n" + cut)
        elif self.mode == "length":  # announces more than it sends
            self.wfile.write(head.encode() + f"Content-Length: {len(whole)}\r\n\r\n".encode() + cut)
        else:  # chunked, without the last chunk
            chunk = f"{len(cut):x}\r\n".encode() + cut + b"\r\n"
            self.wfile.write(head.encode() + b"Transfer-Encoding: chunked\r\n\r\n" + chunk)
        self.wfile.flush()


@pytest.fixture(scope="module")
def pacs() -> Iterator[type[MisbehavingPacs]]:
    handler = type("Handler", (MisbehavingPacs,), {})
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    handler.url = f"http://127.0.0.1:{server.server_address[1]}/dicom-web"  # type: ignore[attr-defined]
    yield handler
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def gateway(
    pacs: type[MisbehavingPacs], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, Path]]:
    workdir = tmp_path_factory.mktemp("truncated")
    with serve_gateway(workdir, dicomweb_url=pacs.url) as base:  # type: ignore[attr-defined]
        yield base, workdir / "gateway.log"


RETRIEVALS = [
    pytest.param(f"studies/{STUDY}", id="study"),
    pytest.param(f"studies/{STUDY}/series/{SERIES}", id="series"),
    pytest.param(INSTANCE_PATH, id="instance"),
    pytest.param(f"{INSTANCE_PATH}/frames/1", id="frames"),
    pytest.param(f"{INSTANCE_PATH}/bulk/7FE00010", id="bulk"),
    pytest.param(f"studies/{STUDY}/metadata", id="metadata"),
]


def _download(base: str, path: str) -> tuple[int, bytes]:
    with (
        httpx.Client(timeout=10) as client,
        client.stream("GET", f"{base}/dicomweb/{path}") as response,
    ):
        return response.status_code, response.read()


@pytest.mark.parametrize("mode", ["close", "length", "chunked"])
@pytest.mark.parametrize("path", RETRIEVALS)
def test_an_answer_cut_short_aborts_the_download(
    pacs: type[MisbehavingPacs], gateway: tuple[str, Path], mode: str, path: str
) -> None:
    base, log = gateway
    pacs.mode = mode
    with pytest.raises(httpx.RemoteProtocolError):
        status, body = _download(base, path)
        print(status, len(body))  # what the client would have taken for the whole answer
    lines = log.read_text(errors="replace").splitlines()
    assert any("ended its answer early" in line and STUDY in line for line in lines)


@pytest.mark.parametrize("path", RETRIEVALS)
def test_a_whole_answer_ended_by_closing_is_relayed(
    pacs: type[MisbehavingPacs], gateway: tuple[str, Path], path: str
) -> None:
    pacs.mode = "whole"
    status, body = _download(gateway[0], path)
    assert status == 200
    if path.endswith("metadata"):
        assert orjson.loads(body)[0]["0020000D"]["Value"] == [STUDY]
    elif path == f"studies/{STUDY}":
        # A full study is re-framed (records/full_study.py): the same part, its
        # transfer syntax named, under the gateway's own boundary.
        head, _, rest = body.partition(b"\r\n\r\n")
        assert b"transfer-syntax=1.2.840.10008.1.2.1" in head
        assert rest.startswith(PAYLOAD + b"\r\n--") and rest.endswith(b"--\r\n")
    else:
        assert body == WHOLE


@pytest.mark.parametrize("mode", ["close", "length", "chunked"])
def test_a_zip_whose_source_ended_early_never_ends_as_an_archive(
    pacs: type[MisbehavingPacs], mode: str
) -> None:
    """The share and portal ZIP (records/archive.py) streams through the same kind of
    response as the routes above: it must fail rather than close its central directory."""
    pacs.mode = mode

    async def download() -> bytes:
        upstream = HttpUpstream(pacs.url)  # type: ignore[attr-defined]
        try:
            return b"".join([c async for c in study_archive(upstream, [STUDY], EVERYTHING)])
        finally:
            await upstream.aclose()

    with pytest.raises(UpstreamBadResponse):
        asyncio.run(download())
    pacs.mode = "whole"
    with zipfile.ZipFile(BytesIO(asyncio.run(download()))) as whole:
        assert [i.file_size for i in whole.infolist()][1:] == [len(PAYLOAD)]
