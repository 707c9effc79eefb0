"""A donated study's de-identified copies, one instance at a time, through the engine.

Each instance is fetched whole (as stored: ``dicomweb.instances.part10``, capped),
read, de-identified with the project's key and profile in a worker thread, and
written out again as Part 10 bytes; only one instance is held at a time. An
instance whose PatientID or issuer is not the donor's is never read.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from io import BytesIO
from typing import Any

import anyio
from pydicom import Dataset, dcmread
from pydicom.errors import InvalidDicomError

from gateway.dicomweb import dicomjson as dj
from gateway.dicomweb import instances
from gateway.dicomweb.dicomjson import DicomJson, PatientKey
from gateway.dicomweb.upstream import Upstream
from gateway.donation.projects import Project
from gateway.research.deid import Deidentified, Excluded, deidentify

LISTED = (
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "SOPInstanceUID",
    "PatientID",
    "IssuerOfPatientID",
    "InstanceNumber",
)
BINARY_VRS = frozenset({"OB", "OW", "OF", "OD", "OL", "OV", "UN"})


@dataclass(frozen=True)
class Copy:
    """One de-identified instance: its new UIDs and its Part 10 bytes."""

    study_uid: str
    series_uid: str
    instance_uid: str
    patient_pseudonym: str
    data: bytes


@dataclass(frozen=True)
class Original:
    study_uid: str
    series_uid: str
    instance_uid: str


async def listed(upstream: Upstream, study_uid: str, donor: PatientKey) -> list[Original]:
    """The study's instances that are the donor's (one instance-level QIDO)."""
    found = await upstream.search_instances({"StudyInstanceUID": study_uid}, LISTED)
    originals = []
    for item in found:
        series, sop = dj.text(item, "SeriesInstanceUID"), dj.text(item, "SOPInstanceUID")
        if dj.text(item, "StudyInstanceUID") not in (None, study_uid):
            continue
        if not series or not sop or dj.patient_key(item) != donor:
            continue
        originals.append(Original(study_uid, series, sop))
    originals.sort(key=lambda o: (o.series_uid, o.instance_uid))
    return originals


def _key(dataset: Dataset) -> PatientKey:
    return (str(dataset.get("IssuerOfPatientID", "") or ""), str(dataset.get("PatientID", "")))


def _deidentify_bytes(
    raw: bytes, project: Project, donor: PatientKey | None = None
) -> Copy | Excluded | None:
    try:
        dataset = dcmread(BytesIO(raw))
    except (InvalidDicomError, ValueError, EOFError, OSError):
        return None
    if donor is not None and _key(dataset) != donor:
        return Excluded("not-the-donor", "the instance is not of the donor's PatientID")
    result = deidentify(dataset, project.key, project.profile)
    if isinstance(result, Excluded):
        return result
    out = BytesIO()
    result.dataset.save_as(out, enforce_file_format=True)
    copy = result.dataset
    return Copy(
        str(copy.get("StudyInstanceUID", "")),
        str(copy.get("SeriesInstanceUID", "")),
        str(copy.get("SOPInstanceUID", "")),
        result.patient_pseudonym,
        out.getvalue(),
    )


def deidentified_part10(raw: bytes, project: Project, donor: PatientKey) -> bytes | None:
    """One instance as stored -> its de-identified Part 10 bytes; None when it is left out
    (excluded by the profile, unreadable, or not the donor's). Blocking."""
    made = _deidentify_bytes(raw, project, donor)
    return made.data if isinstance(made, Copy) else None


async def copy_of(upstream: Upstream, project: Project, original: Original) -> Copy | Excluded:
    raw = await instances.part10(
        upstream, original.study_uid, original.series_uid, original.instance_uid
    )
    made = await anyio.to_thread.run_sync(_deidentify_bytes, raw, project)
    if made is None:
        return Excluded("unreadable", "the archive's copy could not be read as DICOM")
    return made


async def study_copies(
    upstream: Upstream, project: Project, study_uid: str, donor: PatientKey
) -> AsyncIterator[Copy | Excluded]:
    """Every instance of the donated study, de-identified (or why not), one at a time."""
    for original in await listed(upstream, study_uid, donor):
        yield await copy_of(upstream, project, original)


def _no_bulk(tag: Any, vr: Any, uri: Any) -> bytes:
    return b""


def _drop_urls(dataset: Dataset) -> None:
    """Remove URL attributes (VR UR) at any depth: a QIDO answer's Retrieve URL names the
    original UIDs and the source archive, and the engine keeps what the table does not list."""
    for element in list(dataset):
        if element.VR == "UR":
            del dataset[element.tag]
        elif element.VR == "SQ":
            for child in element.value:
                _drop_urls(child)


def deidentified_json(item: DicomJson, project: Project) -> DicomJson | None:
    """A DICOM JSON record (QIDO or metadata) through the engine: None when the instance
    is left out. Bulk data is not fetched: binary values are dropped from the answer, and
    so are URLs (Retrieve URL and the like)."""
    try:
        dataset = Dataset.from_json(item, bulk_data_uri_handler=_no_bulk)
    except (ValueError, TypeError, KeyError):
        return None
    _drop_urls(dataset)
    result = deidentify(dataset, project.key, project.profile)
    if not isinstance(result, Deidentified):
        return None
    answer: dict[str, Any] = result.dataset.to_json_dict(bulk_data_threshold=1 << 30)
    return {tag: value for tag, value in answer.items() if value.get("vr") not in BINARY_VRS}


async def in_thread(function: Callable[..., Any], *args: Any) -> Any:
    return await anyio.to_thread.run_sync(function, *args)
