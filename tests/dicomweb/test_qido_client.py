"""QIDO-RS through the gateway's async HTTP client: the query a PACS receives, its
answers read as before, and one pool of keep-alive connections shared with WADO-RS.
A real HTTP server on a real socket."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from pydantic import SecretStr

from gateway.dicomweb.http_upstream import HttpUpstream
from gateway.errors import NotFound, UpstreamBadResponse, UpstreamTimeout, UpstreamUnavailable
from gateway.settings import UpstreamAuth, load_settings

STUDY = {"0020000D": {"vr": "UI", "Value": ["1.2.3"]}}
JSON = {"Content-Type": "application/dicom+json"}


class Pacs(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as a real PACS
    seen: list[dict[str, Any]]
    answers: dict[str, tuple[int, dict[str, str], bytes]]

    def do_GET(self) -> None:
        self.seen.append(
            {"path": self.path, "headers": dict(self.headers), "peer": self.client_address}
        )
        route = self.path.split("?")[0].rsplit("/", 1)[-1]
        status, headers, body = self.answers.get(
            route, (200, {"Content-Type": "application/dicom+json"}, json.dumps([STUDY]).encode())
        )
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def pacs() -> Iterator[tuple[str, type[Pacs]]]:
    handler = type("Handler", (Pacs,), {"seen": [], "answers": {}})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/dicom-web", handler
    server.shutdown()
    server.server_close()


def run(coroutine: Any) -> Any:
    return asyncio.run(asyncio.wait_for(coroutine, timeout=10))


def test_the_query_the_pacs_receives(pacs: tuple[str, type[Pacs]]) -> None:
    url, handler = pacs

    async def search() -> list[dict[str, Any]]:
        upstream = HttpUpstream(url)
        try:
            return await upstream.search_studies(
                {"PatientID": "MRN 1", "StudyInstanceUID": "1.2,1.3"},
                ("StudyDate", "00081030", "StudyDate"),
                limit=50,
            )
        finally:
            await upstream.aclose()

    assert run(search()) == [STUDY]
    (request,) = handler.seen
    assert request["path"] == (
        "/dicom-web/studies?PatientID=MRN+1&StudyInstanceUID=1.2%2C1.3"
        "&includefield=00081030&includefield=StudyDate&limit=50"
    )
    assert request["headers"]["Accept"] == "application/dicom+json, application/json"


@pytest.mark.parametrize("auth", [UpstreamAuth.basic, UpstreamAuth.bearer])
def test_searches_carry_the_configured_credentials(
    pacs: tuple[str, type[Pacs]], auth: UpstreamAuth
) -> None:
    url, handler = pacs
    settings = load_settings(
        _env_file=None,
        dicomweb_url=url,
        upstream_auth=auth,
        upstream_username="gw",
        upstream_password=SecretStr("pw"),
        upstream_token=SecretStr("tok"),
    )

    async def search() -> None:
        upstream = HttpUpstream.from_settings(settings)
        try:
            await upstream.search_series({"StudyInstanceUID": "1.2.3"})
        finally:
            await upstream.aclose()

    run(search())
    expected = "Basic Z3c6cHc=" if auth is UpstreamAuth.basic else "Bearer tok"
    assert handler.seen[0]["headers"]["Authorization"] == expected


@pytest.mark.parametrize(
    ("answer", "outcome"),
    [
        ((204, {}, b""), []),
        ((404, {}, b""), []),
        ((200, JSON, json.dumps(STUDY).encode()), [STUDY]),
        ((200, JSON, b"<html>no</html>"), UpstreamBadResponse),
        ((200, JSON, b"[1, 2]"), UpstreamBadResponse),
        ((500, {}, b"Traceback"), UpstreamBadResponse),
        ((503, {}, b""), UpstreamUnavailable),
        ((504, {}, b""), UpstreamTimeout),
    ],
    ids=["no-content", "404-empty", "bare-dataset", "html", "not-datasets", "500", "503", "504"],
)
def test_answers_are_read_as_before(
    pacs: tuple[str, type[Pacs]], answer: tuple[int, dict[str, str], bytes], outcome: Any
) -> None:
    url, handler = pacs
    handler.answers["instances"] = answer

    async def search() -> list[dict[str, Any]]:
        upstream = HttpUpstream(url)
        try:
            return await upstream.search_instances({"StudyInstanceUID": "1.2.3"})
        finally:
            await upstream.aclose()

    if isinstance(outcome, list):
        assert run(search()) == outcome
    else:
        with pytest.raises(outcome):
            run(search())


def test_a_missing_study_is_not_found_only_where_asked_for(pacs: tuple[str, type[Pacs]]) -> None:
    """404 from a search is an empty result; NotFound stays for retrieval."""
    url, handler = pacs
    handler.answers["metadata"] = (404, {}, b"")

    async def both() -> None:
        upstream = HttpUpstream(url)
        try:
            assert await upstream.search_studies({"StudyInstanceUID": "9.9"}) == [STUDY]
            with pytest.raises(NotFound):
                await upstream.retrieve("studies/9.9/metadata", "application/dicom+json")
        finally:
            await upstream.aclose()

    run(both())


def test_qido_and_wado_share_one_keep_alive_connection(pacs: tuple[str, type[Pacs]]) -> None:
    """A search no longer opens connections of its own beside the WADO pool: the PACS
    sees one client connection for searches and retrievals in turn."""
    url, handler = pacs

    async def mixed() -> None:
        upstream = HttpUpstream(url)
        try:
            for _ in range(3):
                await upstream.search_studies({"PatientID": "1"}, ("StudyDate",))
                retrieved = await upstream.retrieve(
                    "studies/1.2.3/metadata", "application/dicom+json"
                )
                async for _chunk in retrieved.chunks:
                    pass
                await retrieved.close()
                await upstream.search_instances({"StudyInstanceUID": "1.2.3"})
        finally:
            await upstream.aclose()

    run(mixed())
    assert len(handler.seen) == 9
    assert len({request["peer"] for request in handler.seen}) == 1
