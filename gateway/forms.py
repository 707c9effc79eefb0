"""Request bodies read within limits: posted forms and small JSON documents.

Starlette's form parser counts fields and measures each one, but it reads a
body sent without ``Content-Length`` for as long as the client sends, and
says "too many fields" with an ``HTTPException`` that each protocol must
turn into its own answer (an OAuth route turned it into a 500). Here the
bytes are counted as they arrive, the client is refused as soon as it sends
one byte too many, and every refusal is one type, ``BodyRejected``.
"""

from __future__ import annotations

from starlette.datastructures import FormData
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.types import Message, Receive

from gateway.errors import BadRequest, GatewayError
from gateway.numbers import whole_number

PAGE_FORM_BYTES = 256 << 10


class BodyRejected(GatewayError):
    """The body is over a limit (413) or not readable (400); ``message`` is for the client.

    A ``GatewayError``, so the app's handlers (``gateway.error_handlers``) answer it
    in the format of whichever area's form it was.
    """

    code = "invalid"

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status
        if status == 413:
            self.code = "too-long"


async def read_body(request: Request, max_bytes: int) -> bytes:
    """The whole body, or BodyRejected (413) as soon as it passes ``max_bytes``."""
    _check_length(request, max_bytes)
    return await Request(request.scope, _counted(request.receive, max_bytes)).body()


async def read_form(request: Request, *, max_fields: int, max_bytes: int) -> FormData:
    """The posted form (no files), or BodyRejected: too large (413) or too many fields (400)."""
    _check_length(request, max_bytes)
    limited = Request(request.scope, _counted(request.receive, max_bytes))
    try:
        return await limited.form(max_files=0, max_fields=max_fields, max_part_size=max_bytes)
    except HTTPException:
        # Starlette's MultiPartException, re-raised for an app: a field count or size
        # over the limit, a file, or a malformed multipart body.
        raise BodyRejected(
            f"The form could not be read: it may have at most {max_fields} fields, "
            f"{max_bytes >> 10} KiB in all, and no files."
        ) from None


def _check_length(request: Request, max_bytes: int) -> None:
    length = request.headers.get("content-length")
    if length is None:
        return
    try:
        declared = whole_number("Content-Length", length)
    except BadRequest as exc:
        raise BodyRejected(exc.message) from None
    if declared > max_bytes:
        raise BodyRejected(_too_large(max_bytes), 413)


def _counted(receive: Receive, max_bytes: int) -> Receive:
    """``receive`` that refuses the body once more than ``max_bytes`` have come."""
    seen = 0

    async def counted() -> Message:
        nonlocal seen
        message = await receive()
        if message["type"] == "http.request":
            seen += len(message.get("body", b""))
            if seen > max_bytes:
                raise BodyRejected(_too_large(max_bytes), 413)
        return message

    return counted


def _too_large(max_bytes: int) -> str:
    return f"The request body is larger than {max_bytes >> 10} KiB."
