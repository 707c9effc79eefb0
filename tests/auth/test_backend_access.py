"""SMART Imaging Access, Backend Services mode: a backend client sees its pre-authorized access.

``system/ImagingStudy.rs`` does not reach every patient: a backend client sees
the patients and studies it was given (``gateway clients access add``), and
what was shared with its organization; only clients registered as operators
(``--operator``) see everything. A search naming a patient outside that access
is refused (403); a search without one returns only what is pre-authorized; a
study outside it is not found (404), as for every caller, so a refusal never
confirms that a study exists.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

import pytest
from joserfc import jwt
from joserfc.jwk import RSAKey

from gateway.auth.client_auth import JWT_BEARER
from gateway.auth.clients import ClientKind, RegistrationError
from gateway.auth.preauthorized import CLIENT, ORGANIZATION, Entry
from tests.auth.test_oauth_api import Harness, bearer
from tests.auth.test_oauth_api import catalog as catalog
from tests.auth.test_oauth_api import harness as harness
from tests.support.catalog import StudyFacts, by_patient

FHIR_JSON = {"Accept": "application/fhir+json"}


def backend_token(harness: Harness, scope: str = "system/*.rs", **registration: Any) -> dict:
    """A backend client registered as the CLI registers one (not an operator unless told)."""
    key = RSAKey.generate_key(2048, parameters={"kid": f"k-{uuid.uuid4().hex[:6]}"})
    created = harness.call(
        harness.services.auth.clients.add,
        name="Referral service",
        kind=ClientKind.backend,
        jwks={"keys": [key.as_dict(private=False)]},
        scope=scope,
        **registration,
    )
    client_id = created.client.client_id
    assertion = jwt.encode(
        {"alg": "RS384", "kid": key.kid, "typ": "JWT"},
        {
            "iss": client_id,
            "sub": client_id,
            "aud": harness.token_url,
            "exp": int(time.time()) + 240,
            "jti": uuid.uuid4().hex,
        },
        key,
        algorithms=["RS384"],
    )
    response = harness.client.post(
        "/oauth/token",
        data={
            "grant_type": "client_credentials",
            "scope": scope,
            "client_assertion_type": JWT_BEARER,
            "client_assertion": assertion,
        },
    )
    assert response.status_code == 200, response.text
    return {**response.json(), "client_id": client_id}


def patient_id(harness: Harness, key: tuple[str, str]) -> str:
    return str(harness.call(harness.services.records.patients.identify, *key))


def test_system_token_of_a_non_operator_backend_client_reads_another_patient(
    harness: Harness, catalog: dict[str, StudyFacts]
) -> None:
    """Written first (issue 13): on the base commit every one of these answered 200."""
    other = by_patient(catalog)[("HOSP-A", "IS-1002")]
    other_id = patient_id(harness, ("HOSP-A", "IS-1002"))
    token = bearer(backend_token(harness))
    study = other[0].uid

    named = harness.client.get(f"/fhir/ImagingStudy?patient={other_id}", headers=token)
    assert named.status_code == 403, named.text[:300]
    assert named.json()["resourceType"] == "OperationOutcome"
    unnamed = harness.client.get("/fhir/ImagingStudy", headers=token)
    assert unnamed.status_code == 200 and unnamed.json()["total"] == 0, unnamed.text[:300]
    assert harness.client.get(f"/fhir/ImagingStudy/{study}", headers=token).status_code == 404
    read = harness.client.get(f"/fhir/Patient/{other_id}", headers=token)
    assert read.status_code == 403 and read.json()["resourceType"] == "OperationOutcome"
    documents = harness.client.get(f"/fhir/DocumentReference?patient={other_id}", headers=token)
    assert documents.status_code == 403
    metadata = harness.client.get(f"/dicomweb/studies/{study}/metadata", headers=token)
    assert metadata.status_code == 404 and metadata.headers["warning"].startswith("299 ")
    qido = harness.client.get("/dicomweb/studies?PatientID=IS-1002", headers=token)
    assert qido.status_code == 403 and qido.headers["warning"].startswith("299 ")
    everything = harness.client.get("/dicomweb/studies", headers=token)
    assert everything.status_code in (200, 204) and not (everything.content.strip(b"[] \n"))


def give(harness: Harness, kind: str, holder: str, *entries: Entry) -> None:
    harness.call(harness.services.auth.access_table.give, kind, holder, entries)


def entry(harness: Harness, facts: StudyFacts, whole: bool = False) -> Entry:
    key = facts.patient_key
    return Entry(patient_id(harness, key), key[0], key[1], "" if whole else facts.uid)


def _uids(bundle: dict[str, Any]) -> set[str]:
    return {e["resource"]["id"] for e in bundle.get("entry", []) if e["search"]["mode"] == "match"}


def test_the_guides_example_study_a_not_b_not_another_patient(
    harness: Harness, catalog: dict[str, StudyFacts]
) -> None:
    """The guide's example: study A of patient 123 given; not B of 123, nothing of 456."""
    grouped = by_patient(catalog)
    study_a, study_b = grouped[("HOSP-A", "IS-1003")][:2]
    other = patient_id(harness, ("HOSP-A", "IS-1004"))
    token = backend_token(harness, "system/ImagingStudy.rs system/DocumentReference.rs")
    give(harness, CLIENT, token["client_id"], entry(harness, study_a))
    headers = bearer(token)
    mine = patient_id(harness, study_a.patient_key)

    found = harness.client.get(
        f"/fhir/ImagingStudy?patient={mine}&_include=ImagingStudy:endpoint", headers=headers
    )
    assert found.status_code == 200 and _uids(found.json()) == {study_a.uid}
    assert _uids(harness.client.get("/fhir/ImagingStudy", headers=headers).json()) == {study_a.uid}
    wado = f"/dicomweb/studies/{study_a.uid}/metadata"
    assert harness.client.get(wado, headers=headers).status_code == 200
    denied_b = harness.client.get(f"/dicomweb/studies/{study_b.uid}/metadata", headers=headers)
    assert denied_b.status_code == 404
    assert (
        harness.client.get(f"/fhir/ImagingStudy/{study_b.uid}", headers=headers).status_code == 404
    )
    outside = harness.client.get(f"/fhir/ImagingStudy?patient={other}", headers=headers)
    assert outside.status_code == 403
    assert outside.json()["issue"][0]["code"] == "forbidden"
    # Alternatives must all be inside; references in any form name the same patient.
    both = harness.client.get(f"/fhir/ImagingStudy?patient={mine},{other}", headers=headers)
    assert both.status_code == 403
    as_reference = harness.client.get(f"/fhir/ImagingStudy?subject=Patient/{mine}", headers=headers)
    assert as_reference.status_code == 200 and _uids(as_reference.json()) == {study_a.uid}
    qido = harness.client.get("/dicomweb/studies", headers=headers)
    assert {s["0020000D"]["Value"][0] for s in qido.json()} == {study_a.uid}
    # The same PatientID at another issuer is another patient.
    assert (
        harness.client.get(
            "/dicomweb/studies?PatientID=IS-1003&IssuerOfPatientID=HOSP-B", headers=headers
        ).status_code
        == 403
    )


def test_whole_patients_and_the_same_mrn_at_another_issuer(
    harness: Harness, catalog: dict[str, StudyFacts]
) -> None:
    grouped = by_patient(catalog)
    mine = grouped[("HOSP-A", "IS-1005")]
    theirs = grouped[("HOSP-B", "IS-1005")]
    token = backend_token(harness)
    give(harness, CLIENT, token["client_id"], entry(harness, mine[0], whole=True))
    headers = bearer(token)

    listed = harness.client.get("/fhir/ImagingStudy?_count=100", headers=headers).json()
    assert _uids(listed) == {s.uid for s in mine}
    qido = harness.client.get("/dicomweb/studies?PatientID=IS-1005", headers=headers)
    assert {s["0020000D"]["Value"][0] for s in qido.json()} == {s.uid for s in mine}
    for study in theirs:
        assert (
            harness.client.get(
                f"/dicomweb/studies/{study.uid}/metadata", headers=headers
            ).status_code
            == 404
        )
    theirs_id = patient_id(harness, ("HOSP-B", "IS-1005"))
    assert harness.client.get(f"/fhir/Patient/{theirs_id}", headers=headers).status_code == 403
    mine_id = patient_id(harness, ("HOSP-A", "IS-1005"))
    assert harness.client.get(f"/fhir/Patient/{mine_id}", headers=headers).status_code == 200
    # Taken back: the next request sees nothing.
    harness.call(harness.services.auth.access_table.take_back, CLIENT, token["client_id"], None)
    assert harness.client.get("/fhir/ImagingStudy", headers=headers).json()["total"] == 0


def test_what_was_shared_with_the_clients_organization(
    harness: Harness, catalog: dict[str, StudyFacts]
) -> None:
    study = by_patient(catalog)[("HOSP-A", "IS-1007")][0]
    member = backend_token(harness, organization_id="trauma-centre")
    stranger = backend_token(harness, organization_id="another-site")
    give(harness, ORGANIZATION, "trauma-centre", entry(harness, study))
    path = f"/fhir/ImagingStudy/{study.uid}"
    assert harness.client.get(path, headers=bearer(member)).status_code == 200
    assert harness.client.get(path, headers=bearer(stranger)).status_code == 404
    granted = harness.call(
        harness.services.auth.backend_access.organizations.granted, "trauma-centre"
    )
    assert [e.study for e in granted] == [study.uid]


def test_operators_see_every_patient(harness: Harness, catalog: dict[str, StudyFacts]) -> None:
    operator = bearer(backend_token(harness, operator=True))
    total = harness.client.get("/fhir/ImagingStudy?_count=0", headers=operator).json()["total"]
    assert total == len(catalog)


def test_only_backend_clients_are_operators(harness: Harness) -> None:
    with pytest.raises(RegistrationError):
        harness.call(
            harness.services.auth.clients.add,
            name="App",
            kind=ClientKind.public,
            redirect_uris=["https://app.example/cb"],
            operator=True,
        )
