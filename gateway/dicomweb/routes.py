"""``/dicomweb``: QIDO-RS (PS3.18 10.6), WADO-RS retrieval (10.4) and STOW-RS (10.5).

Thin adapters: each route declares what it needs, reads and checks the
request, and asks the records layer (:mod:`gateway.records.images`), which
acts within the caller's access. Errors follow PS3.18: the status code, a
short text, and a Warning header.
"""

from __future__ import annotations

import functools
import logging
import re
import unicodedata
from collections.abc import Awaitable, Callable

import orjson
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response, StreamingResponse
from starlette.routing import BaseRoute, Route

from gateway.authorization import requires
from gateway.dicomweb import bulkdata, offload, qido, rendering, stow
from gateway.errors import BadRequest, GatewayError, NotAcceptable, PayloadTooLarge
from gateway.numbers import whole_number
from gateway.outages import outage
from gateway.records.access import Access
from gateway.records.images import Offloaded, RenderRequest, Retrieved, Target
from gateway.services import Services

logger = logging.getLogger(__name__)
DICOM_JSON = "application/dicom+json"
MULTIPART_DICOM = 'multipart/related; type="application/dicom"'
PIXEL_DEFAULT = 'multipart/related; type="application/octet-stream"'
DICOM_PART = re.compile(r'type="?application/dicom"?(;|$)')
UIDS = (("study", "StudyInstanceUID"), ("series", "SeriesInstanceUID"))
INSTANCE = "/studies/{study}/series/{series}/instances/{instance}"
WARNING_TEXT_MAX = 200


def dicomweb_endpoint(
    handler: Callable[[Request, Services], Awaitable[Response]],
) -> Callable[[Request], Awaitable[Response]]:
    """PS3.18 error answers: the status code, a short text, and a Warning header."""

    @functools.wraps(handler)
    async def endpoint(request: Request) -> Response:
        try:
            return await handler(request, request.state.services)
        except GatewayError as exc:
            return error_response(exc.status, exc.message, exc.headers)
        except Exception as exc:
            if outage(exc) is not None:
                raise  # the app's handler answers 503 (gateway/error_handlers.py)
            logger.exception("unhandled error in %s %s", request.method, request.url.path)
            return error_response(500, "An internal error occurred.")

    return endpoint


def error_response(status: int, message: str, headers: dict[str, str] | None = None) -> Response:
    return PlainTextResponse(
        message + "\n",
        status_code=status,
        headers={**(headers or {}), "Warning": warning_header(message)},
    )


def warning_header(message: str) -> str:
    """``299 gateway "text"`` with ``message`` made one bounded line of ASCII.

    Messages may echo what the client sent or what a library said: a character
    outside Latin-1 made the header unencodable (a 500), and a NUL or a line break
    made it invalid, so the server dropped the connection without an answer.
    Accents are dropped, other characters become ``?``, control characters a
    space; quotes and backslashes are escaped (RFC 9110 5.6.4 quoted-string).
    """
    folded = unicodedata.normalize("NFKD", message)
    folded = "".join(c for c in folded if not unicodedata.combining(c))
    text = "".join(
        c if " " <= c <= "~" else " " if unicodedata.category(c)[0] in "CZ" else "?" for c in folded
    )
    text = " ".join(text.split())
    if len(text) > WARNING_TEXT_MAX:
        text = text[: WARNING_TEXT_MAX - 3].rstrip() + "..."
    escaped = text.replace("\\", "\\\\").replace('"', '\\"')
    return f'299 gateway "{escaped}"'


def _accepts_dicom_json(request: Request) -> None:
    accept = request.headers.get("accept", "")
    if not accept:
        return
    offered = {part.split(";")[0].strip().lower() for part in accept.split(",")}
    if offered.isdisjoint({DICOM_JSON, "application/json", "*/*", "application/*"}):
        raise NotAcceptable("QIDO-RS answers application/dicom+json only.")


def _target(request: Request) -> Target:
    """The study, series and instance the path names, each UID checked."""
    params = request.path_params
    return Target(
        study=qido.check_uid("StudyInstanceUID", params["study"]),
        series=qido.check_uid("SeriesInstanceUID", params["series"])
        if "series" in params
        else None,
        instance=qido.check_uid("SOPInstanceUID", params["instance"])
        if "instance" in params
        else None,
    )


def _streamed(retrieved: Retrieved | Offloaded) -> Response:
    if isinstance(retrieved, Offloaded):
        return offload.response(retrieved)
    return StreamingResponse(
        retrieved.chunks,
        media_type=retrieved.media_type,
        background=BackgroundTask(retrieved.close),
    )


def qido_endpoint(level: str) -> Callable[[Request], Awaitable[Response]]:
    @dicomweb_endpoint
    @requires("ImagingStudy", "s", filterable=False)
    async def endpoint(request: Request, services: Services, access: Access) -> Response:
        _accepts_dicom_json(request)
        query = qido.parse(request.query_params)
        for name, key in UIDS:
            if name in request.path_params:
                query.filters[key] = qido.check_uid(key, request.path_params[name])
        results = await services.records.images.search(access, level, query)
        if not results:
            # PS3.18 8.3.4.4.1: no matches is 204 with an empty payload (CP-2473 may make it 200).
            return Response(status_code=204)
        return Response(orjson.dumps(results), media_type=DICOM_JSON)

    return endpoint


def _wado_accept(request: Request) -> str:
    accept = request.headers.get("accept", "").strip()
    if not accept or accept in ("*/*", "multipart/related"):
        return MULTIPART_DICOM
    for offered in (part.strip() for part in accept.split(",")):
        normalized = offered.replace("'", '"').replace(" ", "").lower()
        media = normalized.split(";")[0]
        if media == "multipart/related" and DICOM_PART.search(normalized):
            return offered
        if media in ("*/*", "multipart/*"):
            return MULTIPART_DICOM
    raise NotAcceptable(
        'Retrieval answers multipart/related; type="application/dicom" '
        "(frames, bulk data and rendered images have URLs of their own)."
    )


@dicomweb_endpoint
@requires("ImagingStudy", "r", filterable=False)
async def retrieve(request: Request, services: Services, access: Access) -> Response:
    accept = _wado_accept(request)
    return _streamed(await services.records.images.retrieve(access, _target(request), accept))


@dicomweb_endpoint
@requires("ImagingStudy", "r", filterable=False)
async def metadata(request: Request, services: Services, access: Access) -> Response:
    _accepts_dicom_json(request)
    return _streamed(await services.records.images.metadata(access, _target(request)))


def _pixel_accept(request: Request) -> str:
    """Frames and bulk data come as multipart/related parts (PS3.18 8.7.3.5)."""
    accept = request.headers.get("accept", "").strip()
    if not accept or accept in ("*/*", "multipart/related", "multipart/*"):
        return PIXEL_DEFAULT
    for offered in (part.strip() for part in accept.split(",")):
        media = offered.split(";")[0].strip().lower()
        if media in ("*/*", "multipart/*"):
            return PIXEL_DEFAULT
        if media == "multipart/related" and "application/dicom" not in offered:
            part_type = re.search(r'type\s*=\s*"?([^";,]*)', offered)
            if part_type is None or part_type.group(1).strip() in ("", "*/*", "application/*"):
                # Archives differ on wildcards here (Orthanc refuses them): ask for the default.
                return PIXEL_DEFAULT
            return offered
    raise NotAcceptable("Frames and bulk data are answered as multipart/related parts.")


@dicomweb_endpoint
@requires("ImagingStudy", "r", filterable=False)
async def frames(request: Request, services: Services, access: Access) -> Response:
    accept = _pixel_accept(request)
    target = _target(request)
    tail = request.path_params["frames"]
    bulkdata.parse_frame_list(tail)
    found = await services.records.images.pixels(access, target, "frames", tail, accept)
    return _streamed(found)


@dicomweb_endpoint
@requires("ImagingStudy", "r", filterable=False)
async def bulk(request: Request, services: Services, access: Access) -> Response:
    accept = _pixel_accept(request)
    target = _target(request)
    tail = request.path_params["tags"]
    if not bulkdata.TAG_PATH.fullmatch(tail):
        raise BadRequest(f"'{tail[:60]}' is not a bulk data tag path.")
    return _streamed(await services.records.images.pixels(access, target, "bulk", tail, accept))


@dicomweb_endpoint
@requires("ImagingStudy", "c", filterable=False)
async def store_instances(request: Request, services: Services, access: Access) -> Response:
    """STOW-RS: 200 all stored, 202 some failed, 409 none stored (PS3.18 10.5.3)."""
    boundary = stow.boundary_of(request.headers.get("content-type", ""))
    limit = services.settings.stow_max_bytes
    length = request.headers.get("content-length")
    if length is not None and whole_number("Content-Length", length) > limit:
        raise PayloadTooLarge(f"The upload exceeds the limit of {limit} bytes.")
    expected = request.path_params.get("study")
    if expected:
        qido.check_uid("StudyInstanceUID", expected)
    body = await stow.spool(request.stream(), limit)
    try:
        outcome = await services.records.images.store(access, body, boundary, expected)
    finally:
        body.close()
    payload = stow.response_json(outcome, services.settings.dicomweb_base_url)
    headers = {}
    if outcome.failed:  # 202 or 409: PS3.18 answers carry a Warning, as every error here does
        stored = "Some instances were" if outcome.stored else "No instance was"
        headers["Warning"] = warning_header(f"{stored} stored; see the FailedSOPSequence.")
    return Response(
        orjson.dumps(payload), status_code=outcome.status, media_type=DICOM_JSON, headers=headers
    )


def rendered_endpoint(thumbnail: bool) -> Callable[[Request], Awaitable[Response]]:
    @dicomweb_endpoint
    @requires("ImagingStudy", "r", filterable=False)
    async def endpoint(request: Request, services: Services, access: Access) -> Response:
        # The ``accept`` query parameter overrides the Accept header (PS3.18 8.3.3.1).
        accept = request.query_params.get("accept") or request.headers.get("accept", "")
        window = rendering.parse_window(request.query_params.get("window"))
        quality = whole_number(
            "quality", request.query_params.get("quality", "90"), minimum=1, maximum=100
        )
        frame_text = request.path_params.get("frame", "1")
        if not rendering.FRAME_LIST.fullmatch(frame_text):
            raise BadRequest(f"'{frame_text[:40]}' is not a frame number (1, 2, ...).")
        asked = RenderRequest(
            accept=accept,
            frame=int(frame_text),
            window=window,
            quality=quality,
            thumbnail=thumbnail,
            whole_instance=not thumbnail and "frame" not in request.path_params,
        )
        rendered = await services.records.images.render(access, _target(request), asked)
        return Response(
            rendered.content, media_type=rendered.media_type, headers=dict(rendered.headers)
        )

    return endpoint


def viewing_routes() -> list[BaseRoute]:
    """Rendered frames, thumbnails and reports: what the portal and share pages show."""
    return [
        Route(f"{INSTANCE}/rendered", rendered_endpoint(False), methods=["GET"]),
        Route(f"{INSTANCE}/thumbnail", rendered_endpoint(True), methods=["GET"]),
        Route(f"{INSTANCE}/frames/{{frame}}/rendered", rendered_endpoint(False), methods=["GET"]),
    ]


def routes() -> list[BaseRoute]:
    return [
        Route("/studies", store_instances, methods=["POST"]),
        Route("/studies/{study}", store_instances, methods=["POST"]),
        *read_routes(),
    ]


def read_routes() -> list[BaseRoute]:
    """QIDO-RS and every WADO-RS retrieval: what a capability URL may reach."""
    return [
        Route("/studies", qido_endpoint("study"), methods=["GET"]),
        Route("/series", qido_endpoint("series"), methods=["GET"]),
        Route("/instances", qido_endpoint("instance"), methods=["GET"]),
        Route("/studies/{study}/series", qido_endpoint("series"), methods=["GET"]),
        Route("/studies/{study}/instances", qido_endpoint("instance"), methods=["GET"]),
        Route(
            "/studies/{study}/series/{series}/instances", qido_endpoint("instance"), methods=["GET"]
        ),
        Route("/studies/{study}", retrieve, methods=["GET"]),
        Route("/studies/{study}/metadata", metadata, methods=["GET"]),
        Route("/studies/{study}/series/{series}", retrieve, methods=["GET"]),
        Route("/studies/{study}/series/{series}/metadata", metadata, methods=["GET"]),
        Route(INSTANCE, retrieve, methods=["GET"]),
        Route(f"{INSTANCE}/metadata", metadata, methods=["GET"]),
        Route(f"{INSTANCE}/frames/{{frames}}", frames, methods=["GET"]),
        Route(f"{INSTANCE}/bulk/{{tags:path}}", bulk, methods=["GET"]),
        *viewing_routes(),
    ]
