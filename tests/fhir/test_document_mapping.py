"""The pure DICOM -> DocumentReference mapping and the SR renderers, on hand-built DICOM JSON."""

from __future__ import annotations

from typing import Any

import pytest
from fhir.resources.R4B.documentreference import DocumentReference

from gateway.dicomweb import reports
from gateway.dicomweb.dicomjson import element, tag
from gateway.dicomweb.reports import doc_status
from gateway.fhir.document_mapping import document_reference, document_type
from gateway.fhir.mapping import MappingContext

CONTEXT = MappingContext(dicomweb_url="https://gw.example.org/dicomweb")
FHIR = "https://gw.example.org/fhir"
COMPREHENSIVE_SR = "1.2.840.10008.5.1.4.1.1.88.33"


def code(value: str, scheme: str, meaning: str) -> dict[str, Any]:
    return {
        tag("CodeValue"): element("SH", value),
        tag("CodingSchemeDesignator"): element("SH", scheme),
        tag("CodeMeaning"): element("LO", meaning),
    }


def item(value_type: str, name: str, **values: Any) -> dict[str, Any]:
    built = {
        tag("RelationshipType"): element("CS", "CONTAINS"),
        tag("ValueType"): element("CS", value_type),
        tag("ConceptNameCodeSequence"): {"vr": "SQ", "Value": [code("1", "99X", name)]},
    }
    for keyword, value in values.items():
        built[tag(keyword)] = value
    return built


def report(**flags: str) -> dict[str, Any]:
    measured = {
        tag("NumericValue"): element("DS", "12.5"),
        tag("MeasurementUnitsCodeSequence"): {"vr": "SQ", "Value": [code("mm", "UCUM", "mm")]},
    }
    content = [
        item("TEXT", "Finding", TextValue=element("UT", "Mass <b>&</b> nodule")),
        item(
            "CONTAINER",
            "Measurements",
            ContentSequence={
                "vr": "SQ",
                "Value": [
                    item(
                        "NUM", "Diameter", MeasuredValueSequence={"vr": "SQ", "Value": [measured]}
                    ),
                    item(
                        "CODE",
                        "Laterality",
                        ConceptCodeSequence={"vr": "SQ", "Value": [code("7771000", "SCT", "Left")]},
                    ),
                ],
            },
        ),
    ]
    instance = {
        tag("SOPClassUID"): element("UI", COMPREHENSIVE_SR),
        tag("SOPInstanceUID"): element("UI", "1.2.3.4.5"),
        tag("StudyInstanceUID"): element("UI", "1.2.3"),
        tag("SeriesInstanceUID"): element("UI", "1.2.3.4"),
        tag("PatientID"): element("LO", "MRN1"),
        tag("PatientName"): {"vr": "PN", "Value": [{"Alphabetic": "Doe^Jane"}]},
        tag("ContentDate"): element("DA", "20240102"),
        tag("ContentTime"): element("TM", "101500"),
        tag("TimezoneOffsetFromUTC"): element("SH", "+0100"),
        tag("ConceptNameCodeSequence"): {
            "vr": "SQ",
            "Value": [code("18748-4", "LN", "Diagnostic imaging study")],
        },
        tag("ContentSequence"): {"vr": "SQ", "Value": content},
    }
    for keyword, value in flags.items():
        instance[tag(keyword)] = element("CS", value)
    return instance


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        ({"CompletionFlag": "COMPLETE", "VerificationFlag": "VERIFIED"}, "final"),
        ({"CompletionFlag": "PARTIAL", "VerificationFlag": "UNVERIFIED"}, "preliminary"),
        ({"CompletionFlag": "COMPLETE", "VerificationFlag": "UNVERIFIED"}, "preliminary"),
        ({"PreliminaryFlag": "PRELIMINARY", "VerificationFlag": "VERIFIED"}, "preliminary"),
        ({"PreliminaryFlag": "FINAL"}, "final"),
        ({}, None),
    ],
)
def test_doc_status(flags: dict[str, str], expected: str | None) -> None:
    assert doc_status(report(**flags)) == expected


def test_a_verified_report_with_a_predecessor_is_amended() -> None:
    instance = report(CompletionFlag="COMPLETE", VerificationFlag="VERIFIED")
    instance[tag("PredecessorDocumentsSequence")] = {"vr": "SQ", "Value": [{}]}
    assert doc_status(instance) == "amended"


def test_mapped_resource_is_valid_and_complete() -> None:
    resource = document_reference(
        report(CompletionFlag="COMPLETE", VerificationFlag="VERIFIED"),
        patient_id="p1",
        context=CONTEXT,
        fhir_url=FHIR,
    )
    DocumentReference.model_validate(resource)
    assert resource["id"] == "1.2.3.4.5"
    assert resource["date"] == "2024-01-02T10:15:00+01:00"
    assert resource["subject"] == {"reference": "Patient/p1", "display": "Jane Doe"}
    html, text = resource["content"]
    assert html["attachment"]["url"].endswith("/instances/1.2.3.4.5/rendered?accept=text%2Fhtml")
    assert text["attachment"]["size"] == len(
        reports.render_text(report(CompletionFlag="COMPLETE", VerificationFlag="VERIFIED")).encode()
    )


def test_a_local_title_still_gets_the_imaging_report_type() -> None:
    instance = report()
    instance[tag("ConceptNameCodeSequence")] = {
        "vr": "SQ",
        "Value": [code("RPT", "99LOCAL", "Local report")],
    }
    mapped = document_type(instance)
    assert mapped["coding"][0]["code"] == "18748-4"


def test_text_rendering_walks_the_content_tree() -> None:
    text = reports.render_text(report(CompletionFlag="PARTIAL"))
    assert "Finding: Mass <b>&</b> nodule" in text
    assert "MEASUREMENTS" in text
    assert "  Diameter: 12.5 mm" in text
    assert "  Laterality: Left" in text
    assert "PRELIMINARY" in text


def test_html_rendering_escapes_report_text() -> None:
    page = reports.render_html(report())
    assert "<b>&</b>" not in page
    assert "Mass &lt;b&gt;&amp;&lt;/b&gt; nodule" in page
    assert page.startswith("<!DOCTYPE html>")


def test_images_do_not_map() -> None:
    instance = report()
    instance[tag("SOPClassUID")] = element("UI", "1.2.840.10008.5.1.4.1.1.2")
    with pytest.raises(ValueError):
        document_reference(instance, patient_id=None, context=CONTEXT, fhir_url=FHIR)
