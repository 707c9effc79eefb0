"""Patients within a caller's access, from the patient module the PACS holds on each study.

A patient is an (issuer, PatientID) pair with an opaque FHIR id from the
patient index; the same MRN at two issuers is two patients. A patient is
visible when the caller may see one of their studies.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from gateway.dicomweb.dicomjson import STUDY_FIELDS, DicomJson
from gateway.dicomweb.upstream import Upstream
from gateway.errors import NotFound
from gateway.records.access import Access, PatientKey, patient_key
from gateway.records.jacket import Jackets
from gateway.store.patients import PatientIndex


def _anyone(study: DicomJson) -> bool:
    return True


@dataclass(frozen=True)
class PatientQuery:
    id_groups: tuple[frozenset[str], ...] = ()  # FHIR ids, one set per ``_id`` parameter
    patient_id: str | None = None  # a PatientID the PACS may filter on (checked by ``accepts``)
    # Decides on a study's patient module (the FHIR layer's exact criteria).
    accepts: Callable[[DicomJson], bool] = _anyone


class PatientRecords:
    def __init__(
        self, upstream: Upstream, index: PatientIndex, jackets: Jackets, max_candidates: int
    ) -> None:
        self.upstream = upstream
        self.index = index
        self.jackets = jackets
        self.max_candidates = max_candidates

    async def read(self, access: Access, fhir_id: str) -> DicomJson:
        """A study of the patient's the caller may see, for its patient module."""
        key = await self.index.key_for(fhir_id)
        if key is None or not access.visibility.permits_patient(key):
            raise NotFound(f"Patient/{fhir_id} is not known.")
        studies = await self._studies_of(access, fhir_id, key)
        if not studies:
            raise NotFound(f"Patient/{fhir_id} has no studies in the archive.")
        access.seen.patients.add(fhir_id)
        return studies[0]

    async def search(self, access: Access, query: PatientQuery) -> list[tuple[str, DicomJson]]:
        """(FHIR id, a study of theirs) for each patient the caller may see who matches."""
        keys: set[PatientKey] | None = None
        for group in query.id_groups:
            found = set((await self.index.keys_for(sorted(group))).values())
            keys = found if keys is None else keys & found
        filters: dict[str, str] = {}
        if query.patient_id:
            filters["PatientID"] = query.patient_id
        if keys is not None:
            if not keys:
                return []
            if len(keys) == 1:
                filters["PatientID"] = next(iter(keys))[1]
        studies = [
            study
            for narrowed in access.visibility.narrow(filters)
            for study in await self.upstream.search_studies(
                narrowed, STUDY_FIELDS, limit=self.max_candidates
            )
        ]
        by_patient: dict[PatientKey, DicomJson] = {}
        for study in studies:
            key = patient_key(study)
            if (
                key
                and key not in by_patient
                and access.visibility.permits(study)
                and (keys is None or key in keys)
                and query.accepts(study)
            ):
                by_patient[key] = study
        ids = await self.index.ids_for(list(by_patient))
        access.seen.patients.update(ids.values())
        return sorted(((ids[key], study) for key, study in by_patient.items()), key=lambda p: p[0])

    async def key_of(self, fhir_id: str) -> PatientKey | None:
        """Which (issuer, PatientID) a FHIR id names; None when it names nobody here."""
        return await self.index.key_for(fhir_id)

    async def identify(self, issuer: str, patient_id: str) -> str:
        """The FHIR id of (issuer, PatientID), given one now if the patient is new here."""
        key = (issuer, patient_id)
        return (await self.index.ids_for([key]))[key]

    async def _studies_of(self, access: Access, fhir_id: str, key: PatientKey) -> list[DicomJson]:
        if access.patients is not None and access.patients == frozenset({fhir_id}):
            jacket = await self.jackets.of(fhir_id)
            found = [s.source for s in jacket.studies]
        else:
            found = [
                study
                for narrowed in access.visibility.narrow({"PatientID": key[1]})
                for study in await self.upstream.search_studies(narrowed, STUDY_FIELDS)
            ]
        return [s for s in found if patient_key(s) == key and access.visibility.permits(s)]
