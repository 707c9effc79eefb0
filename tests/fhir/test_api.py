"""The FHIR API, run against the embedded store and a real Orthanc alike."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

import pytest
from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.capabilitystatement import CapabilityStatement
from fhir.resources.R4B.endpoint import Endpoint
from fhir.resources.R4B.imagingstudy import ImagingStudy
from fhir.resources.R4B.operationoutcome import OperationOutcome
from fhir.resources.R4B.patient import Patient

from fixtures.generate import BENCH_PATIENT_ID, CHARSET_PATIENT_ID
from tests.conftest import Gateway
from tests.support.catalog import StudyFacts, by_patient, read_catalog

FHIR_JSON = "application/fhir+json"


@pytest.fixture(scope="module")
def catalog(fixture_files: list[Path]) -> dict[str, StudyFacts]:
    return read_catalog(fixture_files)


def search(gateway: Gateway, path: str, status: int = 200) -> dict:
    response = gateway.get(path)
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith(FHIR_JSON)
    body = response.json()
    if status == 200 and body.get("resourceType") == "Bundle":
        Bundle.model_validate(body)
    return body


def resources(bundle: dict, mode: str = "match") -> list[dict]:
    return [e["resource"] for e in bundle.get("entry", []) if e["search"]["mode"] == mode]


def patient_id_of(gateway: Gateway, mrn: str) -> str:
    bundle = search(gateway, f"/fhir/Patient?identifier={mrn}")
    found = resources(bundle)
    assert found, f"no Patient for {mrn}"
    return found[0]["id"]


def expect_outcome(gateway: Gateway, path: str, status: int, mentions: str) -> None:
    response = gateway.get(path)
    assert response.status_code == status, response.text
    outcome = response.json()
    OperationOutcome.model_validate(outcome)
    assert mentions in outcome["issue"][0]["diagnostics"]


def test_capability_statement_lists_what_works(gateway: Gateway) -> None:
    statement = search(gateway, "/fhir/metadata")
    CapabilityStatement.model_validate(statement)
    assert statement["fhirVersion"] == "4.0.1"
    by_type = {r["type"]: r for r in statement["rest"][0]["resource"]}
    assert set(by_type) == {
        "ImagingStudy",
        "Patient",
        "Endpoint",
        "DocumentReference",
        "Binary",
        "Practitioner",
        "AuditEvent",
        "Consent",
    }
    params = {p["name"] for p in by_type["ImagingStudy"]["searchParam"]}
    assert {"patient", "started", "modality", "identifier", "series", "_id"} <= params
    params = {p["name"] for p in by_type["DocumentReference"]["searchParam"]}
    assert {"patient", "date", "type", "category", "related", "contenttype", "status"} <= params
    assert by_type["Binary"]["interaction"] == [{"code": "read"}]


def test_search_all_returns_every_study_validated(gateway: Gateway, catalog) -> None:
    bundle = search(gateway, "/fhir/ImagingStudy?_count=200")
    assert bundle["total"] == len(catalog)
    studies = resources(bundle)
    assert {s["id"] for s in studies} == set(catalog)
    for study in studies:
        ImagingStudy.model_validate(study)
    for entry in bundle["entry"]:
        assert (
            entry["fullUrl"]
            == f"{gateway.settings.fhir_base_url}/ImagingStudy/{entry['resource']['id']}"
        )


def test_patient_search_returns_that_patients_studies_with_counts(
    gateway: Gateway, catalog
) -> None:
    expected = by_patient(catalog)[("HOSP-A", BENCH_PATIENT_ID)]
    patient = patient_id_of(gateway, BENCH_PATIENT_ID)
    assert BENCH_PATIENT_ID not in patient
    bundle = search(gateway, f"/fhir/ImagingStudy?patient={patient}&_count=50")
    studies = resources(bundle)
    assert len(studies) == len(expected) == 10
    facts = {f.uid: f for f in expected}
    for study in studies:
        assert study["subject"]["reference"] == f"Patient/{patient}"
        assert study["numberOfSeries"] == len(facts[study["id"]].series)
        assert study["numberOfInstances"] == facts[study["id"]].instances
        assert len(study["series"]) == len(facts[study["id"]].series)
        assert sum(len(s["instance"]) for s in study["series"]) == facts[study["id"]].instances


def test_subject_and_full_reference_forms_agree(gateway: Gateway) -> None:
    patient = patient_id_of(gateway, BENCH_PATIENT_ID)
    plain = {s["id"] for s in resources(search(gateway, f"/fhir/ImagingStudy?subject={patient}"))}
    typed = {
        s["id"] for s in resources(search(gateway, f"/fhir/ImagingStudy?patient=Patient/{patient}"))
    }
    assert plain == typed and plain


def test_same_mrn_from_two_issuers_is_two_patients(gateway: Gateway, catalog) -> None:
    groups = by_patient(catalog)
    mrns = [pid for (_, pid) in groups]
    shared = {m for m in mrns if mrns.count(m) > 1}
    assert shared, "fixtures should hold one MRN under two issuers"
    mrn = shared.pop()
    patients = resources(search(gateway, f"/fhir/Patient?identifier={mrn}"))
    assert len(patients) == 2
    assert len({p["id"] for p in patients}) == 2
    for patient in patients:
        Patient.model_validate(patient)
        issuer = patient["identifier"][0]["assigner"]["display"]
        studies = resources(
            search(gateway, f"/fhir/ImagingStudy?patient={patient['id']}&_count=100")
        )
        assert {s["id"] for s in studies} == {f.uid for f in groups[(issuer, mrn)]}


def test_read_matches_search_entry(gateway: Gateway, catalog) -> None:
    uid = sorted(catalog)[0]
    response = gateway.get(f"/fhir/ImagingStudy/{uid}")
    assert response.status_code == 200
    study = response.json()
    ImagingStudy.model_validate(study)
    from_search = resources(search(gateway, f"/fhir/ImagingStudy?_id={uid}"))
    assert from_search == [study]


def test_identifier_search_by_uid_and_accession(gateway: Gateway, catalog) -> None:
    facts = next(f for f in catalog.values() if f.accession)
    for query in (
        f"urn:oid:{facts.uid}",
        f"urn:dicom:uid|urn:oid:{facts.uid}",
        facts.accession,
    ):
        found = resources(search(gateway, f"/fhir/ImagingStudy?identifier={query}"))
        assert facts.uid in {s["id"] for s in found}, query
        if query.startswith("urn"):
            assert len(found) == 1
    by_accession = [f.uid for f in catalog.values() if f.accession == facts.accession]
    found = resources(search(gateway, f"/fhir/ImagingStudy?identifier={facts.accession}"))
    assert sorted(s["id"] for s in found) == sorted(by_accession)
    assert resources(search(gateway, "/fhir/ImagingStudy?identifier=no-such-accession")) == []


def test_started_prefixes(gateway: Gateway, catalog) -> None:
    dated = sorted(catalog.values(), key=lambda f: str(f.first.StudyDate))
    middle = dated[len(dated) // 2]
    day = str(middle.first.StudyDate)
    iso = f"{day[:4]}-{day[4:6]}-{day[6:]}"
    on_day = {f.uid for f in catalog.values() if str(f.first.StudyDate) == day}
    before = {f.uid for f in catalog.values() if str(f.first.StudyDate) < day}
    after = {f.uid for f in catalog.values() if str(f.first.StudyDate) > day}

    def ids(query: str) -> set[str]:
        return {
            s["id"] for s in resources(search(gateway, f"/fhir/ImagingStudy?{query}&_count=200"))
        }

    assert ids(f"started={iso}") == on_day
    assert ids(f"started=lt{iso}") == before
    assert ids(f"started=gt{iso}") == after
    assert ids(f"started=ge{iso}") == on_day | after
    assert ids(f"started=le{iso}") == on_day | before
    assert ids(f"started=ne{iso}") == before | after
    year = day[:4]
    assert ids(f"started={year}") == {
        f.uid for f in catalog.values() if str(f.first.StudyDate)[:4] == year
    }
    assert ids(f"started=ge{year}-01-01&started=lt{int(year) + 1}-01-01") == ids(f"started={year}")


def test_modality_and_series_search(gateway: Gateway, catalog) -> None:
    ct = {f.uid for f in catalog.values() if "CT" in f.modalities}
    mg_or_us = {f.uid for f in catalog.values() if f.modalities & {"MG", "US"}}

    def ids(query: str) -> set[str]:
        return {
            s["id"] for s in resources(search(gateway, f"/fhir/ImagingStudy?{query}&_count=200"))
        }

    assert ids("modality=CT") == ct
    assert ids("modality=http://dicom.nema.org/resources/ontology/DCM|CT") == ct
    assert ids("modality=MG,US") == mg_or_us
    assert ids("modality=http://example.org/other|CT") == set()
    facts = next(iter(catalog.values()))
    assert ids(f"series={sorted(facts.series)[0]}") == {facts.uid}


def test_paging_follows_next_links_without_duplicates(gateway: Gateway, catalog) -> None:
    seen: list[str] = []
    url = "/fhir/ImagingStudy?_count=7&_sort=started"
    pages = 0
    while url:
        bundle = search(gateway, url)
        assert bundle["total"] == len(catalog)
        seen.extend(s["id"] for s in resources(bundle))
        links = {link["relation"]: link["url"] for link in bundle["link"]}
        url = links.get("next", "").removeprefix(gateway.settings.public_url)
        pages += 1
        assert pages < 20
    assert len(seen) == len(set(seen)) == len(catalog)
    assert pages == -(-len(catalog) // 7)


def test_sort_orders_by_started(gateway: Gateway) -> None:
    ascending = resources(search(gateway, "/fhir/ImagingStudy?_sort=started&_count=200"))
    descending = resources(search(gateway, "/fhir/ImagingStudy?_sort=-started&_count=200"))
    days = [s.get("started", "")[:10] for s in ascending]
    assert days == sorted(days)
    assert [s["id"] for s in descending][::-1] != [] and days[0] <= days[-1]
    assert [s.get("started", "")[:10] for s in descending] == sorted(days, reverse=True)


def test_summary_count_and_status(gateway: Gateway, catalog) -> None:
    bundle = search(gateway, "/fhir/ImagingStudy?_summary=count")
    assert bundle["total"] == len(catalog) and "entry" not in bundle
    assert search(gateway, "/fhir/ImagingStudy?status=available&_summary=count")["total"] == len(
        catalog
    )
    assert search(gateway, "/fhir/ImagingStudy?status=cancelled&_summary=count")["total"] == 0


def test_includes_subject_and_endpoint(gateway: Gateway) -> None:
    patient = patient_id_of(gateway, BENCH_PATIENT_ID)
    bundle = search(
        gateway,
        f"/fhir/ImagingStudy?patient={patient}&_include=ImagingStudy:subject"
        "&_include=ImagingStudy:endpoint",
    )
    included = resources(bundle, "include")
    kinds = sorted(r["resourceType"] for r in included)
    assert kinds == ["Endpoint", "Patient"]
    endpoint = next(r for r in included if r["resourceType"] == "Endpoint")
    Endpoint.model_validate(endpoint)
    assert endpoint["address"] == gateway.settings.dicomweb_base_url
    assert next(r for r in included if r["resourceType"] == "Patient")["id"] == patient


def test_unknown_parameters_are_ignored_unless_strict(gateway: Gateway, catalog) -> None:
    bundle = search(gateway, "/fhir/ImagingStudy?foo=bar&_summary=count")
    assert bundle["total"] == len(catalog)
    self_link = next(link["url"] for link in bundle["link"] if link["relation"] == "self")
    assert "foo" not in dict(parse_qsl(urlsplit(self_link).query))
    response = gateway.get("/fhir/ImagingStudy?foo=bar", headers={"Prefer": "handling=strict"})
    assert response.status_code == 400
    assert "foo" in response.json()["issue"][0]["diagnostics"]


@pytest.mark.parametrize(
    ("query", "parameter"),
    [
        ("started=notadate", "started"),
        ("started=2020-13-45", "started"),
        ("started=xx2020", "started"),
        ("_count=many", "_count"),
        ("_offset=-1", "_offset"),
        ("patient=Practitioner/1", "patient"),
        ("patient=bad id!", "patient"),
        ("_sort=description", "_sort"),
        ("_include=ImagingStudy:referrer", "_include"),
        ("modality=", "modality"),
        ("_summary=text", "_summary"),
        ("_id=not a uid", "_id"),
    ],
)
def test_bad_values_get_400_naming_the_parameter(
    gateway: Gateway, query: str, parameter: str
) -> None:
    expect_outcome(gateway, f"/fhir/ImagingStudy?{query}", 400, parameter)


def test_xml_is_not_acceptable(gateway: Gateway) -> None:
    expect_outcome(gateway, "/fhir/ImagingStudy?_format=xml", 406, "XML")
    response = gateway.get("/fhir/metadata", headers={"Accept": "application/fhir+xml"})
    assert response.status_code == 406
    assert gateway.get("/fhir/metadata?_format=json").status_code == 200


def test_unknown_things_are_404_outcomes(gateway: Gateway) -> None:
    expect_outcome(gateway, "/fhir/ImagingStudy/1.2.3.4.5.6.7.8.9", 404, "not known")
    expect_outcome(gateway, "/fhir/ImagingStudy/not-a-uid", 404, "not known")
    expect_outcome(gateway, "/fhir/Patient/0000", 404, "not known")
    expect_outcome(gateway, "/fhir/Endpoint/other", 404, "not known")
    expect_outcome(gateway, "/fhir/Observation", 404, "Observation")
    assert gateway.client.delete("/fhir/ImagingStudy/1.2.3").status_code == 405


def test_patient_read_and_search(gateway: Gateway, catalog) -> None:
    patient_id = patient_id_of(gateway, CHARSET_PATIENT_ID)
    response = gateway.get(f"/fhir/Patient/{patient_id}")
    assert response.status_code == 200
    patient = response.json()
    Patient.model_validate(patient)
    facts = next(f for f in catalog.values() if str(f.first.PatientID) == CHARSET_PATIENT_ID)
    family = str(facts.first.PatientName).split("^")[0]
    assert patient["name"][0]["family"] == family
    assert any(ord(c) > 127 for c in family), "the charset patient has a non-ASCII name"
    for prefix in (family[:3].lower(), family[:3].upper(), "mul", "Mül"):
        by_name = resources(search(gateway, f"/fhir/Patient?name={prefix}"))
        assert patient_id in {p["id"] for p in by_name}, prefix
    assert resources(search(gateway, "/fhir/Patient?name=ller")) == []  # starts-with only
    birth = patient["birthDate"]
    by_birth = resources(search(gateway, f"/fhir/Patient?birthdate={birth}"))
    assert patient_id in {p["id"] for p in by_birth}
    assert all(p["birthDate"] == birth for p in by_birth)
    gender = patient["gender"]
    by_gender = resources(search(gateway, f"/fhir/Patient?gender={gender}&_count=100"))
    assert patient_id in {p["id"] for p in by_gender}
    assert all(p["gender"] == gender for p in by_gender)
    assert resources(search(gateway, f"/fhir/Patient?_id={patient_id}"))[0]["id"] == patient_id


def test_endpoint_read(gateway: Gateway) -> None:
    response = gateway.get("/fhir/Endpoint/dicomweb")
    assert response.status_code == 200
    endpoint = response.json()
    Endpoint.model_validate(endpoint)
    assert endpoint["connectionType"]["code"] == "dicom-wado-rs"
    assert search(gateway, "/fhir/Endpoint")["total"] == 1
