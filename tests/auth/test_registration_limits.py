"""Dynamic registration is bounded and rate-limited, and says why it refuses (RFC 7591 3.2.2).

A 100 MB body was read whole and accepted, as were 10,000 redirect URIs, a 1 MB
URI and as many registrations as anyone sent.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from tests.auth.test_oauth_api import Harness
from tests.portal.support import DATABASES, Clock, portal_harness
from tests.support.browsers import Browser

URI = "https://viewer.example/cb"
LIMIT = 3
PARALLEL = 12


@pytest.fixture(scope="module")
def harness(tmp_path_factory: pytest.TempPathFactory, embedded_data_dir: Path) -> Iterator[Harness]:
    with portal_harness(
        tmp_path_factory.mktemp("register"),
        embedded_data_dir,
        Clock(),
        registrations_per_ip=1000,
    ) as made:
        yield made


@pytest.fixture(params=DATABASES)
def limited(
    request: pytest.FixtureRequest, tmp_path: Path, embedded_data_dir: Path
) -> Iterator[Harness]:
    with portal_harness(
        tmp_path, embedded_data_dir, Clock(), request.param, registrations_per_ip=LIMIT
    ) as made:
        yield made


def register(harness: Harness, **metadata: Any) -> httpx.Response:
    return harness.client.post("/oauth/register", json={"redirect_uris": [URI], **metadata})


def refused(answer: httpx.Response, error: str, status: int = 400) -> str:
    assert answer.status_code == status, answer.text
    body = answer.json()
    assert body["error"] == error
    return str(body["error_description"])


def streamed(harness: Harness, total: int, headers: dict[str, str]) -> tuple[httpx.Response, int]:
    """Post ``total`` bytes of a JSON body as it is generated; the answer and the bytes sent."""
    sent = 0

    async def body() -> AsyncIterator[bytes]:
        nonlocal sent
        yield b'{"client_name": "'
        while sent < total:
            sent += 65536
            yield b"a" * 65536
        yield b'", "redirect_uris": ["https://viewer.example/cb"]}'

    async def run() -> httpx.Response:
        browser = Browser(harness)
        try:
            return await browser.http.post(
                "/oauth/register",
                content=body(),
                headers={"Content-Type": "application/json", **headers},
            )
        finally:
            await browser.aclose()

    started = time.monotonic()
    answer: httpx.Response = harness.call(run)
    assert time.monotonic() - started < 10, "answered within 10 s"
    return answer, sent


def test_a_huge_body_is_refused_before_it_is_read(harness: Harness) -> None:
    answer, sent = streamed(harness, 100 << 20, {})
    assert "larger than 16 KiB" in refused(answer, "invalid_client_metadata", 413)
    assert sent < 1 << 20
    declared, sent = streamed(harness, 100 << 20, {"Content-Length": str(100 << 20)})
    refused(declared, "invalid_client_metadata", 413)
    assert sent < 1 << 20


def test_redirect_uris_are_bounded(harness: Harness) -> None:
    many = [f"https://viewer.example/cb{n}" for n in range(11)]
    assert "at most 10" in refused(register(harness, redirect_uris=many), "invalid_redirect_uri")
    thousands = [f"https://viewer.example/cb{n}" for n in range(10_000)]
    refused(register(harness, redirect_uris=thousands), "invalid_client_metadata", 413)
    long = "https://viewer.example/" + "a" * 2000
    assert "longer than 2000" in refused(
        register(harness, redirect_uris=[long]), "invalid_redirect_uri"
    )
    refused(register(harness, redirect_uris=["https://[::1/cb"]), "invalid_redirect_uri")
    refused(register(harness, redirect_uris=["https://viewer.example/c b"]), "invalid_redirect_uri")
    ten = [f"https://viewer.example/cb{n}" for n in range(10)]
    assert register(harness, redirect_uris=ten).status_code == 201


def test_strings_and_lists_are_bounded_not_cut_short(harness: Harness) -> None:
    assert "client_name" in refused(
        register(harness, client_name="n" * 201), "invalid_client_metadata"
    )
    exact = register(harness, client_name="n" * 200)
    assert exact.status_code == 201 and exact.json()["client_name"] == "n" * 200
    refused(register(harness, scope="launch " * 400), "invalid_client_metadata")
    for grant_types in (["client_credentials"], ["authorization_code"] * 50, "authorization_code"):
        refused(register(harness, grant_types=grant_types), "invalid_client_metadata")
    refused(register(harness, response_types=["token"]), "invalid_client_metadata")
    plain = register(
        harness, grant_types=["authorization_code", "refresh_token"], response_types=["code"]
    )
    assert plain.status_code == 201
    assert plain.json()["grant_types"] == ["authorization_code", "refresh_token"]


def from_one_address(harness: Harness, bodies: list[bytes]) -> list[httpx.Response]:
    """The bodies posted at once, each by its own client, all from 127.0.0.1."""

    async def run() -> list[httpx.Response]:
        browsers = [Browser(harness) for _ in bodies]
        try:
            return list(
                await asyncio.gather(
                    *(
                        b.http.post(
                            "/oauth/register",
                            content=body,
                            headers={"Content-Type": "application/json"},
                        )
                        for b, body in zip(browsers, bodies, strict=True)
                    )
                )
            )
        finally:
            for browser in browsers:
                await browser.aclose()

    return harness.call(run)  # type: ignore[no-any-return]


def test_registrations_are_limited_per_address_even_in_parallel(limited: Harness) -> None:
    answers = from_one_address(limited, [orjson.dumps({"redirect_uris": [URI]})] * PARALLEL)
    statuses = [a.status_code for a in answers]
    assert statuses.count(201) == LIMIT and statuses.count(429) == PARALLEL - LIMIT, statuses
    late = next(a for a in answers if a.status_code == 429)
    assert int(late.headers["retry-after"]) > 0
    assert late.json()["error"] == "temporarily_unavailable"
    # Refused registrations count too: the window is spent, whatever is sent.
    assert [a.status_code for a in from_one_address(limited, [b"{"])] == [429]
    # Another address has its own window (the in-process client is "testclient").
    assert limited.client.post("/oauth/register", json={"redirect_uris": [URI]}).status_code == 201
