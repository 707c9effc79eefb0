"""What the portal's and a share's pages show of a study: series to look at, and reports.

Built from the same ImagingStudy and DocumentReference resources the FHIR API
serves, under the request's visibility, so the pages can never show more than
the API would. Images and reports are linked under the page's own image
routes (``/portal/dicomweb`` or ``/share/dicomweb``), which check again.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from gateway.access import Visibility
from gateway.auth.jacket import NOT_IMAGES
from gateway.errors import NotFound
from gateway.fhir.documents import DocumentCriteria
from gateway.fhir.studies import StudyCriteria
from gateway.services import Services

MAX_DOCUMENTS = 50


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
    services: Services, visibility: Visibility, study_uid: str, images_base: str
) -> StudyView | None:
    """The study as a page shows it; None when the visibility does not cover it."""
    try:
        resource = await services.studies.read(study_uid, visibility)
    except NotFound:
        return None
    documents = await services.documents.search(
        DocumentCriteria(study_uids={study_uid}), 0, MAX_DOCUMENTS, visibility
    )
    reports = [
        report
        for document in documents.resources
        if (report := _report(document, services.settings.dicomweb_base_url, images_base))
    ]
    return StudyView(
        uid=study_uid,
        date=str(resource.get("started", ""))[:10],
        description=resource.get("description", "Imaging study"),
        modalities=", ".join(
            m["code"] for m in resource.get("modality", []) if m["code"] not in NOT_IMAGES
        ),
        series=[
            _series(series)
            for series in resource.get("series", [])
            if series["modality"]["code"] not in NOT_IMAGES and series.get("instance")
        ],
        reports=reports,
    )


async def study_summaries(
    services: Services, visibility: Visibility, study_uids: list[str]
) -> list[dict[str, Any]]:
    """One line per study (newest first), with the UIDs of a first image for a thumbnail."""
    page = await services.studies.search(
        StudyCriteria(study_uids=set(study_uids)), 0, len(study_uids), visibility
    )
    lines = []
    for resource in page.resources:
        images = [
            _series(s)
            for s in resource.get("series", [])
            if s["modality"]["code"] not in NOT_IMAGES and s.get("instance")
        ]
        first = images[0] if images else None
        lines.append(
            {
                "uid": resource["id"],
                "date": str(resource.get("started", ""))[:10],
                "description": resource.get("description", "Imaging study"),
                "modalities": ", ".join(
                    m["code"] for m in resource.get("modality", []) if m["code"] not in NOT_IMAGES
                ),
                "images": sum(len(s.instances) for s in images),
                "thumbnail": (
                    f"studies/{resource['id']}/series/{first.uid}/instances/"
                    f"{first.instances[0]}/thumbnail"
                    if first
                    else None
                ),
            }
        )
    return lines


def _series(series: dict[str, Any]) -> SeriesView:
    instances = sorted(series.get("instance", []), key=lambda i: (i.get("number", 0), i["uid"]))
    return SeriesView(
        uid=series["uid"],
        number=series.get("number"),
        modality=series["modality"]["code"],
        description=series.get("description", ""),
        instances=[i["uid"] for i in instances],
    )


def _report(document: dict[str, Any], dicomweb_base: str, images_base: str) -> ReportView | None:
    """A readable report (SR as HTML, a PDF); manifests are for machines and left out."""
    for content in document.get("content", []):
        attachment = content["attachment"]
        url = str(attachment.get("url", ""))
        if attachment.get("contentType") in ("text/html", "application/pdf") and url.startswith(
            dicomweb_base
        ):
            return ReportView(
                title=document.get("description") or attachment.get("title") or "Report",
                status=str(document.get("docStatus", "")),
                url=images_base + url.removeprefix(dicomweb_base),
                media_type=str(attachment["contentType"]),
            )
    return None
