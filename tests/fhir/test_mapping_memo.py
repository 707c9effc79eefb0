"""A warm search maps each study once per process: the same record and instance list
(as the study index hands out while its stored text is unchanged) give back the same
resource; any other object is mapped anew, and the result is what the mapping gives."""

from __future__ import annotations

from gateway.dicomweb.dicomjson import element, tag
from gateway.fhir import mapping, studies
from gateway.fhir.mapping import MappingContext
from gateway.records.studies import StudyDetail, StudyPage, series_of
from gateway.records.summaries import summarize

CONTEXT = MappingContext("https://gateway.example/dicomweb")
KEY = ("issuer", "MRN1")


def record(description: str) -> dict:
    return {
        tag("StudyInstanceUID"): element("UI", "1.2.3"),
        tag("PatientID"): element("LO", KEY[1]),
        tag("IssuerOfPatientID"): element("LO", KEY[0]),
        tag("StudyDescription"): element("LO", description),
        tag("NumberOfStudyRelatedInstances"): element("IS", "1"),
    }


def instance(number: int) -> dict:
    return {
        tag("StudyInstanceUID"): element("UI", "1.2.3"),
        tag("SeriesInstanceUID"): element("UI", "1.2.3.1"),
        tag("Modality"): element("CS", "CT"),
        tag("SOPInstanceUID"): element("UI", f"1.2.3.1.{number}"),
        tag("SOPClassUID"): element("UI", "1.2.840.10008.5.1.4.1.1.2"),
        tag("InstanceNumber"): element("IS", str(number)),
    }


def page(source: dict, instances: list[dict], patient: str = "p1") -> StudyPage:
    summary = summarize(source, None)
    assert summary is not None
    detail = StudyDetail(summary, series_of(instances), instances)
    return StudyPage(1, [detail], {KEY: patient})


def expected(source: dict, instances: list[dict], patient: str = "p1") -> dict:
    return mapping.imaging_study(
        source, series_of(instances), instances, patient_id=patient, context=CONTEXT
    )


def test_the_same_objects_map_once() -> None:
    source, instances = record("CT head"), [instance(1)]
    (first,) = studies.resources(page(source, instances), CONTEXT)
    (again,) = studies.resources(page(source, instances), CONTEXT)
    assert again is first
    assert first == expected(source, instances)


def test_other_objects_or_another_patient_id_map_anew() -> None:
    source, instances = record("CT head"), [instance(1)]
    (first,) = studies.resources(page(source, instances), CONTEXT)
    changed, more = record("CT head, corrected"), [instance(1), instance(2)]
    (described,) = studies.resources(page(changed, instances), CONTEXT)
    (grown,) = studies.resources(page(source, more), CONTEXT)
    (renamed,) = studies.resources(page(source, instances, "p2"), CONTEXT)
    assert described == expected(changed, instances) and described["description"].endswith(
        "corrected"
    )
    assert grown == expected(source, more) and len(grown["series"][0]["instance"]) == 2
    assert renamed["subject"]["reference"] == "Patient/p2"
    assert first == expected(source, instances)


def test_the_memo_holds_a_bounded_number_of_instances() -> None:
    memo = studies.MappedStudies(entries=10, instances=2)
    source, small, large = record("CT"), [instance(1)], [instance(1), instance(2), instance(3)]
    detail = page(source, small).studies[0]
    assert memo.imaging_study(detail, "p1", CONTEXT) is memo.imaging_study(detail, "p1", CONTEXT)
    big = page(source, large).studies[0]
    first = memo.imaging_study(big, "p1", CONTEXT)
    assert memo.imaging_study(big, "p1", CONTEXT) is not first  # more than the bound: not kept
    assert first == expected(source, large)
