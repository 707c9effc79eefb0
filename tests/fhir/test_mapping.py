"""DICOM JSON -> FHIR mapping: pure functions, tested without a server."""

from __future__ import annotations

from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from fhir.resources.R4B.endpoint import Endpoint
from fhir.resources.R4B.imagingstudy import ImagingStudy
from fhir.resources.R4B.patient import Patient
from pydicom import dcmread

from gateway.dicomweb import dicomjson as dj
from gateway.dicomweb.dicomjson import element, tag
from gateway.dicomweb.file_store import aggregate, header_json
from gateway.fhir import mapping
from gateway.fhir.mapping import MappingContext

CONTEXT = MappingContext(dicomweb_url="https://gw.example.org/dicomweb")
CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"


def study_json(**attributes: tuple[str, object]) -> dict:
    base = {
        "StudyInstanceUID": ("UI", "1.2.3.4"),
        "PatientID": ("LO", "MRN1"),
        "PatientName": ("PN", {"Alphabetic": "Doe^Jane^Q^Dr^III"}),
        "StudyDate": ("DA", "20240102"),
    }
    base.update(attributes)
    return {tag(name): element(vr, value) for name, (vr, value) in base.items()}


def series_json(**attributes: tuple[str, object]) -> dict:
    base = {
        "StudyInstanceUID": ("UI", "1.2.3.4"),
        "SeriesInstanceUID": ("UI", "1.2.3.4.1"),
        "Modality": ("CS", "CT"),
        "SeriesNumber": ("IS", "2"),
    }
    base.update(attributes)
    return {tag(name): element(vr, value) for name, (vr, value) in base.items()}


def instance_json(number: int, **attributes: tuple[str, object]) -> dict:
    base = {
        "StudyInstanceUID": ("UI", "1.2.3.4"),
        "SeriesInstanceUID": ("UI", "1.2.3.4.1"),
        "SOPInstanceUID": ("UI", f"1.2.3.4.1.{number}"),
        "SOPClassUID": ("UI", CT_IMAGE),
        "InstanceNumber": ("IS", str(number)),
    }
    base.update(attributes)
    return {tag(name): element(vr, value) for name, (vr, value) in base.items()}


def mapped(study: dict, series=None, instances=None, context=CONTEXT) -> dict:
    resource = mapping.imaging_study(
        study, series or [], instances or [], patient_id="p1", context=context
    )
    ImagingStudy.model_validate(resource)
    return resource


def test_identifiers_status_subject_and_endpoint() -> None:
    resource = mapped(
        study_json(
            AccessionNumber=("SH", "ACC-9"),
            IssuerOfAccessionNumberSequence=(
                "SQ",
                {
                    tag("UniversalEntityID"): element("UT", "1.2.3.99"),
                    tag("UniversalEntityIDType"): element("CS", "ISO"),
                },
            ),
        )
    )
    assert resource["identifier"][0] == {"system": "urn:dicom:uid", "value": "urn:oid:1.2.3.4"}
    accession = resource["identifier"][1]
    assert accession["type"]["coding"][0]["code"] == "ACSN"
    assert accession["value"] == "ACC-9" and accession["system"] == "urn:oid:1.2.3.99"
    assert resource["status"] == "available"
    assert resource["subject"] == {"reference": "Patient/p1", "display": "Dr Jane Q Doe III"}
    # The contained WADO-RS Endpoint first (SMART Imaging Access clients read it), then
    # the shared one (for _include); both the same service, token-protected.
    assert resource["endpoint"] == [{"reference": "#wado-rs"}, {"reference": "Endpoint/dicomweb"}]
    (contained,) = resource["contained"]
    assert contained["id"] == "wado-rs" and contained["resourceType"] == "Endpoint"
    assert contained["extension"] == [
        {
            "url": "http://fhir.org/argonaut/smart-imaging/StructureDefinition/requires-access-token",
            "valueBoolean": True,
        }
    ]


@pytest.mark.parametrize(
    ("time", "offset", "zone", "expected"),
    [
        ("101500", "+0100", None, "2024-01-02T10:15:00+01:00"),
        ("101500", "-0500", None, "2024-01-02T10:15:00-05:00"),
        ("101500.5", "+0000", None, "2024-01-02T10:15:00.500000Z"),
        ("101500", None, None, "2024-01-02"),  # never stamp local time as UTC
        ("101500", None, "Europe/Paris", "2024-01-02T10:15:00+01:00"),
        (None, "+0200", None, "2024-01-02"),
        ("1015", "+0100", None, "2024-01-02T10:15:00+01:00"),
    ],
)
def test_started(time, offset, zone, expected) -> None:
    attributes = {}
    if time:
        attributes["StudyTime"] = ("TM", time)
    if offset:
        attributes["TimezoneOffsetFromUTC"] = ("SH", offset)
    context = MappingContext(CONTEXT.dicomweb_url, ZoneInfo(zone) if zone else None)
    assert mapped(study_json(**attributes), context=context)["started"] == expected


def test_study_level_fields() -> None:
    resource = mapped(
        study_json(
            StudyDescription=("LO", "CT CHEST W/O"),
            ReferringPhysicianName=("PN", {"Alphabetic": "House^Gregory"}),
            ModalitiesInStudy=("CS", "CT"),
            NumberOfStudyRelatedSeries=("IS", "3"),
            NumberOfStudyRelatedInstances=("IS", "42"),
            ProcedureCodeSequence=(
                "SQ",
                {
                    tag("CodeValue"): element("SH", "24627-2"),
                    tag("CodingSchemeDesignator"): element("SH", "LN"),
                    tag("CodeMeaning"): element("LO", "CT Chest"),
                },
            ),
            ReasonForPerformedProcedureCodeSequence=(
                "SQ",
                {
                    tag("CodeValue"): element("SH", "X1"),
                    tag("CodingSchemeDesignator"): element("SH", "99LOCAL"),
                },
            ),
        )
    )
    resource_interpreters = mapped(
        study_json(NameOfPhysiciansReadingStudy=("PN", {"Alphabetic": "Wilson^James"}))
    )["interpreter"]
    assert resource["description"] == "CT CHEST W/O" and "note" not in resource
    assert resource["referrer"] == {"display": "Gregory House"}
    assert resource_interpreters == [{"display": "James Wilson"}]
    assert resource["modality"] == [
        {"system": "http://dicom.nema.org/resources/ontology/DCM", "code": "CT"}
    ]
    assert (resource["numberOfSeries"], resource["numberOfInstances"]) == (3, 42)
    assert resource["procedureCode"][0]["coding"][0] == {
        "system": "http://loinc.org",
        "code": "24627-2",
        "display": "CT Chest",
    }
    # A code from an unknown scheme is kept as text, never posing as a coding.
    assert resource["reasonCode"] == [{"text": "X1 (99LOCAL)"}]


def test_series_and_instances() -> None:
    series = series_json(
        SeriesDescription=("LO", "Axial 5mm"),
        BodyPartExamined=("CS", "KNEE"),
        Laterality=("CS", "R"),
        SeriesDate=("DA", "20240102"),
        SeriesTime=("TM", "101700"),
        TimezoneOffsetFromUTC=("SH", "+0100"),
        PerformingPhysicianName=("PN", {"Alphabetic": "Tech^Terry"}),
    )
    instances = [instance_json(2), instance_json(1, ContentLabel=("CS", "LABEL"))]
    resource = mapped(study_json(), [series], instances)
    mapped_series = resource["series"][0]
    assert mapped_series["uid"] == "1.2.3.4.1" and mapped_series["number"] == 2
    assert mapped_series["description"] == "Axial 5mm" and "title" not in mapped_series
    assert mapped_series["bodySite"] == {
        "system": "http://snomed.info/sct",
        "code": "72696002",
        "display": "Knee",
    }
    assert mapped_series["laterality"]["code"] == "24028007"
    assert mapped_series["started"] == "2024-01-02T10:17:00+01:00"
    assert mapped_series["performer"] == [{"actor": {"display": "Terry Tech"}}]
    assert [i["number"] for i in mapped_series["instance"]] == [1, 2]
    assert mapped_series["instance"][0]["sopClass"] == {
        "system": "urn:ietf:rfc:3986",
        "code": f"urn:oid:{CT_IMAGE}",
    }
    assert mapped_series["instance"][0]["title"] == "LABEL"
    # Counts fall back to counting when the PACS gives none.
    assert resource["numberOfSeries"] == 1 and resource["numberOfInstances"] == 2


def test_unmapped_body_part_is_text_only_and_image_laterality_is_used() -> None:
    series = series_json(BodyPartExamined=("CS", "LEFTTHUMBNAIL"), Modality=("CS", "MG"))
    instances = [
        instance_json(1, ImageLaterality=("CS", "L")),
        instance_json(2, ImageLaterality=("CS", "L")),
    ]
    mapped_series = mapped(study_json(), [series], instances)["series"][0]
    assert mapped_series["bodySite"] == {"display": "LEFTTHUMBNAIL"}
    assert mapped_series["laterality"]["code"] == "7771000"


def test_patient_from_patient_module() -> None:
    study = study_json(
        PatientName=("PN", {"Alphabetic": "Yamada^Tarou", "Ideographic": "山田^太郎"}),
        PatientSex=("CS", "F"),
        PatientBirthDate=("DA", "19800229"),
        IssuerOfPatientID=("LO", "HOSP-A"),
    )
    resource = mapping.patient(study, "abc")
    Patient.model_validate(resource)
    assert resource["gender"] == "female" and resource["birthDate"] == "1980-02-29"
    assert resource["identifier"][0]["value"] == "MRN1"
    assert resource["identifier"][0]["assigner"] == {"display": "HOSP-A"}
    assert [n["family"] for n in resource["name"]] == ["Yamada", "山田"]
    assert "extension" in resource["name"][1]
    unknown = mapping.patient(study_json(PatientSex=("CS", "X")), "x")
    assert unknown["gender"] == "unknown"


def test_endpoint() -> None:
    resource = mapping.endpoint(CONTEXT)
    Endpoint.model_validate(resource)
    assert resource["address"] == "https://gw.example.org/dicomweb"


def test_every_fixture_study_maps_to_valid_r4(fixture_files: list[Path]) -> None:
    headers = [header_json(dcmread(p, stop_before_pixels=True)) for p in fixture_files]
    studies = aggregate(headers, "study")
    series = aggregate(headers, "series")
    assert len(studies) >= 25
    charsets_seen = set()
    for study in studies:
        uid = dj.text(study, "StudyInstanceUID")
        own_series = [s for s in series if dj.text(s, "StudyInstanceUID") == uid]
        own_instances = [i for i in headers if dj.text(i, "StudyInstanceUID") == uid]
        resource = mapped(study, own_series, own_instances)
        assert resource["numberOfInstances"] == len(own_instances)
        assert len(resource["series"]) == len(own_series)
        Patient.model_validate(mapping.patient(study, "p1"))
        charsets_seen.update(dj.texts(study, "SpecificCharacterSet"))
    assert {"ISO_IR 100", "ISO_IR 192"} <= charsets_seen
