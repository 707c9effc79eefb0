"""The one interface the gateway uses to reach images: a PACS or the embedded store.

Both implementations are thin adapters over dicomweb-client; they run its
blocking calls off the event loop and turn its failures into the typed
``Upstream*`` errors of :mod:`gateway.errors`. This module names only the
protocol: the wiring (:mod:`gateway.services`) picks the implementation, so
the interface never imports what implements it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from pydicom import Dataset

from gateway.dicomweb.dicomjson import DicomJson


@dataclass
class StoreResult:
    """What a STOW-RS request stored and what it refused (PS3.18 10.5.3)."""

    stored: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)


@dataclass
class Retrieved:
    """A WADO-RS answer being streamed: its media type, its body in chunks, and how
    to release the upstream connection early (when the client goes away)."""

    media_type: str
    chunks: AsyncIterator[bytes]
    close: Callable[[], Awaitable[None]]


class Upstream(Protocol):
    """QIDO and STOW as the gateway needs them. Filters map keywords to match keys."""

    name: str

    async def search_studies(
        self, filters: Mapping[str, str], fields: Sequence[str] = (), limit: int | None = None
    ) -> list[DicomJson]: ...

    async def search_series(
        self, filters: Mapping[str, str], fields: Sequence[str] = (), limit: int | None = None
    ) -> list[DicomJson]: ...

    async def search_instances(
        self, filters: Mapping[str, str], fields: Sequence[str] = (), limit: int | None = None
    ) -> list[DicomJson]: ...

    async def store_instances(self, datasets: Sequence[Dataset]) -> StoreResult: ...

    async def store_encoded(self, parts: Sequence[bytes]) -> StoreResult:
        """Store DICOM Part 10 files as they are (no decoding and re-encoding);
        the result names instances by SOP Instance UID."""

    async def retrieve(self, path: str, accept: str) -> Retrieved:
        """WADO-RS ``path`` (``studies/{uid}[/series/{uid}[/instances/{uid}]][/metadata]``),
        streamed; raises NotFound, NotAcceptable or an UpstreamError."""

    async def check(self) -> None:
        """Raise an ``UpstreamError`` when the store cannot answer."""

    async def aclose(self) -> None: ...
