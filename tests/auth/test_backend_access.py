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
from gateway.auth.clients import ClientKind
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
