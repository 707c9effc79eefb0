"""Patient search parameters, checked on the patient module the PACS holds on each study."""

from __future__ import annotations

import unicodedata
from datetime import UTC

from gateway.dates import dicom_moment
from gateway.dicomweb import dicomjson as dj
from gateway.dicomweb.dicomjson import DicomJson
from gateway.errors import BadRequest
from gateway.fhir import mapping, params, terminology
from gateway.fhir.params import SearchRequest
from gateway.records.patients import PatientQuery

SEARCH_PARAMETERS: dict[str, tuple[str, str]] = {
    "_id": ("token", "The patient's id on this server"),
    "identifier": ("token", "A patient identifier (MRN), value or system|value"),
    "name": ("string", "Start of any part of the name, case-insensitive"),
    "birthdate": ("date", "The patient's date of birth"),
    "gender": ("token", "male | female | other | unknown"),
}


def parse(request: SearchRequest) -> PatientQuery:
    """The search as a records query; ``accepts`` checks every criterion on a study's
    patient module."""
    id_groups = [frozenset(params.ids("_id", value)) for value in request.all("_id")]
    identifier_tokens = [params.tokens("identifier", v) for v in request.all("identifier")]
    patient_id = None
    for alternatives in identifier_tokens:
        if len(alternatives) == 1:
            patient_id = alternatives[0].code
    names = [v.strip() for v in request.all("name")]
    if any(not n or any(c in n for c in "*?\\") for n in names):
        raise BadRequest("Parameter 'name': give the start of a name, without wildcards.")
    # No PatientName key goes to the PACS: FHIR name search ignores accents and
    # case, which no QIDO key can express ("mul" must find "Müller"). The
    # candidates are capped, and the exact match is made here.
    birthdates = [params.date_filter("birthdate", v) for v in request.all("birthdate")]
    genders = [params.tokens("gender", v) for v in request.all("gender")]

    def accepts(study: DicomJson) -> bool:
        return (
            all(_identifier_matches(study, alts) for alts in identifier_tokens)
            and all(_name_matches(study, name) for name in names)
            and all(_gender_matches(study, alts) for alts in genders)
            and all(
                f.accepts(dicom_moment(dj.text(study, "PatientBirthDate"), None, None, None), UTC)
                for f in birthdates
            )
        )

    return PatientQuery(id_groups=tuple(id_groups), patient_id=patient_id, accepts=accepts)


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
