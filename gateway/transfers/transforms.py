"""Per-job transforms of each instance's bytes before it is sent, named by a string key.

A push carries its instances as stored (``identity``). Other deliveries (the research
engineer's de-identified copies) register a transform under a name in the wiring
code and queue jobs naming it; a transform may also return None to leave an instance
out (counted as excluded, never sent). Transforms are blocking and run in a worker
thread.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

IDENTITY = "identity"


@dataclass(frozen=True)
class TransformContext:
    """What a transform may know of its job."""

    job_id: str
    target_kind: str
    target_id: str
    patient: str | None


Transform = Callable[[bytes, TransformContext], bytes | None]


class UnknownTransform(KeyError):
    pass


def _identity(data: bytes, context: TransformContext) -> bytes:
    return data


class Transforms:
    """The transforms a process knows; built in the wiring, ``identity`` always there."""

    def __init__(self) -> None:
        self._known: dict[str, Transform] = {IDENTITY: _identity}

    def register(self, name: str, transform: Transform) -> None:
        if name in self._known:
            raise ValueError(f"a transform {name!r} is registered already")
        self._known[name] = transform

    def get(self, name: str) -> Transform:
        try:
            return self._known[name]
        except KeyError:
            raise UnknownTransform(name) from None

    def __contains__(self, name: object) -> bool:
        return name in self._known
