"""A whole study by WADO-RS, as SMART Imaging Access asks for it: all or nothing, in order.

``GET /studies/{uid}`` with ``Accept: multipart/related; type="application/dicom"``
(``transfer-syntax=*`` or any other) is assembled here rather than relayed:

- the study's instances are listed first with one instance-level QIDO by
  StudyInstanceUID alone (not narrowed to the caller's patient), so an
  instance the caller may not see (another patient's, filed under the same
  study UID) is found before anything is sent, and the request is refused
  whole: a full-study request is never answered with part of the study;
- the series are then fetched one WADO-RS request each, images first by
  Series Number, then documents (SR, PDF, KOS and other non-image objects),
  so a client that shows the first part gets an image; within a series the
  parts come in the order the archive sends them;
- each part is re-framed under the gateway's own boundary with
  ``Content-Type: application/dicom; transfer-syntax={the UID in its file
  meta}``, read from the part's first bytes, so the client knows what each
  part is without parsing it.

The body streams: only the first bytes of each part (its file meta) wait,
and an archive that ends an answer early, or leaves out an instance it
listed, aborts the answer rather than finish it short.
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Sequence

from gateway.dicomweb import dicomjson as dj
from gateway.dicomweb import reports
from gateway.dicomweb.dicomjson import DicomJson
from gateway.dicomweb.instances import PART_END, Parts, file_meta
from gateway.dicomweb.upstream import Retrieved, Upstream
from gateway.errors import Forbidden, NotFound, UpstreamBadResponse, UpstreamIncomplete
from gateway.records.access import CHECK_FIELDS, Visibility

_LISTED = ("SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID", "SeriesNumber", "Modality")
FIELDS = tuple(dict.fromkeys((*CHECK_FIELDS, *_LISTED, "InstanceNumber")))
LAST = 1 << 31
# Series whose objects are not images (PS3.3 C.7.3.1.1.1): they go after the images.
NOT_IMAGES = frozenset({*reports.DOCUMENT_MODALITIES, "PR", "REG", "SEG", "RWV", "PLAN"})
# The PS3.18 default when a part's file meta names none (it always should).
EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1"


def is_full_study_request(series: str | None) -> bool:
    """WADO-RS retrieval of a study (every Accept it takes is application/dicom parts)."""
    return series is None


async def listing(upstream: Upstream, study: str, visibility: Visibility) -> list[DicomJson]:
    """The study's instances, in the order they are sent; Forbidden if any of them is
    outside ``visibility`` (the study cannot be given whole)."""
    found: dict[str, DicomJson] = {}
    for item in await upstream.search_instances({"StudyInstanceUID": study}, FIELDS):
        if dj.text(item, "StudyInstanceUID") != study:
            continue  # a PACS that ignores the filter
        if not visibility.permits(item):
            raise Forbidden(
                "This study holds objects outside the access granted, so it cannot be "
                "retrieved whole; retrieve its series one by one."
            )
        series, instance = dj.text(item, "SeriesInstanceUID"), dj.text(item, "SOPInstanceUID")
        if not (series and instance and dj.is_uid(series) and dj.is_uid(instance)):
            raise UpstreamBadResponse("The archive listed an instance without valid UIDs.")
        found.setdefault(instance, item)
    if not found:
        raise NotFound("The archive holds no instances of this study.")
    return sorted(found.values(), key=order)


def order(item: DicomJson) -> tuple[bool, int, str, int, str]:
    """Images before other objects, then by Series Number (unnumbered last)."""
    modality = (dj.text(item, "Modality") or "").upper()
    not_image = modality in NOT_IMAGES or (
        (dj.text(item, "SOPClassUID") or "") in reports.CONTENT_CLASSES
    )
    series, instance = dj.integer(item, "SeriesNumber"), dj.integer(item, "InstanceNumber")
    return (
        not_image,
        LAST if series is None or series < 0 else series,
        dj.text(item, "SeriesInstanceUID") or "",
        LAST if instance is None else instance,
        dj.text(item, "SOPInstanceUID") or "",
    )


async def ordered_study(
    upstream: Upstream, study: str, listed: Sequence[DicomJson], accept: str
) -> Retrieved:
    """The listed instances as one multipart answer, series by series in ``listed``'s
    order. The first series is asked for before this returns, so an archive that
    refuses it is an error answer, not a broken body."""
    series_order = list(dict.fromkeys(dj.text(i, "SeriesInstanceUID") or "" for i in listed))
    wanted = {dj.text(i, "SOPInstanceUID") or "" for i in listed}
    boundary = secrets.token_hex(16)
    first = await upstream.retrieve(f"studies/{study}/series/{series_order[0]}", accept)
    current: list[Retrieved] = [first]

    async def chunks() -> AsyncIterator[bytes]:
        sent: set[str] = set()
        for index, series in enumerate(series_order):
            retrieved = (
                first
                if index == 0
                else await upstream.retrieve(f"studies/{study}/series/{series}", accept)
            )
            current[0] = retrieved
            try:
                async for piece in _reframed(retrieved, boundary, wanted, sent):
                    yield piece
            finally:
                await retrieved.close()
        if sent != wanted:
            raise UpstreamIncomplete(
                f"The archive left out {len(wanted - sent)} of the study's listed instances."
            )
        yield f"--{boundary}--\r\n".encode("ascii")

    async def close() -> None:
        await current[0].close()

    return Retrieved(
        f'multipart/related; type="application/dicom"; boundary={boundary}', chunks(), close
    )


async def _reframed(
    retrieved: Retrieved, boundary: str, wanted: set[str], sent: set[str]
) -> AsyncIterator[bytes]:
    """Each part of one series' answer under ``boundary``, with its transfer syntax named;
    parts not listed (stored since), and second copies, are dropped."""
    parts = Parts(retrieved.media_type)
    head = bytearray()
    state = "head"  # "head": reading the file meta; then "send" or "drop" the rest
    async for chunk in retrieved.chunks:
        for piece in parts.feed(chunk):
            if piece is PART_END:
                if state == "head":  # a part too short to name before it ended
                    if _take(file_meta(head, True), wanted, sent) is not None:
                        yield _part_header(boundary, file_meta(head, True)) + bytes(head)
                        state = "send"
                if state == "send":
                    yield b"\r\n"
                head, state = bytearray(), "head"
            elif state == "send":
                yield bytes(piece)
            elif state == "head":
                head += piece
                meta = file_meta(head, False)
                if meta is None:
                    continue
                if _take(meta, wanted, sent) is None:
                    state = "drop"
                    continue
                yield _part_header(boundary, meta) + bytes(head)
                state = "send"
    parts.finish()


def _take(meta: tuple[str, str | None] | None, wanted: set[str], sent: set[str]) -> str | None:
    """The part's SOP Instance UID if it is listed and not sent yet (then it is sent)."""
    if meta is None or meta[0] not in wanted or meta[0] in sent:
        return None
    sent.add(meta[0])
    return meta[0]


def _part_header(boundary: str, meta: tuple[str, str | None] | None) -> bytes:
    syntax = (meta[1] if meta else None) or EXPLICIT_VR_LITTLE_ENDIAN
    return (
        f"--{boundary}\r\nContent-Type: application/dicom; transfer-syntax={syntax}\r\n\r\n"
    ).encode("ascii")
