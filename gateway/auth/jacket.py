"""The patient's jacket: their studies as the consent page lists them, one line each."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from gateway.access import Visibility
from gateway.fhir.documents import DocumentCriteria
from gateway.fhir.studies import StudyCriteria
from gateway.services import Services

MAX_STUDIES = 500
# Reports, manifests and presentation states: in the study, but not what a patient calls it.
NOT_IMAGES = frozenset({"SR", "KO", "DOC", "PR"})
# What the patient can choose for how long an app may see the chosen studies.
DURATIONS: dict[str, tuple[str, timedelta | None]] = {
    "1d": ("One day", timedelta(days=1)),
    "7d": ("One week", timedelta(days=7)),
    "30d": ("30 days", timedelta(days=30)),
    "revoke": ("Until I revoke it", None),
}


@dataclass(frozen=True)
class JacketStudy:
    uid: str
    date: str
    modalities: str
    description: str
    body_parts: str
    has_report: bool


async def studies_of(services: Services, patient_fhir_id: str) -> list[JacketStudy]:
    """The patient's studies, newest first, with whether a report exists."""
    key = await services.patient_index.key_for(patient_fhir_id)
    if key is None:
        return []
    visibility = Visibility(patients=frozenset({key}))
    page = await services.studies.search(StudyCriteria(patients=[key]), 0, MAX_STUDIES, visibility)
    documents = await services.documents.search(
        DocumentCriteria(patients=[key]), 0, MAX_STUDIES * 4, visibility
    )
    reported = {
        ref["reference"].removeprefix("ImagingStudy/")
        for document in documents.resources
        if document["type"]["coding"][0]["code"] == "18748-4"
        for ref in document.get("context", {}).get("related", [])
    }
    return [_line(resource, reported) for resource in page.resources]


def _line(resource: dict[str, Any], reported: set[str]) -> JacketStudy:
    body_parts = {
        site.get("display", "")
        for series in resource.get("series", [])
        if (site := series.get("bodySite"))
    }
    return JacketStudy(
        uid=resource["id"],
        date=str(resource.get("started", ""))[:10],
        modalities=", ".join(
            m["code"] for m in resource.get("modality", []) if m["code"] not in NOT_IMAGES
        ),
        description=resource.get("description", "Imaging study"),
        body_parts=", ".join(sorted(p for p in body_parts if p)),
        has_report=resource["id"] in reported,
    )


def consent_until(choice: str, now: datetime | None = None) -> str | None:
    """The end of the consent as an ISO instant, or None for "until I revoke it"."""
    _, length = DURATIONS[choice]
    if length is None:
        return None
    return ((now or datetime.now(UTC)) + length).isoformat(timespec="seconds")
