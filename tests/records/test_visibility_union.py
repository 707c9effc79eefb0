"""A Visibility with parts: whole patients, and besides them single studies of others."""

from __future__ import annotations

from gateway.auth.preauthorized import Entry
from gateway.authorization import preauthorized_visibility
from gateway.dicomweb import dicomjson as dj


def _study(uid: str, patient_id: str, issuer: str) -> dj.DicomJson:
    return {
        dj.tag("StudyInstanceUID"): dj.element("UI", uid),
        dj.tag("PatientID"): dj.element("LO", patient_id),
        dj.tag("IssuerOfPatientID"): dj.element("LO", issuer),
    }


def test_union_of_a_whole_patient_and_one_study_of_another() -> None:
    visibility = preauthorized_visibility(
        [
            Entry("p1", "A", "111"),
            Entry("p2", "A", "222", "1.2.3"),
            Entry("p2", "A", "222", "1.2.4"),
        ]
    )
    assert visibility.permits(_study("9.9", "111", "A"))  # any study of the whole patient
    assert visibility.permits(_study("1.2.3", "222", "A"))
    assert not visibility.permits(_study("1.2.5", "222", "A"))  # not given
    assert not visibility.permits(_study("1.2.3", "222", "B"))  # same UID, another patient
    assert not visibility.permits(_study("9.9", "111", "B"))  # same MRN, another issuer
    assert visibility.every_patient == {("A", "111"), ("A", "222")}
    assert visibility.permits_patient(("A", "222")) and not visibility.permits_patient(("B", "1"))
    assert visibility.narrow({"ModalitiesInStudy": "CT"}) == [
        {"ModalitiesInStudy": "CT", "PatientID": "111"},
        {"ModalitiesInStudy": "CT", "StudyInstanceUID": "1.2.3,1.2.4", "PatientID": "222"},
    ]
    assert visibility.narrow({"StudyInstanceUID": "1.2.4"}) == [
        {"StudyInstanceUID": "1.2.4", "PatientID": "111"},
        {"StudyInstanceUID": "1.2.4", "PatientID": "222"},
    ]


def test_nothing_given_is_nothing() -> None:
    visibility = preauthorized_visibility([])
    assert visibility.narrow({}) == [] and visibility.every_patient == frozenset()
    assert not visibility.permits(_study("1.2.3", "111", "A"))


def test_a_study_of_a_whole_patient_adds_no_part() -> None:
    visibility = preauthorized_visibility([Entry("p1", "A", "111"), Entry("p1", "A", "111", "1.2")])
    assert visibility.also == () and visibility.patients == {("A", "111")}
