"""What a project's research backend client sees: de-identified copies, on the fly.

The client names studies, series and instances by their new UIDs; the gateway
finds the original among the project's donated studies (by computing each one's
new UID with the project's key) and answers only through the engine: QIDO
records and metadata are de-identified as DICOM JSON (bulk data left out),
instances as Part 10 copies. A UID that is not the new UID of a donated study of
this project (another project's, a study not donated, an original UID) is not
found.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from gateway.dicomweb import dicomjson as dj
from gateway.dicomweb import instances
from gateway.dicomweb.dicomjson import DicomJson
from gateway.dicomweb.upstream import Upstream
from gateway.donation import copies
from gateway.donation.delivery import Donated
from gateway.donation.projects import Project
from gateway.errors import NotFound
from gateway.research.deid import Excluded

STUDY_FIELDS = (
    "StudyInstanceUID",
    "StudyDate",
    "StudyTime",
    "StudyDescription",
    "AccessionNumber",
    "StudyID",
    "PatientID",
    "IssuerOfPatientID",
    "PatientName",
    "PatientSex",
    "PatientAge",
    "ModalitiesInStudy",
    "NumberOfStudyRelatedSeries",
    "NumberOfStudyRelatedInstances",
    "ReferringPhysicianName",
)
CHUNK = 50


@dataclass(frozen=True)
class Found:
    donated: Donated
    record: DicomJson  # de-identified study-level record


class Pull:
    def __init__(self, upstream: Upstream) -> None:
        self.upstream = upstream

    async def studies(self, project: Project, donated: Sequence[Donated]) -> list[Found]:
        """Every donated study's de-identified study-level record (one QIDO per 50)."""
        by_uid = {d.study_uid: d for d in donated}
        found: list[Found] = []
        uids = sorted(by_uid)
        for start in range(0, len(uids), CHUNK):
            chunk = uids[start : start + CHUNK]
            records = await self.upstream.search_studies(
                {"StudyInstanceUID": ",".join(chunk)}, STUDY_FIELDS
            )
            for record in records:
                original = by_uid.get(dj.text(record, "StudyInstanceUID") or "")
                if original is None or dj.patient_key(record) != original.key:
                    continue
                made = await copies.in_thread(copies.deidentified_json, record, project)
                if made is not None:
                    found.append(Found(original, made))
        found.sort(key=lambda f: dj.text(f.record, "StudyInstanceUID") or "")
        return found

    def original(self, project: Project, donated: Sequence[Donated], new_uid: str) -> Donated:
        for study in donated:
            if project.new_uid(study.study_uid) == new_uid:
                return study
        raise NotFound("No such study among this project's donated studies.")

    async def metadata(self, project: Project, study: Donated) -> list[DicomJson]:
        """The study's instances as de-identified DICOM JSON (those the profile keeps)."""
        items = await instances.metadata(self.upstream, f"studies/{study.study_uid}")
        answer = []
        for item in items:
            if dj.patient_key(item) != study.key:
                continue
            made = await copies.in_thread(copies.deidentified_json, item, project)
            if made is not None:
                answer.append(made)
        return answer

    async def instance(
        self, project: Project, study: Donated, series_uid: str, instance_uid: str
    ) -> bytes:
        """One de-identified instance, named by its new series and instance UIDs."""
        for original in await copies.listed(self.upstream, study.study_uid, study.key):
            if (
                project.new_uid(original.series_uid) == series_uid
                and project.new_uid(original.instance_uid) == instance_uid
            ):
                made = await copies.copy_of(self.upstream, project, original)
                if isinstance(made, Excluded):
                    break
                return made.data
        raise NotFound("No such instance in this donated study.")
