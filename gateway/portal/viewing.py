"""What the portal's and a share's pages show of a study: series to look at, and reports.

Built from the records layer's summaries, series and documents, under the
caller's access, so the pages can never show more than the API would. Images
and reports are linked under the page's own image routes (``/portal/dicomweb``
or ``/share/dicomweb``), which check again.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from gateway.auth.jacket import NOT_IMAGES
from gateway.dicomweb import dicomjson as dj
from gateway.dicomweb import reports
from gateway.dicomweb.dicomjson import DicomJson
from gateway.errors import NotFound
from gateway.records.access import Access
from gateway.records.documents import DocumentQuery
from gateway.records.studies import StudyDetail
from gateway.services import Services


@dataclass(frozen=True)
class SeriesView:
    uid: str
    number: int | None
    modality: str
    description: str
    instances: list[str]  # SOP Instance UIDs, in instance-number order


@dataclass(frozen=True)
class ReportView:
    title: str
    status: str
    url: str  # under the page's image routes
    media_type: str


@dataclass(frozen=True)
class StudyView:
    uid: str
    date: str
    description: str
    modalities: str
    series: list[SeriesView]
    reports: list[ReportView]

    def image(self, series_uid: str | None, number: int) -> tuple[SeriesView, int] | None:
        """The series (the first one when none is named) and a 1-based image number in it."""
        chosen = next((s for s in self.series if s.uid == series_uid), None)
        chosen = chosen or (self.series[0] if self.series else None)
        if chosen is None or not chosen.instances:
            return None
        return chosen, min(max(number, 1), len(chosen.instances))


async def study_view(
    services: Services, access: Access, study_uid: str, images_base: str
) -> StudyView | None:
    """The study as a page shows it; None when the access does not cover it."""
    records = services.records
    try:
        summary = await records.studies.summary(access, study_uid)
    except NotFound:
        return None
    (detail,) = await records.studies.details(access, [summary])
    found = await records.documents.find(access, DocumentQuery(study_uids=frozenset({study_uid})))
    return StudyView(
        uid=study_uid,
        date=summary.date,
        description=summary.description or "Imaging study",
        modalities=_modalities(summary.modalities),
        series=_image_series(detail),
        reports=[r for d in found.documents if (r := _report(d, images_base))],
    )


async def study_lines(
    services: Services, access: Access, study_uids: Sequence[str]
) -> list[dict[str, Any]]:
    """One line per study the access covers (newest first), with a first image's thumbnail."""
    jacket = await services.records.studies.jacket(access)
    wanted = [s for s in jacket.studies if s.uid in set(study_uids) and s.uid not in access.held]
    lines = []
    for detail in await services.records.studies.details(access, wanted):
        images = _image_series(detail)
        first = images[0] if images else None
        lines.append(
            {
                "uid": detail.summary.uid,
                "date": detail.summary.date,
                "description": detail.summary.description or "Imaging study",
                "modalities": _modalities(detail.summary.modalities),
                "images": sum(len(s.instances) for s in images),
                "thumbnail": (
                    f"studies/{detail.summary.uid}/series/{first.uid}/instances/"
                    f"{first.instances[0]}/thumbnail"
                    if first
                    else None
                ),
            }
        )
    return lines


def _modalities(codes: Sequence[str]) -> str:
    return ", ".join(m for m in codes if m not in NOT_IMAGES)


def _image_series(detail: StudyDetail) -> list[SeriesView]:
    """The series a person looks at (not reports or manifests), in series-number order."""
    instances: dict[str, list[DicomJson]] = {}
    for instance in detail.instances:
        instances.setdefault(dj.text(instance, "SeriesInstanceUID") or "", []).append(instance)
    views = []
    for series in detail.series:
        uid = dj.text(series, "SeriesInstanceUID") or ""
        modality = (dj.text(series, "Modality") or "").upper()
        members = sorted(
            instances.get(uid, []),
            key=lambda i: (dj.integer(i, "InstanceNumber") or 0, dj.text(i, "SOPInstanceUID")),
        )
        if modality in NOT_IMAGES or not members:
            continue
        views.append(
            SeriesView(
                uid=uid,
                number=dj.integer(series, "SeriesNumber"),
                modality=modality,
                description=dj.text(series, "SeriesDescription") or "",
                instances=[dj.text(i, "SOPInstanceUID") or "" for i in members],
            )
        )
    return sorted(views, key=lambda v: (v.number is None, v.number or 0, v.uid))


def _report(document: DicomJson, images_base: str) -> ReportView | None:
    """A readable report (SR as HTML, a PDF); manifests are for machines and left out."""
    kind = reports.kind_of(document)
    if kind not in ("sr", "pdf"):
        return None
    media_type = "text/html" if kind == "sr" else "application/pdf"
    study, series, sop = (
        dj.text(document, key) or ""
        for key in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")
    )
    return ReportView(
        title=dj.text(document, "SeriesDescription") or reports.title_of(document) or "Report",
        status=reports.doc_status(document) or "",
        url=(
            f"{images_base}/studies/{study}/series/{series}/instances/{sop}"
            f"/rendered?accept={media_type.replace('/', '%2F')}"
        ),
        media_type=media_type,
    )
