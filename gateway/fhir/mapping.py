"""DICOM JSON -> FHIR R4 resources, as pure functions (no I/O, no settings object).

Follows the R4 ImagingStudy DICOM mapping (build.fhir.org ImagingStudy
"Mappings" tab). Resources are plain dicts ready for orjson; the tests
validate every one against the fhir.resources R4B models.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

from gateway.dates import fhir_datetime, parse_dicom_date
from gateway.dicomweb import dicomjson as dj
from gateway.dicomweb.dicomjson import DicomJson
from gateway.fhir import terminology as terms

Resource = dict[str, Any]
ENDPOINT_ID = "dicomweb"
# The id of the WADO-RS Endpoint each ImagingStudy carries contained.
CONTAINED_ENDPOINT_ID = "wado-rs"
# SMART Imaging Access 0.1 (http://fhir.org/argonaut/smart-imaging)
SMART_IMAGING = "http://fhir.org/argonaut/smart-imaging"
STUDY_PROFILE = f"{SMART_IMAGING}/StructureDefinition/smart-imaging-study"
ENDPOINT_PROFILE = f"{SMART_IMAGING}/StructureDefinition/smart-wado-endpoint"
REQUIRES_ACCESS_TOKEN = f"{SMART_IMAGING}/StructureDefinition/requires-access-token"
SERVER_REQUIREMENTS = f"{SMART_IMAGING}/CapabilityStatement/smart-imaging-server"


@dataclass(frozen=True)
class MappingContext:
    """What the mapping needs from outside the DICOM data."""

    dicomweb_url: str
    local_zone: ZoneInfo | None = None


def imaging_study(
    study: DicomJson,
    series: Sequence[DicomJson],
    instances: Sequence[DicomJson],
    *,
    patient_id: str | None,
    context: MappingContext,
) -> Resource:
    """One ImagingStudy from a study-level QIDO result and its series and instances."""
    uid = dj.text(study, "StudyInstanceUID")
    if not uid:
        raise ValueError("a study without StudyInstanceUID cannot be mapped")
    instances_by_series: dict[str, list[DicomJson]] = {}
    for instance in instances:
        series_uid = dj.text(instance, "SeriesInstanceUID")
        if series_uid:
            instances_by_series.setdefault(series_uid, []).append(instance)
    ordered_series = sorted(series, key=_series_order)
    resource: Resource = {
        "resourceType": "ImagingStudy",
        "id": uid,
        "meta": {"profile": [STUDY_PROFILE]},
        # The reference stack's clients read only a contained Endpoint; others follow
        # the shared one (``_include=ImagingStudy:endpoint``). Both name the same service.
        "contained": [
            {**endpoint(context), "id": CONTAINED_ENDPOINT_ID},
        ],
        "identifier": _study_identifiers(study, uid),
        "status": "available",
    }
    modalities = _modalities(study, ordered_series)
    if modalities:
        resource["modality"] = [{"system": terms.DCM, "code": code} for code in modalities]
    subject: Resource = {"reference": f"Patient/{patient_id}"} if patient_id else {}
    name = dj.text(study, "PatientName")
    if name:
        subject["display"] = dj.display_name(name)
    if not subject:
        subject = {"display": "Unknown patient"}
    resource["subject"] = subject
    started = fhir_datetime(
        dj.text(study, "StudyDate"),
        dj.text(study, "StudyTime"),
        dj.text(study, "TimezoneOffsetFromUTC"),
        context.local_zone,
    )
    if started:
        resource["started"] = started
    referrer = dj.text(study, "ReferringPhysicianName")
    if referrer:
        resource["referrer"] = {"display": dj.display_name(referrer)}
    interpreters = dj.texts(study, "NameOfPhysiciansReadingStudy")
    if interpreters:
        resource["interpreter"] = [{"display": dj.display_name(n)} for n in interpreters]
    resource["endpoint"] = [
        {"reference": f"#{CONTAINED_ENDPOINT_ID}"},
        {"reference": f"Endpoint/{ENDPOINT_ID}"},
    ]
    number_of_series = dj.integer(study, "NumberOfStudyRelatedSeries")
    number_of_instances = dj.integer(study, "NumberOfStudyRelatedInstances")
    if number_of_series is None and series:
        number_of_series = len(series)
    if number_of_instances is None and (instances or series):
        number_of_instances = len(instances) or sum(
            dj.integer(s, "NumberOfSeriesRelatedInstances") or 0 for s in series
        )
    if number_of_series is not None:
        resource["numberOfSeries"] = number_of_series
    if number_of_instances is not None:
        resource["numberOfInstances"] = number_of_instances
    procedures = [concept(item) for item in dj.items(study, "ProcedureCodeSequence")]
    if any(procedures):
        resource["procedureCode"] = [p for p in procedures if p]
    reasons = [concept(item) for item in dj.items(study, "ReasonForPerformedProcedureCodeSequence")]
    if any(reasons):
        resource["reasonCode"] = [r for r in reasons if r]
    description = dj.text(study, "StudyDescription")
    if description:
        resource["description"] = description
    mapped_series = [
        _series(s, instances_by_series.get(dj.text(s, "SeriesInstanceUID") or "", []), context)
        for s in ordered_series
    ]
    mapped_series = [s for s in mapped_series if s]
    if mapped_series:
        resource["series"] = mapped_series
    return resource


def patient(study: DicomJson, fhir_id: str) -> Resource:
    """A Patient from the patient module carried on study-level results."""
    resource: Resource = {"resourceType": "Patient", "id": fhir_id}
    patient_id = dj.text(study, "PatientID")
    if patient_id:
        resource["identifier"] = [_patient_identifier(study, patient_id)]
    names = [_human_name(value) for value in dj.values(study, "PatientName")]
    names = [name for name in names if name]
    if names:
        resource["name"] = [part for name in names for part in name]
    sex = (dj.text(study, "PatientSex") or "").upper()
    resource["gender"] = terms.GENDERS.get(sex, "unknown")
    birth_date = parse_dicom_date(dj.text(study, "PatientBirthDate"))
    if birth_date:
        resource["birthDate"] = birth_date.isoformat()
    return resource


def instant(at: datetime) -> str:
    """A FHIR instant in UTC, to the millisecond (meta.lastUpdated)."""
    return at.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def endpoint(
    context: MappingContext, *, address: str | None = None, requires_access_token: bool = True
) -> Resource:
    """The gateway's own DICOMweb service, where ImagingStudy.endpoint points (a
    SMART WADO-RS Endpoint: the app appends ``/studies/{uid}`` to ``address``).

    ``requires_access_token`` False: ``address`` is a bearer capability URL, which the
    app follows without its token."""
    return {
        "resourceType": "Endpoint",
        "id": ENDPOINT_ID,
        "meta": {"profile": [ENDPOINT_PROFILE]},
        "extension": [{"url": REQUIRES_ACCESS_TOKEN, "valueBoolean": requires_access_token}],
        "status": "active",
        "connectionType": {
            "system": terms.ENDPOINT_CONNECTION_TYPE,
            "code": "dicom-wado-rs",
            "display": "DICOM WADO-RS",
        },
        "name": "DICOMweb (QIDO-RS, WADO-RS, STOW-RS)",
        "payloadType": [
            {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/endpoint-payload-type",
                        "code": "any",
                        "display": "Any",
                    }
                ],
                "text": "DICOM",
            }
        ],
        "payloadMimeType": ["application/dicom", "application/dicom+json"],
        "address": address or context.dicomweb_url,
    }


# -- pieces ------------------------------------------------------------------


def _series(series: DicomJson, instances: Sequence[DicomJson], context: MappingContext) -> Resource:
    uid = dj.text(series, "SeriesInstanceUID")
    modality = dj.text(series, "Modality")
    if not uid or not modality:
        return {}
    mapped: Resource = {"uid": uid}
    number = dj.integer(series, "SeriesNumber")
    if number is not None and number >= 0:
        mapped["number"] = number
    mapped["modality"] = {"system": terms.DCM, "code": modality}
    description = dj.text(series, "SeriesDescription")
    if description:
        mapped["description"] = description
    count = dj.integer(series, "NumberOfSeriesRelatedInstances")
    if count is None and instances:
        count = len(instances)
    if count is not None:
        mapped["numberOfInstances"] = count
    mapped["endpoint"] = [{"reference": f"Endpoint/{ENDPOINT_ID}"}]
    body_part = dj.text(series, "BodyPartExamined")
    if body_part:
        mapped["bodySite"] = _body_site(body_part)
    laterality = (dj.text(series, "Laterality") or "").upper()
    if not laterality and instances:
        image_lateralities = {(dj.text(i, "ImageLaterality") or "").upper() for i in instances}
        image_lateralities.discard("U")
        image_lateralities.discard("")
        if len(image_lateralities) == 1:
            laterality = image_lateralities.pop()
        elif image_lateralities == {"L", "R"}:
            laterality = "B"
    if laterality in terms.LATERALITY:
        code, display = terms.LATERALITY[laterality]
        mapped["laterality"] = {"system": terms.SNOMED, "code": code, "display": display}
    started = fhir_datetime(
        dj.text(series, "SeriesDate"),
        dj.text(series, "SeriesTime"),
        dj.text(series, "TimezoneOffsetFromUTC"),
        context.local_zone,
    )
    if started:
        mapped["started"] = started
    performers = dj.texts(series, "PerformingPhysicianName")
    if performers:
        mapped["performer"] = [{"actor": {"display": dj.display_name(p)}} for p in performers]
    mapped_instances = [_instance(i) for i in sorted(instances, key=_instance_order)]
    mapped_instances = [i for i in mapped_instances if i]
    if mapped_instances:
        mapped["instance"] = mapped_instances
    return mapped


def _instance(instance: DicomJson) -> Resource:
    uid = dj.text(instance, "SOPInstanceUID")
    sop_class = dj.text(instance, "SOPClassUID")
    if not uid or not sop_class:
        return {}
    mapped: Resource = {
        "uid": uid,
        "sopClass": {"system": terms.RFC3986, "code": f"urn:oid:{sop_class}"},
    }
    number = dj.integer(instance, "InstanceNumber")
    if number is not None and number >= 0:
        mapped["number"] = number
    concept_names = [
        str(item_meaning)
        for item in dj.items(instance, "ConceptNameCodeSequence")
        if (item_meaning := dj.text(item, "CodeMeaning"))
    ]
    title = (
        dj.text(instance, "DocumentTitle")
        or (concept_names[0] if concept_names else None)
        or dj.text(instance, "ContentLabel")
    )
    if title:
        mapped["title"] = title
    return mapped


def _study_identifiers(study: DicomJson, uid: str) -> list[Resource]:
    identifiers: list[Resource] = [{"system": terms.DICOM_UID, "value": f"urn:oid:{uid}"}]
    accession = dj.text(study, "AccessionNumber")
    if accession:
        identifier: Resource = {
            "type": {"coding": [{"system": terms.V2_0203, "code": "ACSN"}]},
            "value": accession,
        }
        issuers = dj.items(study, "IssuerOfAccessionNumberSequence")
        if issuers:
            system, assigner = issuer(issuers[0])
            if system:
                identifier["system"] = system
            if assigner:
                identifier["assigner"] = {"display": assigner}
        identifiers.append(identifier)
    study_id = dj.text(study, "StudyID")
    if study_id:
        identifiers.append({"use": "secondary", "value": study_id})
    return identifiers


def issuer(item: Mapping[str, Any]) -> tuple[str | None, str | None]:
    """(system, assigner display) from an HL7v2 HD-style issuer item (PS3.3 10.14)."""
    universal = dj.text(item, "UniversalEntityID")
    kind = (dj.text(item, "UniversalEntityIDType") or "").upper()
    local = dj.text(item, "LocalNamespaceEntityID")
    system = None
    if universal and kind == "ISO":
        system = f"urn:oid:{universal}"
    elif universal and kind in ("URI", "URL"):
        system = universal
    return system, local or (universal if system is None else None)


def _patient_identifier(study: DicomJson, patient_id: str) -> Resource:
    identifier: Resource = {
        "use": "usual",
        "type": {"coding": [{"system": terms.V2_0203, "code": "MR"}]},
        "value": patient_id,
    }
    qualifiers = dj.items(study, "IssuerOfPatientIDQualifiersSequence")
    system, assigner = issuer(qualifiers[0]) if qualifiers else (None, None)
    issuer_of_patient_id = dj.text(study, "IssuerOfPatientID")
    if system:
        identifier["system"] = system
    if issuer_of_patient_id or assigner:
        identifier["assigner"] = {"display": issuer_of_patient_id or assigner}
    return identifier


def _human_name(value: Any) -> list[Resource]:
    """One HumanName per PN component group (alphabetic, ideographic, phonetic)."""
    names = []
    for group, caret_name in dj.person_name_groups(value).items():
        parts = (caret_name.split("^") + [""] * 5)[:5]
        family, given, middle, prefix, suffix = (part.strip() for part in parts)
        name: Resource = {"use": "official"}
        if group != "Alphabetic":
            name["extension"] = [
                {
                    "url": "http://hl7.org/fhir/StructureDefinition/iso21090-EN-representation",
                    "valueCode": "IDE" if group == "Ideographic" else "SYL",
                }
            ]
        text = dj.display_name(caret_name)
        if text:
            name["text"] = text
        if family:
            name["family"] = family
        given_names = [g for g in (given, *middle.split(" ")) if g]
        if given_names:
            name["given"] = given_names
        if prefix:
            name["prefix"] = [prefix]
        if suffix:
            name["suffix"] = [suffix]
        if len(name) > 1:
            names.append(name)
    return names


def concept(item: Mapping[str, Any]) -> Resource:
    code = dj.text(item, "CodeValue") or dj.text(item, "LongCodeValue")
    code = code or dj.text(item, "URNCodeValue")
    scheme = (dj.text(item, "CodingSchemeDesignator") or "").upper()
    meaning = dj.text(item, "CodeMeaning")
    system = terms.CODING_SCHEMES.get(scheme)
    concept: Resource = {}
    if code and system:
        coding: Resource = {"system": system, "code": code}
        if meaning:
            coding["display"] = meaning
        version = dj.text(item, "CodingSchemeVersion")
        if version:
            coding["version"] = version
        concept["coding"] = [coding]
    if meaning:
        concept["text"] = meaning
    elif code and not system:
        # A local code with no known system is still information; never pose it as coded.
        concept["text"] = f"{code} ({scheme})" if scheme else code
    return concept


def _body_site(body_part: str) -> Resource:
    known = terms.BODY_PARTS.get(body_part.upper().replace(" ", ""))
    if known:
        return {"system": terms.SNOMED, "code": known[0], "display": known[1]}
    return {"display": body_part}


def _modalities(study: DicomJson, series: Iterable[DicomJson]) -> list[str]:
    codes = dj.texts(study, "ModalitiesInStudy")
    if not codes:
        codes = [m for m in (dj.text(s, "Modality") for s in series) if m]
    return list(dict.fromkeys(code.upper() for code in codes))


def _series_order(series: DicomJson) -> tuple[int, str]:
    number = dj.integer(series, "SeriesNumber")
    return (number if number is not None else 1 << 30, dj.text(series, "SeriesInstanceUID") or "")


def _instance_order(instance: DicomJson) -> tuple[int, str]:
    number = dj.integer(instance, "InstanceNumber")
    return (number if number is not None else 1 << 30, dj.text(instance, "SOPInstanceUID") or "")
