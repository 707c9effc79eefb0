"""Errors are types: one class per kind of failure, one handler per protocol.

Routes raise these; ``gateway.fhir.responses`` turns them into
OperationOutcomes, and later the DICOMweb and OAuth layers into their own
formats. Messages are written for the client: never put internals in them.
"""

from __future__ import annotations

from datetime import datetime


class GatewayError(Exception):
    """Base class. ``status`` is the HTTP status, ``code`` the FHIR issue type."""

    status = 500
    code = "exception"

    def __init__(self, message: str, *, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.headers = headers or {}


class BadRequest(GatewayError):
    """The client sent something malformed (a bad parameter value, say)."""

    status = 400
    code = "invalid"


class Unauthorized(GatewayError):
    """No valid credential came with a request that needs one (``headers`` holds the challenge)."""

    status = 401
    code = "login"


class Forbidden(GatewayError):
    """The caller is known but may not do this (a scope it lacks, a filter it cannot pass)."""

    status = 403
    code = "forbidden"


class Held(GatewayError):
    """A study the caller would see, held back by the release delay until ``available_at``."""

    status = 403
    code = "suppressed"

    def __init__(self, available_at: datetime) -> None:
        when = available_at.strftime("%Y-%m-%d %H:%M UTC")
        super().__init__(
            f"This study is not available to you yet: it will be from {when}, "
            "so that your physician can review the results with you first."
        )
        self.available_at = available_at


class NotFound(GatewayError):
    status = 404
    code = "not-found"


class NotAcceptable(GatewayError):
    status = 406
    code = "not-supported"


class PayloadTooLarge(GatewayError):
    status = 413
    code = "too-costly"


class UnsupportedMediaType(GatewayError):
    status = 415
    code = "not-supported"


class UpstreamError(GatewayError):
    """The PACS misbehaved. Subclasses say how; messages never echo its body."""

    status = 502
    code = "transient"


class UpstreamBadResponse(UpstreamError):
    status = 502


class UpstreamIncomplete(UpstreamBadResponse):
    """The PACS ended an answer early (closed before its end). Raised before anything
    is sent, it is a 502; raised mid-stream, the client's connection is aborted, the
    one signal left that the body is not whole."""


class UpstreamUnavailable(UpstreamError):
    status = 503

    def __init__(self, message: str, *, retry_after: int = 30) -> None:
        super().__init__(message, headers={"Retry-After": str(retry_after)})


class UpstreamTimeout(UpstreamError):
    """The PACS did not answer within its budget (GATEWAY_PACS_TIMEOUT_SECONDS): 503 and
    when to ask again, as SMART Imaging Access says for a server waiting on its PACS."""

    status = 503
    code = "timeout"

    def __init__(self, message: str, retry_after: int = 10) -> None:
        super().__init__(message, headers={"Retry-After": str(retry_after)})


class ServiceUnavailable(GatewayError):
    """Something the gateway needs is down for now: 503, and when to try again."""

    status = 503
    code = "transient"

    def __init__(self, message: str, *, retry_after: int = 30) -> None:
        super().__init__(message, headers={"Retry-After": str(retry_after)})


class DatabaseUnavailable(ServiceUnavailable):
    """The database cannot be reached (refused, reset, timed out); see gateway.outages."""

    def __init__(self, retry_after: int = 10) -> None:
        super().__init__(
            "The service is temporarily unavailable. Please try again in a moment.",
            retry_after=retry_after,
        )


class RequestTimeout(GatewayError):
    """The client stopped sending the body it announced; the connection is closed."""

    status = 408
    code = "timeout"

    def __init__(self, seconds: float) -> None:
        super().__init__(
            f"No part of the request body arrived for {seconds:g} seconds.",
            headers={"Connection": "close"},
        )


class NotRecorded(GatewayError):
    """The audit record could not be written, so the action is not done (nothing is sent)."""

    status = 500
    code = "exception"
