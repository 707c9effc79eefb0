"""The STOW spool writes in batches: one thread hop per MiB, not one per chunk the
server hands over (each hop costs tens of microseconds of the request's time)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import anyio.to_thread
import pytest

from gateway.dicomweb import stow
from gateway.errors import PayloadTooLarge


async def _chunks(count: int, size: int) -> AsyncIterator[bytes]:
    for n in range(count):
        yield bytes([n % 256]) * size


def _spooled(
    count: int, size: int, limit: int, monkeypatch: pytest.MonkeyPatch
) -> tuple[bytes, int]:
    hops = 0
    run_sync = anyio.to_thread.run_sync

    async def counted(*args: Any, **kwargs: Any) -> Any:
        nonlocal hops
        hops += 1
        return await run_sync(*args, **kwargs)

    monkeypatch.setattr(anyio.to_thread, "run_sync", counted)

    async def run() -> bytes:
        body = await stow.spool(_chunks(count, size), limit)
        try:
            return body.read()
        finally:
            body.close()

    return asyncio.run(run()), hops


def test_one_thread_hop_per_write_batch(monkeypatch: pytest.MonkeyPatch) -> None:
    # 3 MiB in 64 KiB chunks, as uvicorn hands a fast upload over.
    body, hops = _spooled(48, 64 << 10, 1 << 30, monkeypatch)
    assert body == b"".join(bytes([n % 256]) * (64 << 10) for n in range(48))
    assert hops <= -(-(3 << 20) // stow.WRITE_BATCH) + 1


def test_a_short_body_is_written_whole(monkeypatch: pytest.MonkeyPatch) -> None:
    body, hops = _spooled(3, 1000, 1 << 30, monkeypatch)
    assert body == b"".join(bytes([n]) * 1000 for n in range(3))
    assert hops == 1


def test_the_limit_still_holds(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(PayloadTooLarge):
        _spooled(48, 64 << 10, (1 << 20) + 5, monkeypatch)
