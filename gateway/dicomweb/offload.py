"""The data plane handed to nginx: the gateway decides, nginx moves the bytes.

With ``GATEWAY_OFFLOAD=nginx``, a WADO-RS retrieval (series, instance), frames
or bulk data that the records layer has decided is wholly the caller's is
answered with an empty response carrying ``X-Accel-Redirect``. (A full study
is assembled by the gateway from one answer per series: records/full_study.py.)
nginx then fetches that path from the PACS through an ``internal`` location
(``deploy/nginx.conf``) and streams the PACS's answer to the client, with the
gateway's CORS and security headers copied over. Clients cannot call that
location themselves (nginx answers 404), and the Accept the gateway
negotiated travels in ``X-Offload-Accept``, which nginx sends on to the PACS
and never to the client. Anything not wholly the caller's never gets here:
the records layer refuses it first, as it does in-process.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from starlette.responses import Response

ACCEL_REDIRECT = "X-Accel-Redirect"
OFFLOAD_ACCEPT = "X-Offload-Accept"
# What a WADO-RS path is made of once its UIDs, frame list or tag path are checked:
# nothing nginx would unescape, and no "..".
SAFE_PATH = re.compile(r"[0-9A-Za-z.,/]+")
SAFE_ACCEPT = re.compile(r"[\x20-\x7e]*")


@dataclass(frozen=True)
class Offloaded:
    """A retrieval decided and handed over: the internal URI nginx fetches, and the
    Accept to ask the PACS with."""

    redirect: str
    accept: str


@dataclass(frozen=True)
class Offloader:
    """``prefix`` is nginx's internal location for the PACS's DICOMweb base."""

    prefix: str

    def hand_over(self, path: str, accept: str) -> Offloaded:
        """``path`` is relative to the DICOMweb base (``studies/{uid}/...``), already checked."""
        if not SAFE_PATH.fullmatch(path) or ".." in path or not SAFE_ACCEPT.fullmatch(accept):
            raise ValueError(f"not a checked WADO-RS request: {path!r}")
        return Offloaded(f"{self.prefix}/{path}", accept)


def response(offloaded: Offloaded) -> Response:
    """The gateway's half of the answer: no body, no Content-Type (the PACS's, with its
    boundary, is the one the client gets); the security and CORS headers are added by
    the app's middleware as on any answer, and nginx copies them."""
    return Response(
        status_code=200,
        headers={ACCEL_REDIRECT: offloaded.redirect, OFFLOAD_ACCEPT: offloaded.accept},
    )
