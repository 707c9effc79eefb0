"""A project's de-identified copies as one ZIP of Part 10 files, streamed.

Members are named by the new UIDs only (``<study>/<series>/<instance>.dcm``) and
dated 1980-01-01, so nothing in the ZIP's directory points back. One instance is
held at a time; the ZIP goes out in pieces of about ``FLUSH_BYTES``.
"""

from __future__ import annotations

import zipfile
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence

from gateway.dicomweb.upstream import Upstream
from gateway.donation import copies
from gateway.donation.delivery import Donated
from gateway.donation.projects import Project
from gateway.research.deid import Excluded

FLUSH_BYTES = 512 << 10
Recorded = Callable[[Donated, int, int], Awaitable[None]]


class _Sink:
    """Write-only, no tell() or seek(): zipfile writes data descriptors instead."""

    def __init__(self) -> None:
        self._pieces: list[bytes] = []
        self.size = 0

    def write(self, data: bytes) -> int:
        self._pieces.append(bytes(data))
        self.size += len(data)
        return len(data)

    def flush(self) -> None: ...

    def close(self) -> None: ...

    def drain(self) -> bytes:
        drained = b"".join(self._pieces)
        self._pieces.clear()
        self.size = 0
        return drained


async def package(
    upstream: Upstream, project: Project, donated: Sequence[Donated], recorded: Recorded
) -> AsyncIterator[bytes]:
    sink = _Sink()
    with zipfile.ZipFile(sink, "w", compression=zipfile.ZIP_STORED) as archive:
        for study in donated:
            sent = excluded = 0
            async for made in copies.study_copies(upstream, project, study.study_uid, study.key):
                if isinstance(made, Excluded):
                    excluded += 1
                    continue
                member = zipfile.ZipInfo(
                    f"{made.study_uid}/{made.series_uid}/{made.instance_uid}.dcm",
                    date_time=(1980, 1, 1, 0, 0, 0),
                )
                archive.writestr(member, made.data)
                sent += 1
                if sink.size >= FLUSH_BYTES:
                    yield sink.drain()
            await recorded(study, sent, excluded)
    yield sink.drain()
