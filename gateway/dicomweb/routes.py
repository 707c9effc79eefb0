"""``/dicomweb``: QIDO-RS (PS3.18 10.6), WADO-RS retrieval (10.4) and STOW-RS (10.5).

Every query is narrowed by the request's visibility (gateway.access) and every
result re-checked before it is returned.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import re
from collections.abc import Awaitable, Callable
from io import BytesIO

import anyio
import orjson
from pydicom import Dataset, dcmread
from pydicom.errors import InvalidDicomError
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response, StreamingResponse
from starlette.routing import BaseRoute, Route

from gateway.access import CHECK_FIELDS, Visibility
from gateway.dicomweb import bulkdata, instances, qido, rendering, reports, stow
from gateway.dicomweb import dicomjson as dj
from gateway.dicomweb.dicomjson import DicomJson
from gateway.dicomweb.matching import matches, vr_of
from gateway.dicomweb.upstream import StoreResult
from gateway.errors import (
    BadRequest,
    GatewayError,
    NotAcceptable,
    NotFound,
    PayloadTooLarge,
    UpstreamBadResponse,
)
from gateway.services import Services

logger = logging.getLogger(__name__)
DICOM_JSON = "application/dicom+json"
MULTIPART_DICOM = 'multipart/related; type="application/dicom"'
PIXEL_DEFAULT = 'multipart/related; type="application/octet-stream"'
DICOM_PART = re.compile(r'type="?application/dicom"?(;|$)')
LEVEL_KEYS = {
    "study": "StudyInstanceUID",
    "series": "SeriesInstanceUID",
    "instance": "SOPInstanceUID",
}


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
        except Exception:
            logger.exception("unhandled error in %s %s", request.method, request.url.path)
            return error_response(500, "An internal error occurred.")

    return endpoint


def error_response(status: int, message: str, headers: dict[str, str] | None = None) -> Response:
    warning = message.replace('"', "'")
    return PlainTextResponse(
        message + "\n",
        status_code=status,
        headers={**(headers or {}), "Warning": f'299 gateway "{warning}"'},
    )


def _accepts_dicom_json(request: Request) -> None:
    accept = request.headers.get("accept", "")
    if not accept:
        return
    offered = {part.split(";")[0].strip().lower() for part in accept.split(",")}
    if offered.isdisjoint({DICOM_JSON, "application/json", "*/*", "application/*"}):
        raise NotAcceptable("QIDO-RS answers application/dicom+json only.")


async def search(
    services: Services, visibility: Visibility, level: str, query: qido.Query
) -> list[DicomJson]:
    """Run ``query`` at ``level`` within ``visibility``: narrowed, merged, re-checked, paged."""
    # Fuzzy person-name keys are matched here, not by the PACS: support for
    # fuzzymatching differs between archives (Orthanc ignores it).
    held = {
        name: value
        for name, value in query.filters.items()
        if query.fuzzy and vr_of(name) == "PN" and not any(c in value for c in "*?")
    }
    forwarded = {k: v for k, v in query.filters.items() if k not in held}
    queries = visibility.narrow(forwarded)
    if not queries:
        return []
    fields = [*query.fields, *held]
    if not visibility.unrestricted:
        fields.extend(CHECK_FIELDS)
    wanted = None if query.limit is None or held else query.offset + query.limit
    upstream = services.upstream
    run = {
        "study": upstream.search_studies,
        "series": upstream.search_series,
        "instance": upstream.search_instances,
    }[level]
    batches = await asyncio.gather(*(run(filters, fields, limit=wanted) for filters in queries))
    seen: set[str] = set()
    results = []
    for item in (i for batch in batches for i in batch):
        key = dj.text(item, LEVEL_KEYS[level]) or ""
        if key in seen or not visibility.permits(item):
            continue
        if held and not matches(item, held, fuzzy=True):
            continue
        seen.add(key)
        results.append(item)
    end = None if query.limit is None else query.offset + query.limit
    return results[query.offset : end]


def qido_endpoint(level: str) -> Callable[[Request], Awaitable[Response]]:
    @dicomweb_endpoint
    async def endpoint(request: Request, services: Services) -> Response:
        _accepts_dicom_json(request)
        query = qido.parse(request.query_params)
        for name, key in (("study", "StudyInstanceUID"), ("series", "SeriesInstanceUID")):
            if name in request.path_params:
                query.filters[key] = qido.check_uid(key, request.path_params[name])
        visibility = await services.policy.visibility(request)
        results = await search(services, visibility, level, query)
        if not results:
            # PS3.18 8.3.4.4.1: no matches is 204 with an empty payload (CP-2473 may make it 200).
            return Response(status_code=204)
        return Response(orjson.dumps(results), media_type=DICOM_JSON)

    return endpoint


async def ensure_visible(services: Services, visibility: Visibility, study_uid: str) -> None:
    """404 unless the request may see this study (never 403: that would confirm it exists)."""
    if visibility.unrestricted:
        return
    for filters in visibility.narrow({"StudyInstanceUID": study_uid}):
        for study in await services.upstream.search_studies(filters, CHECK_FIELDS, limit=2):
            if dj.text(study, "StudyInstanceUID") == study_uid and visibility.permits(study):
                return
    raise NotFound("Not found.")


def _wado_accept(request: Request, metadata: bool) -> str:
    accept = request.headers.get("accept", "").strip()
    if metadata:
        _accepts_dicom_json(request)
        return DICOM_JSON
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


def wado_endpoint(metadata: bool) -> Callable[[Request], Awaitable[Response]]:
    @dicomweb_endpoint
    async def endpoint(request: Request, services: Services) -> Response:
        accept = _wado_accept(request, metadata)
        levels = (("study", "studies"), ("series", "series"), ("instance", "instances"))
        parts = []
        for name, collection in levels:
            if name in request.path_params:
                key = LEVEL_KEYS[name]
                parts += [collection, qido.check_uid(key, request.path_params[name])]
        visibility = await services.policy.visibility(request)
        await ensure_visible(services, visibility, request.path_params["study"])
        path = "/".join(parts) + ("/metadata" if metadata else "")
        retrieved = await services.upstream.retrieve(path, accept)
        chunks = retrieved.chunks
        if metadata:
            chunks = bulkdata.rewrite_bulk_uris(chunks, services.settings.dicomweb_base_url)
        return StreamingResponse(
            chunks,
            media_type=retrieved.media_type,
            background=BackgroundTask(retrieved.close),
        )

    return endpoint


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


def pixel_endpoint(resource: str) -> Callable[[Request], Awaitable[Response]]:
    """``/frames/{list}`` and ``/bulk/{tag path}`` of one instance, relayed as they stream."""

    @dicomweb_endpoint
    async def endpoint(request: Request, services: Services) -> Response:
        accept = _pixel_accept(request)
        study, series, instance = (
            qido.check_uid(key, request.path_params[name])
            for name, key in (
                ("study", "StudyInstanceUID"),
                ("series", "SeriesInstanceUID"),
                ("instance", "SOPInstanceUID"),
            )
        )
        if resource == "frames":
            tail = request.path_params["frames"]
            bulkdata.parse_frame_list(tail)
        else:
            tail = request.path_params["tags"]
            if not bulkdata.TAG_PATH.fullmatch(tail):
                raise BadRequest(f"'{tail[:60]}' is not a bulk data tag path.")
        visibility = await services.policy.visibility(request)
        await ensure_visible(services, visibility, study)
        path = f"studies/{study}/series/{series}/instances/{instance}/{resource}/{tail}"
        retrieved = await services.upstream.retrieve(path, accept)
        return StreamingResponse(
            retrieved.chunks,
            media_type=retrieved.media_type,
            background=BackgroundTask(retrieved.close),
        )

    return endpoint


@dicomweb_endpoint
async def store_instances(request: Request, services: Services) -> Response:
    """STOW-RS: 200 all stored, 202 some failed, 409 none stored (PS3.18 10.5.3)."""
    boundary = stow.boundary_of(request.headers.get("content-type", ""))
    limit = services.settings.stow_max_bytes
    length = request.headers.get("content-length", "")
    if length.isdigit() and int(length) > limit:
        raise PayloadTooLarge(f"The upload exceeds the limit of {limit} bytes.")
    expected = request.path_params.get("study")
    if expected:
        qido.check_uid("StudyInstanceUID", expected)
    body = await stow.spool(request.stream(), limit)
    outcome = stow.Outcome()
    batch: list[tuple[Dataset, bytes]] = []

    async def flush() -> None:
        if not batch:
            return
        try:
            result = await services.upstream.store_encoded([raw for _, raw in batch])
        except UpstreamBadResponse:
            result = StoreResult(failed={str(ds.SOPInstanceUID): "refused" for ds, _ in batch})
        # Stored means listed as stored; only an archive that names nothing at all
        # (a bare 200) is taken at its word for the whole batch.
        named = bool(result.stored or result.failed)
        stored = set(result.stored)
        for dataset, _ in batch:
            uid = str(dataset.SOPInstanceUID)
            if named and uid not in stored:
                outcome.failed.append((str(dataset.SOPClassUID), uid, stow.PROCESSING_FAILURE))
            else:
                outcome.stored.append(dataset)
        batch.clear()

    try:
        ranges = await anyio.to_thread.run_sync(stow.part_ranges, body, boundary)
        while ranges:
            parts, taken = await anyio.to_thread.run_sync(stow.read_group, body, ranges)
            ranges = ranges[taken:]
            for part in parts:
                dataset = part.dataset
                if dataset is None:
                    outcome.failed.append(("", "", stow.CANNOT_UNDERSTAND))
                elif expected and str(dataset.get("StudyInstanceUID", "")) != expected:
                    outcome.failed.append(
                        (str(dataset.SOPClassUID), str(dataset.SOPInstanceUID), stow.WRONG_STUDY)
                    )
                else:
                    batch.append((dataset, part.content))
            await flush()
    finally:
        body.close()
    payload = stow.response_json(outcome, services.settings.dicomweb_base_url)
    return Response(orjson.dumps(payload), status_code=outcome.status, media_type=DICOM_JSON)


async def fetch_instance(services: Services, study: str, series: str, instance: str) -> Dataset:
    """One instance, whole: rendering needs its pixels (capped in size)."""
    content = await instances.part10(services.upstream, study, series, instance)
    try:
        return await anyio.to_thread.run_sync(lambda: dcmread(BytesIO(content)))
    except (InvalidDicomError, ValueError, EOFError):
        raise UpstreamBadResponse("The archive sent an instance that cannot be read.") from None


def rendered_accept(request: Request) -> str:
    """The Accept header, or the ``accept`` query parameter that overrides it (PS3.18 8.3.3.1)."""
    return request.query_params.get("accept") or request.headers.get("accept", "")


async def rendered_report(services: Services, uids: list[str], accept: str) -> Response:
    """A structured report as HTML or text, from its metadata (as the FHIR size is)."""
    media_type = rendering.choose(accept, ("text/html", "text/plain"))
    path = "studies/{}/series/{}/instances/{}".format(*uids)
    found = await instances.metadata(services.upstream, path)
    if not found or reports.kind_of(found[0]) != "sr":
        raise NotAcceptable("Only structured reports are rendered as text/html or text/plain.")
    if media_type == "text/html":
        return Response(reports.render_html(found[0]), media_type="text/html; charset=utf-8")
    return Response(reports.render_text(found[0]), media_type="text/plain; charset=utf-8")


def encapsulated_document(dataset: Dataset, accept: str) -> Response:
    """An Encapsulated PDF (or CDA ...) rendered as the document it carries."""
    mime = str(dataset.get("MIMETypeOfEncapsulatedDocument", "") or "application/pdf")
    rendering.choose(accept, (mime,))
    document = bytes(dataset.EncapsulatedDocument)
    length = dataset.get("EncapsulatedDocumentLength")
    if length and int(length) <= len(document):
        document = document[: int(length)]  # drop the even-length padding
    return Response(document, media_type=mime)


def rendered_endpoint(thumbnail: bool) -> Callable[[Request], Awaitable[Response]]:
    @dicomweb_endpoint
    async def endpoint(request: Request, services: Services) -> Response:
        accept = rendered_accept(request)
        window = rendering.parse_window(request.query_params.get("window"))
        quality_text = request.query_params.get("quality", "90")
        if not quality_text.isdigit() or not 1 <= int(quality_text) <= 100:
            raise BadRequest("quality must be a whole number from 1 to 100.")
        uids = [
            qido.check_uid(key, request.path_params[name])
            for name, key in (
                ("study", "StudyInstanceUID"),
                ("series", "SeriesInstanceUID"),
                ("instance", "SOPInstanceUID"),
            )
        ]
        frame_text = request.path_params.get("frame", "1")
        if not rendering.FRAME_LIST.fullmatch(frame_text):
            raise BadRequest(f"'{frame_text[:40]}' is not a frame number (1, 2, ...).")
        visibility = await services.policy.visibility(request)
        await ensure_visible(services, visibility, uids[0])
        whole_instance = not thumbnail and "frame" not in request.path_params
        if whole_instance and any(t in accept.lower() for t in ("text/html", "text/plain")):
            return await rendered_report(services, uids, accept)
        dataset = await fetch_instance(services, *uids)
        sop_class = str(dataset.get("SOPClassUID", ""))
        if whole_instance and "PixelData" not in dataset:
            if sop_class in reports.STRUCTURED_REPORTS:
                return await rendered_report(services, uids, accept)
            if "EncapsulatedDocument" in dataset:
                return encapsulated_document(dataset, accept)
        media_type = rendering.choose_media_type(accept)
        image = await anyio.to_thread.run_sync(
            lambda: rendering.render(
                dataset,
                int(frame_text),
                media_type,
                window,
                rendering.THUMBNAIL_EDGE if thumbnail else None,
                int(quality_text),
            )
        )
        return Response(image, media_type=media_type)

    return endpoint


INSTANCE = "/studies/{study}/series/{series}/instances/{instance}"


def viewing_routes() -> list[BaseRoute]:
    """Rendered frames, thumbnails and reports: what the portal and share pages show."""
    return [
        Route(f"{INSTANCE}/rendered", rendered_endpoint(False), methods=["GET"]),
        Route(f"{INSTANCE}/thumbnail", rendered_endpoint(True), methods=["GET"]),
        Route(f"{INSTANCE}/frames/{{frame}}/rendered", rendered_endpoint(False), methods=["GET"]),
    ]


def routes() -> list[BaseRoute]:
    return [
        Route("/studies", qido_endpoint("study"), methods=["GET"]),
        Route("/studies", store_instances, methods=["POST"]),
        Route("/studies/{study}", store_instances, methods=["POST"]),
        Route("/series", qido_endpoint("series"), methods=["GET"]),
        Route("/instances", qido_endpoint("instance"), methods=["GET"]),
        Route("/studies/{study}/series", qido_endpoint("series"), methods=["GET"]),
        Route("/studies/{study}/instances", qido_endpoint("instance"), methods=["GET"]),
        Route(
            "/studies/{study}/series/{series}/instances",
            qido_endpoint("instance"),
            methods=["GET"],
        ),
        Route("/studies/{study}", wado_endpoint(False), methods=["GET"]),
        Route("/studies/{study}/metadata", wado_endpoint(True), methods=["GET"]),
        Route("/studies/{study}/series/{series}", wado_endpoint(False), methods=["GET"]),
        Route("/studies/{study}/series/{series}/metadata", wado_endpoint(True), methods=["GET"]),
        Route(
            "/studies/{study}/series/{series}/instances/{instance}",
            wado_endpoint(False),
            methods=["GET"],
        ),
        Route(
            "/studies/{study}/series/{series}/instances/{instance}/metadata",
            wado_endpoint(True),
            methods=["GET"],
        ),
        Route(
            "/studies/{study}/series/{series}/instances/{instance}/rendered",
            rendered_endpoint(False),
            methods=["GET"],
        ),
        Route(
            "/studies/{study}/series/{series}/instances/{instance}/thumbnail",
            rendered_endpoint(True),
            methods=["GET"],
        ),
        Route(
            "/studies/{study}/series/{series}/instances/{instance}/frames/{frames}",
            pixel_endpoint("frames"),
            methods=["GET"],
        ),
        Route(
            "/studies/{study}/series/{series}/instances/{instance}/bulk/{tags:path}",
            pixel_endpoint("bulk"),
            methods=["GET"],
        ),
        Route(
            "/studies/{study}/series/{series}/instances/{instance}/frames/{frame}/rendered",
            rendered_endpoint(False),
            methods=["GET"],
        ),
    ]
