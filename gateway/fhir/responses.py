"""FHIR JSON responses, content negotiation and OperationOutcomes."""

from __future__ import annotations

from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

from gateway.errors import NotAcceptable

FHIR_JSON = "application/fhir+json"
JSON_FORMATS = frozenset({"json", "application/json", FHIR_JSON, "application/json+fhir"})
XML_FORMATS = frozenset({"xml", "text/xml", "application/xml", "application/fhir+xml"})


class FhirResponse(Response):
    media_type = FHIR_JSON

    def __init__(self, content: Any, status_code: int = 200, **kwargs: Any) -> None:
        super().__init__(content, status_code=status_code, **kwargs)

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)

    def init_headers(self, headers: Any = None) -> None:
        super().init_headers(headers)
        # fhir+json is UTF-8 by definition; say so for clients that guess.
        self.raw_headers = [
            (k, b"application/fhir+json; charset=utf-8" if k == b"content-type" else v)
            for k, v in self.raw_headers
        ]


def operation_outcome(
    status: int, code: str, diagnostics: str, severity: str = "error"
) -> dict[str, Any]:
    return {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": severity, "code": code, "diagnostics": diagnostics}],
    }


def negotiate(request: Request) -> None:
    """Refuse XML (406), whether asked for by ``_format`` or by Accept."""
    requested = request.query_params.getlist("_format")
    if requested:
        fmt = requested[-1].split(";")[0].strip().lower()
        if fmt in XML_FORMATS:
            raise NotAcceptable("This server speaks FHIR JSON only; XML is not supported.")
        if fmt not in JSON_FORMATS:
            raise NotAcceptable(f"_format '{requested[-1]}' is not supported; use json.")
        return
    accept = request.headers.get("accept", "")
    if not accept:
        return
    offered = [part.split(";")[0].strip().lower() for part in accept.split(",")]
    acceptable = JSON_FORMATS | {"*/*", "application/*"}
    if not any(media in acceptable for media in offered):
        raise NotAcceptable("This server answers application/fhir+json only.")
