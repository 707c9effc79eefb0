"""SMART Imaging Access 0.1: discovery, the CapabilityStatement, and the two profiles.

Each resource is validated with fhir.resources (R4B) and then against the rules of
the guide's SmartImagingStudy and SmartWadoEndpoint profiles (input/fsh/profiles.fsh):
the Study Instance UID identifier, status, subject, modality, at least one endpoint
that resolves (contained or included) to an Endpoint with connectionType
dicom-wado-rs, an address, and exactly one boolean requires-access-token extension.
"""

from __future__ import annotations

from typing import Any

from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.capabilitystatement import CapabilityStatement
from fhir.resources.R4B.endpoint import Endpoint
from fhir.resources.R4B.imagingstudy import ImagingStudy

from tests.imaging.conftest import Imaging
from tests.imaging.support import CT_STUDY, MR_STUDY, PATIENT_SCOPES

IG = "http://fhir.org/argonaut/smart-imaging"
STUDY_PROFILE = f"{IG}/StructureDefinition/smart-imaging-study"
ENDPOINT_PROFILE = f"{IG}/StructureDefinition/smart-wado-endpoint"
REQUIRES_ACCESS_TOKEN = f"{IG}/StructureDefinition/requires-access-token"
CONNECTION_TYPE = "http://terminology.hl7.org/CodeSystem/endpoint-connection-type"


def test_discovery_advertises_imaging_access_and_both_modes(imaging: Imaging) -> None:
    config = imaging.harness.client.get("/fhir/.well-known/smart-configuration").json()
    for capability in (
        "smart-imaging-access",
        f"{IG}/capabilities/app-launch",
        f"{IG}/capabilities/backend-services",
    ):
        assert capability in config["capabilities"]
    # The same FHIR endpoint serves ImagingStudy, so the strings are top-level and no
    # associated endpoint is named (the guide's rule for a separate imaging endpoint).
    assert "associated_endpoints" not in config
    assert {"authorization_code", "client_credentials"} <= set(config["grant_types_supported"])
    assert "private_key_jwt" in config["token_endpoint_auth_methods_supported"]
    assert {"RS384", "ES384"} <= set(config["token_endpoint_auth_signing_alg_values_supported"])
    assert {"system/ImagingStudy.rs", "patient/ImagingStudy.rs"} <= set(config["scopes_supported"])


def test_capability_statement_names_the_profiles_and_parameters(imaging: Imaging) -> None:
    statement = imaging.harness.client.get("/fhir/metadata").json()
    CapabilityStatement.model_validate(statement)
    assert f"{IG}/CapabilityStatement/smart-imaging-server" in statement["instantiates"]
    kinds = {r["type"]: r for r in statement["rest"][0]["resource"]}
    study = kinds["ImagingStudy"]
    assert study["supportedProfile"] == [STUDY_PROFILE]
    assert "ImagingStudy:endpoint" in study["searchInclude"]
    assert {"patient", "identifier", "_lastUpdated"} <= {p["name"] for p in study["searchParam"]}
    assert {p["name"]: p["type"] for p in study["searchParam"]}["_lastUpdated"] == "date"
    assert kinds["Endpoint"]["supportedProfile"] == [ENDPOINT_PROFILE]


def check_endpoint(endpoint: dict[str, Any], requires_token: bool) -> None:
    """SmartWadoEndpoint's rules."""
    Endpoint.model_validate(endpoint)
    assert ENDPOINT_PROFILE in endpoint["meta"]["profile"]
    assert endpoint["status"] == "active"
    assert endpoint["connectionType"]["system"] == CONNECTION_TYPE
    assert endpoint["connectionType"]["code"] == "dicom-wado-rs"
    assert endpoint["address"].startswith("https://gateway.example/dicomweb")
    flags = [e for e in endpoint.get("extension", []) if e["url"] == REQUIRES_ACCESS_TOKEN]
    assert len(flags) == 1 and set(flags[0]) == {"url", "valueBoolean"}
    assert flags[0]["valueBoolean"] is requires_token


def check_study(study: dict[str, Any], included: dict[str, dict[str, Any]]) -> list[dict]:
    """SmartImagingStudy's rules; returns the endpoints it resolves to."""
    ImagingStudy.model_validate(study)
    assert STUDY_PROFILE in study["meta"]["profile"]
    uids = [i for i in study["identifier"] if i.get("system") == "urn:dicom:uid"]
    assert len(uids) == 1 and uids[0]["value"] == f"urn:oid:{study['id']}"
    assert study["status"]
    assert study["subject"]["reference"].startswith("Patient/")
    assert study["modality"]
    contained = {f"#{r['id']}": r for r in study.get("contained", [])}
    resolved = []
    for reference in study["endpoint"]:
        found = contained.get(reference["reference"]) or included.get(reference["reference"])
        assert found is not None, reference
        assert found["resourceType"] == "Endpoint"
        resolved.append(found)
    # The reference stack's clients read the contained one only: it must come first.
    assert study["endpoint"][0]["reference"].startswith("#")
    return resolved


def test_search_answers_conform_to_the_profiles(imaging: Imaging) -> None:
    headers = imaging.patient_headers(imaging.a, PATIENT_SCOPES)
    response = imaging.harness.client.get(
        f"/fhir/ImagingStudy?patient={imaging.a}&_include=ImagingStudy:endpoint", headers=headers
    )
    assert response.status_code == 200, response.text
    bundle = response.json()
    Bundle.model_validate(bundle)
    matches = [e["resource"] for e in bundle["entry"] if e["search"]["mode"] == "match"]
    included = {
        f"Endpoint/{e['resource']['id']}": e["resource"]
        for e in bundle["entry"]
        if e["search"]["mode"] == "include"
    }
    assert {m["id"] for m in matches} == {CT_STUDY, MR_STUDY}
    assert set(included) == {"Endpoint/dicomweb"}
    for study in matches:
        for endpoint in check_study(study, included):
            check_endpoint(endpoint, requires_token=True)
        assert study["meta"]["lastUpdated"].endswith("Z")
    read = imaging.harness.client.get(f"/fhir/ImagingStudy/{CT_STUDY}", headers=headers).json()
    check_study(read, included)
    assert read["meta"] == next(m for m in matches if m["id"] == CT_STUDY)["meta"]
    wide = imaging.patient_headers(imaging.a, "launch/patient patient/*.rs")
    endpoint = imaging.harness.client.get("/fhir/Endpoint/dicomweb", headers=wide).json()
    check_endpoint(endpoint, requires_token=True)


def test_a_study_without_the_rules_fails_the_check() -> None:
    """The check above can fail: a study whose endpoint is missing or lacks the flag."""
    study = {
        "resourceType": "ImagingStudy",
        "id": "1.2.3",
        "meta": {"profile": [STUDY_PROFILE]},
        "identifier": [{"system": "urn:dicom:uid", "value": "urn:oid:1.2.3"}],
        "status": "available",
        "subject": {"reference": "Patient/p"},
        "modality": [{"code": "CT"}],
        "endpoint": [{"reference": "#missing"}],
    }
    try:
        check_study(study, {})
    except AssertionError:
        pass
    else:
        raise AssertionError("an unresolvable endpoint passed")
    endpoint = {
        "resourceType": "Endpoint",
        "meta": {"profile": [ENDPOINT_PROFILE]},
        "status": "active",
        "connectionType": {"system": CONNECTION_TYPE, "code": "dicom-wado-rs"},
        "payloadType": [{"text": "DICOM"}],
        "address": "https://gateway.example/dicomweb",
    }
    try:
        check_endpoint(endpoint, requires_token=True)
    except AssertionError:
        pass
    else:
        raise AssertionError("an endpoint without requires-access-token passed")
