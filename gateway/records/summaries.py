"""Typed study summaries: what the gateway knows of a study from study-level QIDO.

The release delay, the jacket, the consent page and the portal read these
fields, rather than rebuilding a FHIR ImagingStudy and digging values back
out of it. The study's QIDO record stays beside them (``source``) for the
FHIR mapping, which is pure functions of DICOM JSON. Pure functions only.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, tzinfo
from zoneinfo import ZoneInfo

from gateway.dates import dicom_moment
from gateway.dicomweb import dicomjson as dj
from gateway.dicomweb import reports
from gateway.dicomweb.dicomjson import DicomJson
from gateway.records.access import CHECK_FIELDS, PatientKey, patient_key

# Reports a patient reads: structured reports and PDFs (a KOS manifest is for machines).
REPORT_CLASSES = frozenset({*reports.STRUCTURED_REPORTS, reports.ENCAPSULATED_PDF})
# What instance-level QIDO must return to tell a report's state (all top-level attributes).
REPORT_FIELDS = tuple(
    dict.fromkeys(
        (
            *CHECK_FIELDS,
            "SeriesInstanceUID",
            "SOPInstanceUID",
            "SOPClassUID",
            "CompletionFlag",
            "VerificationFlag",
            "PreliminaryFlag",
            "ContentDate",
            "ContentTime",
            "InstanceCreationDate",
            "InstanceCreationTime",
            "TimezoneOffsetFromUTC",
        )
    )
)
VERIFIED = frozenset({"final", "amended"})


@dataclass(frozen=True)
class Report:
    """A report in a study, as instance-level QIDO describes it."""

    uid: str
    study_uid: str
    kind: str  # "sr" or "pdf"
    status: str | None  # preliminary | final | amended | None when the object does not say
    created: datetime | None

    @property
    def verified(self) -> bool:
        return self.status in VERIFIED


@dataclass(frozen=True)
class StudySummary:
    uid: str
    patient: PatientKey | None
    started: datetime | None  # an instant (the study's zone, else the local one, else UTC)
    date: str  # YYYY-MM-DD, or "" when the study has no usable date
    modalities: tuple[str, ...]
    description: str
    accession: str | None
    series_count: int | None
    instance_count: int | None
    source: DicomJson = field(repr=False, compare=False)
    reports: tuple[Report, ...] = ()
    # When patient-facing access may see it (computed by the release policy; None: not asked).
    available_at: datetime | None = None
    # When the gateway's study index last saw it change (None: not indexed).
    updated: datetime | None = None

    @property
    def has_report(self) -> bool:
        return bool(self.reports)

    @property
    def verified_at(self) -> datetime | None:
        """When its report was last made final, if it has a verified report."""
        times = [r.created for r in self.reports if r.verified and r.created]
        return max(times) if times else None

    @property
    def last_updated(self) -> datetime | None:
        """Its ImagingStudy's ``meta.lastUpdated``: the later of when the index last saw
        the study change and when it was released to its patient (a study released
        since an app's last look is new to that app). None when neither is known.
        Whole milliseconds, so the value served and the value searched are one."""
        times = [t for t in (self.updated, self.available_at) if t is not None]
        if not times:
            return None
        latest = max(times)
        return latest.replace(microsecond=latest.microsecond // 1000 * 1000)

    def with_reports(self, found: Iterable[Report]) -> StudySummary:
        return replace(self, reports=tuple(r for r in found if r.study_uid == self.uid))


def summarize(
    study: DicomJson, local_zone: ZoneInfo | None, updated: datetime | None = None
) -> StudySummary | None:
    """The summary of one study-level QIDO record (None without a StudyInstanceUID)."""
    uid = dj.text(study, "StudyInstanceUID")
    if not uid:
        return None
    moment = dicom_moment(
        dj.text(study, "StudyDate"),
        dj.text(study, "StudyTime"),
        dj.text(study, "TimezoneOffsetFromUTC"),
        local_zone,
    )
    return StudySummary(
        uid=uid,
        patient=patient_key(study),
        started=moment.aware(local_zone or UTC)[0] if moment else None,
        date=moment.start.date().isoformat() if moment else "",
        modalities=tuple(m.upper() for m in dj.texts(study, "ModalitiesInStudy")),
        description=dj.text(study, "StudyDescription") or "",
        accession=dj.text(study, "AccessionNumber"),
        series_count=dj.integer(study, "NumberOfStudyRelatedSeries"),
        instance_count=dj.integer(study, "NumberOfStudyRelatedInstances"),
        source=study,
        updated=updated,
    )


def report_of(instance: DicomJson, local_zone: ZoneInfo | None) -> Report | None:
    """A report row (instance-level QIDO with REPORT_FIELDS); None for anything else."""
    kind = reports.kind_of(instance)
    uid = dj.text(instance, "SOPInstanceUID")
    study = dj.text(instance, "StudyInstanceUID")
    if kind not in ("sr", "pdf") or not uid or not study:
        return None
    moment = dicom_moment(
        dj.text(instance, "ContentDate") or dj.text(instance, "InstanceCreationDate"),
        dj.text(instance, "ContentTime") or dj.text(instance, "InstanceCreationTime"),
        dj.text(instance, "TimezoneOffsetFromUTC"),
        local_zone,
    )
    zone: tzinfo = local_zone or UTC
    return Report(
        uid=uid,
        study_uid=study,
        kind=kind,
        status=reports.doc_status(instance),
        created=moment.aware(zone)[0] if moment else None,
    )


def newest_first(summaries: Sequence[StudySummary]) -> list[StudySummary]:
    """Newest first; undated studies last; ties by UID, so the order is stable."""
    floor = datetime.min.replace(tzinfo=UTC)
    return sorted(summaries, key=lambda s: (s.started or floor, s.uid), reverse=True)
