"""Patient read and search, from the patient module the PACS holds on each study."""

from __future__ import annotations

import unicodedata
from collections.abc import Iterable
from datetime import UTC

from gateway.access import EVERYTHING, Visibility
from gateway.dicomweb import dicomjson as dj
from gateway.dicomweb.dicomjson import STUDY_FIELDS, DicomJson
from gateway.dicomweb.upstream import Upstream
from gateway.errors import BadRequest, NotFound
from gateway.fhir import mapping, params, terminology
from gateway.fhir.dates import dicom_moment
from gateway.fhir.mapping import Resource
from gateway.fhir.params import SearchRequest
from gateway.store.patients import PatientIndex, PatientKey

SEARCH_PARAMETERS: dict[str, tuple[str, str]] = {
    "_id": ("token", "The patient's id on this server"),
    "identifier": ("token", "A patient identifier (MRN), value or system|value"),
    "name": ("string", "Start of any part of the name, case-insensitive"),
    "birthdate": ("date", "The patient's date of birth"),
    "gender": ("token", "male | female | other | unknown"),
}


class PatientService:
    def __init__(
        self, upstream: Upstream, patients: PatientIndex, max_candidates: int = 5000
    ) -> None:
        self.upstream = upstream
        self.patients = patients
        self.max_candidates = max_candidates

    async def read(self, fhir_id: str, visibility: Visibility = EVERYTHING) -> Resource:
        key = await self.patients.key_for(fhir_id)
        if key is None or not visibility.permits_patient(key):
            raise NotFound(f"Patient/{fhir_id} is not known.")
        studies = [s for s in await self._studies_of(key) if visibility.permits(s)]
        if not studies:
            raise NotFound(f"Patient/{fhir_id} has no studies in the archive.")
        return mapping.patient(studies[0], fhir_id)

    async def search(
        self, request: SearchRequest, visibility: Visibility = EVERYTHING
    ) -> list[Resource]:
        filters: dict[str, str] = {}
        keys: set[PatientKey] | None = None
        for value in request.all("_id"):
            found = set((await self.patients.keys_for(params.ids("_id", value))).values())
            keys = found if keys is None else keys & found
        identifier_tokens = [params.tokens("identifier", v) for v in request.all("identifier")]
        for alternatives in identifier_tokens:
            if len(alternatives) == 1:
                filters["PatientID"] = alternatives[0].code
        names = [v.strip() for v in request.all("name")]
        if any(not n or any(c in n for c in "*?\\") for n in names):
            raise BadRequest("Parameter 'name': give the start of a name, without wildcards.")
        # No PatientName key goes to the PACS: FHIR name search ignores accents and
        # case, which no QIDO key can express ("mul" must find "Müller"). The
        # candidates are capped, and the exact match is made below.
        birthdates = [params.date_filter("birthdate", v) for v in request.all("birthdate")]
        genders = [params.tokens("gender", v) for v in request.all("gender")]
        if keys is not None:
            if not keys:
                return []
            if len(keys) == 1:
                filters["PatientID"] = next(iter(keys))[1]
        studies = await self.upstream.search_studies(
            filters, STUDY_FIELDS, limit=self.max_candidates
        )
        by_patient: dict[PatientKey, DicomJson] = {}
        for study in (s for s in studies if visibility.permits(s)):
            key = mapping.patient_key(study)
            if key and key not in by_patient:
                by_patient[key] = study
        kept = {
            key: study
            for key, study in by_patient.items()
            if (keys is None or key in keys)
            and all(_identifier_matches(study, alts) for alts in identifier_tokens)
            and all(_name_matches(study, name) for name in names)
            and all(_gender_matches(study, alts) for alts in genders)
            and all(
                f.accepts(dicom_moment(dj.text(study, "PatientBirthDate"), None, None, None), UTC)
                for f in birthdates
            )
        }
        ids = await self.patients.ids_for(kept)
        resources = [mapping.patient(study, ids[key]) for key, study in kept.items()]
        return sorted(resources, key=lambda r: r["id"])

    async def _studies_of(self, key: PatientKey) -> list[DicomJson]:
        issuer, patient_id = key
        studies = await self.upstream.search_studies({"PatientID": patient_id}, STUDY_FIELDS)
        return [s for s in studies if mapping.patient_key(s) == (issuer, patient_id)]

    async def patients_of(self, studies: Iterable[DicomJson]) -> list[Resource]:
        """Patient resources for the subjects of these studies (for ``_include``)."""
        first: dict[PatientKey, DicomJson] = {}
        for study in studies:
            key = mapping.patient_key(study)
            if key and key not in first:
                first[key] = study
        ids = await self.patients.ids_for(first)
        return [mapping.patient(study, ids[key]) for key, study in first.items()]


def _identifier_matches(study: DicomJson, alternatives: list[params.Token]) -> bool:
    resource_identifier = mapping.patient(study, "x").get("identifier", [{}])[0]
    for token in alternatives:
        if resource_identifier.get("value") != token.code:
            continue
        if token.system is None or (token.system or None) == resource_identifier.get("system"):
            return True
    return False


def fold(text: str) -> str:
    """Case- and accent-insensitive form, as FHIR string search compares."""
    decomposed = unicodedata.normalize("NFKD", text)
    return "".join(c for c in decomposed if not unicodedata.combining(c)).casefold()


def _name_matches(study: DicomJson, name: str) -> bool:
    wanted = fold(name)
    for value in dj.values(study, "PatientName"):
        for caret_name in dj.person_name_groups(value).values():
            words = [w for part in caret_name.split("^") for w in part.split(" ") if w]
            joined = dj.display_name(caret_name)
            if any(fold(w).startswith(wanted) for w in [*words, joined, caret_name]):
                return True
    return False


def _gender_matches(study: DicomJson, alternatives: list[params.Token]) -> bool:
    sex = (dj.text(study, "PatientSex") or "").upper()
    gender = terminology.GENDERS.get(sex, "unknown")
    return any(t.code == gender for t in alternatives)
