"""A gateway over an image store of its own, for tests that write to it or add odd objects."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from pydicom import Dataset

from gateway.dicomweb.file_store import FileStoreUpstream
from tests.auth.test_oauth_api import Harness
from tests.portal.support import Clock, portal_harness

# Both stores and both databases, without the whole cross product.
BACKENDS = [
    pytest.param(("embedded", "sqlite"), id="embedded-sqlite"),
    pytest.param(
        ("orthanc", "postgres"),
        id="orthanc-postgres",
        marks=[pytest.mark.orthanc, pytest.mark.postgres],
    ),
]


@contextmanager
def private_store(
    backend: tuple[str, str], workdir: Path, datasets: list[Dataset], **settings: Any
) -> Iterator[Harness]:
    """``portal_harness`` (tokens required) over a new embedded store or a new Orthanc of
    its own, holding ``datasets``; ``backend`` is (store, database), as in BACKENDS."""
    store, database = backend
    if store == "embedded":
        asyncio.run(_seed(FileStoreUpstream(workdir / "dicom"), datasets))
        with portal_harness(workdir, workdir, Clock(), database, **settings) as harness:
            yield harness
        return
    from gateway.dicomweb.http_upstream import HttpUpstream
    from tests.support.orthanc import run_orthanc

    with run_orthanc(workdir / "orthanc") as orthanc:
        asyncio.run(_seed(HttpUpstream(orthanc.dicomweb_url), datasets))
        with portal_harness(
            workdir, workdir, Clock(), database, dicomweb_url=orthanc.dicomweb_url, **settings
        ) as harness:
            yield harness


async def _seed(store: Any, datasets: list[Dataset]) -> None:
    try:
        for start in range(0, len(datasets), 20):
            result = await store.store_instances(datasets[start : start + 20])
            assert not result.failed, result.failed
    finally:
        await store.aclose()
