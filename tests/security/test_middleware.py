"""``SecurityHeadersMiddleware`` on its own: what it adds, what it leaves alone."""

from __future__ import annotations

from collections.abc import AsyncIterator

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response, StreamingResponse
from starlette.routing import BaseRoute, Mount, Route
from starlette.testclient import TestClient

from gateway.security_headers import DEFAULT_POLICY, SecurityHeadersMiddleware
from tests.security.test_headers import CSP, strictness_problems


async def _chunks() -> AsyncIterator[bytes]:
    for number in range(3):
        yield f"chunk {number}\n".encode()


def _client(routes: list[BaseRoute]) -> TestClient:
    return TestClient(SecurityHeadersMiddleware(Starlette(routes=routes)))


def test_the_default_policy_is_strict() -> None:
    assert strictness_problems(DEFAULT_POLICY) == []


def test_the_default_policy_and_nosniff_are_added() -> None:
    async def plain(request: Request) -> Response:
        return PlainTextResponse("hello")

    response = _client([Route("/plain", plain)]).get("/plain")
    assert response.text == "hello"
    assert response.headers.get_list(CSP) == [DEFAULT_POLICY]
    assert response.headers.get_list("x-content-type-options") == ["nosniff"]


def test_a_policy_set_by_the_route_is_kept_and_the_body_streams_through() -> None:
    async def document(request: Request) -> Response:
        return StreamingResponse(
            _chunks(),
            media_type="application/pdf",
            headers={
                "Content-Security-Policy": "sandbox",
                "Content-Disposition": "attachment",
                "X-Content-Type-Options": "nosniff",
            },
        )

    response = _client([Route("/document", document)]).get("/document")
    assert response.headers.get_list(CSP) == ["sandbox"]
    assert response.headers.get_list("x-content-type-options") == ["nosniff"]
    assert response.headers["content-disposition"] == "attachment"
    assert response.text == "chunk 0\nchunk 1\nchunk 2\n"


def test_a_mount_sets_its_own_policy_under_the_default() -> None:
    async def plain(request: Request) -> Response:
        return PlainTextResponse("app")

    inner = SecurityHeadersMiddleware(
        Starlette(routes=[Route("/", plain)]), policy="default-src 'none'; script-src 'self'"
    )
    response = _client([Mount("/app", app=inner)]).get("/app/")
    assert response.headers.get_list(CSP) == ["default-src 'none'; script-src 'self'"]
    assert response.headers.get_list("x-content-type-options") == ["nosniff"]
