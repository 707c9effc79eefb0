"""The authorization server and the token gate over HTTP (in-process), on the embedded store."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fhir.resources.R4B.capabilitystatement import CapabilityStatement
from joserfc import jwt
from joserfc.jwk import ECKey, RSAKey
from pydicom import dcmread
from starlette.testclient import TestClient

from fixtures.generate import BENCH_PATIENT_ID
from gateway.app import create_app
from gateway.auth.client_auth import JWT_BEARER
from gateway.auth.clients import ClientKind
from gateway.auth.tokens import s256
from gateway.services import Services
from tests.conftest import make_settings, migrate
from tests.support.catalog import StudyFacts, read_catalog

FORM = {"Content-Type": "application/x-www-form-urlencoded"}


class Harness:
    def __init__(self, client: TestClient, services: Services) -> None:
        self.client = client
        self.services = services
        self.settings = services.settings

    def call(self, function: Any, *args: Any, **kwargs: Any) -> Any:
        async def run() -> Any:
            return await function(*args, **kwargs)

        return self.client.portal.call(run)  # type: ignore[union-attr]

    @property
    def token_url(self) -> str:
        return f"{self.settings.public_url}/oauth/token"

    def backend_client(
        self, alg: str = "RS384", scope: str = "system/*.rs", operator: bool = True
    ) -> tuple[str, Any]:
        """A backend client; an operator (system/ scopes reach every patient) unless told."""
        key = (
            RSAKey.generate_key(2048, parameters={"kid": f"k-{uuid.uuid4().hex[:6]}"})
            if alg == "RS384"
            else ECKey.generate_key("P-384", parameters={"kid": f"k-{uuid.uuid4().hex[:6]}"})
        )
        created = self.call(
            self.services.auth.clients.add,
            name="Hospital system",
            kind=ClientKind.backend,
            jwks={"keys": [key.as_dict(private=False)]},
            scope=scope,
            operator=operator,
        )
        return created.client.client_id, key

    def assertion(self, client_id: str, key: Any, alg: str = "RS384", **claims: Any) -> str:
        body = {
            "iss": client_id,
            "sub": client_id,
            "aud": self.token_url,
            "exp": int(time.time()) + 240,
            "jti": uuid.uuid4().hex,
            **claims,
        }
        return jwt.encode({"alg": alg, "kid": key.kid, "typ": "JWT"}, body, key, algorithms=[alg])

    def backend_token(self, scope: str = "system/*.rs", alg: str = "RS384") -> dict[str, Any]:
        client_id, key = self.backend_client(alg, scope)
        response = self.client.post(
            "/oauth/token",
            data={
                "grant_type": "client_credentials",
                "scope": scope,
                "client_assertion_type": JWT_BEARER,
                "client_assertion": self.assertion(client_id, key, alg),
            },
        )
        assert response.status_code == 200, response.text
        return {**response.json(), "client_id": client_id, "key": key}

    def patient_token(self, patient_fhir_id: str, scope: str) -> dict[str, Any]:
        """A token as a standalone patient launch ends (the code issued directly)."""
        context = {
            "patient": patient_fhir_id,
            "fhirUser": f"{self.settings.fhir_base_url}/Patient/{patient_fhir_id}",
        }
        return self.code_token(scope, context, "patient-account")

    def code_token(self, scope: str, context: dict[str, Any], account_id: str) -> dict[str, Any]:
        """The token of a code created directly (no pages), for any account and context."""
        created = self.call(
            self.services.auth.clients.add,
            name="Patient app",
            kind=ClientKind.public,
            redirect_uris=["https://app.example/cb"],
        )
        verifier = uuid.uuid4().hex * 2
        code = self.call(
            self.services.auth.tokens.create_code,
            client_id=created.client.client_id,
            account_id=account_id,
            scope=scope.split(),
            context=context,
            redirect_uri="https://app.example/cb",
            code_challenge=s256(verifier),
            nonce=None,
        )
        response = self.client.post(
            "/oauth/token",
            data={
                "grant_type": "authorization_code",
                "code": code,
                "redirect_uri": "https://app.example/cb",
                "code_verifier": verifier,
                "client_id": created.client.client_id,
            },
        )
        assert response.status_code == 200, response.text
        return {**response.json(), "client_id": created.client.client_id}

    def practitioner_token(self, scope: str = "openid fhirUser user/*.rs") -> dict[str, Any]:
        """A physician's token: a new Practitioner account, its fhirUser in the context."""
        doctor = self.call(
            self.services.auth.accounts.add_practitioner,
            f"dr.{uuid.uuid4().hex[:8]}",
            "House^Gregory",
            "a long password here",
        )
        fhir_user = f"{self.settings.fhir_base_url}/Practitioner/{doctor.id}"
        return self.code_token(scope, {"fhirUser": fhir_user}, doctor.id)


@pytest.fixture(scope="module")
def harness(tmp_path_factory: pytest.TempPathFactory, embedded_data_dir: Path) -> Iterator[Harness]:
    database = tmp_path_factory.mktemp("oauth") / "g.db"
    settings = make_settings(
        embedded_data_dir,
        database_url=f"sqlite+aiosqlite:///{database}",
        auth_required=True,
        public_url="https://gateway.example",
    )
    migrate(settings)
    services = Services.build(settings)
    with TestClient(
        create_app(settings, services=services), base_url="https://gateway.example"
    ) as client:
        yield Harness(client, services)


@pytest.fixture(scope="module")
def catalog(fixture_files: list[Path]) -> dict[str, StudyFacts]:
    return read_catalog(fixture_files)


def bearer(token: dict[str, Any]) -> dict[str, str]:
    return {"Authorization": f"Bearer {token['access_token']}"}


# -- discovery ------------------------------------------------------------------


def test_smart_configuration(harness: Harness) -> None:
    response = harness.client.get(
        "/fhir/.well-known/smart-configuration", headers={"Accept": "text/html"}
    )
    assert response.status_code == 200
    config = response.json()
    base = "https://gateway.example"
    assert config["authorization_endpoint"] == f"{base}/oauth/authorize"
    assert config["token_endpoint"] == f"{base}/oauth/token"
    assert config["code_challenge_methods_supported"] == ["S256"]
    assert {"authorization_code", "client_credentials"} <= set(config["grant_types_supported"])
    assert {"client_secret_basic", "private_key_jwt"} <= set(
        config["token_endpoint_auth_methods_supported"]
    )
    assert set(config["token_endpoint_auth_signing_alg_values_supported"]) == {"RS384", "ES384"}
    for capability in ("launch-ehr", "launch-standalone", "permission-v2", "authorize-post"):
        assert capability in config["capabilities"]
    for name in ("introspection_endpoint", "revocation_endpoint", "registration_endpoint"):
        assert config[name].startswith(f"{base}/oauth/")
    # Built from the configured URL, never from the request's Host.
    spoofed = harness.client.get(
        "/fhir/.well-known/smart-configuration", headers={"Host": "evil.example"}
    )
    assert "evil" not in spoofed.text


def test_openid_configuration_and_jwks(harness: Harness) -> None:
    config = harness.client.get("/.well-known/openid-configuration").json()
    assert config["issuer"] == "https://gateway.example"
    assert config["id_token_signing_alg_values_supported"] == ["RS256"]
    assert config["subject_types_supported"] == ["public"]
    keys = harness.client.get("/oauth/jwks").json()["keys"]
    assert keys and all(k["kid"] and "d" not in k for k in keys)


def test_metadata_is_open_and_names_the_oauth_uris(harness: Harness) -> None:
    statement = harness.client.get("/fhir/metadata").json()
    CapabilityStatement.model_validate(statement)
    security = statement["rest"][0]["security"]
    assert security["service"][0]["coding"][0]["code"] == "SMART-on-FHIR"
    uris = {e["url"]: e["valueUri"] for e in security["extension"][0]["extension"]}
    config = harness.client.get("/fhir/.well-known/smart-configuration").json()
    assert uris["authorize"] == config["authorization_endpoint"]
    assert uris["token"] == config["token_endpoint"]
    assert uris["introspect"] == config["introspection_endpoint"]


def test_cors_preflight(harness: Harness) -> None:
    response = harness.client.options(
        "/fhir/ImagingStudy",
        headers={
            "Origin": "https://app.example",
            "Access-Control-Request-Method": "GET",
            "Access-Control-Request-Headers": "Authorization",
        },
    )
    assert response.status_code == 200
    assert response.headers["access-control-allow-origin"] in ("*", "https://app.example")
    plain = harness.client.get(
        "/fhir/.well-known/smart-configuration", headers={"Origin": "https://app.example"}
    )
    assert "access-control-allow-origin" in plain.headers


# -- the token gate -------------------------------------------------------------------


@pytest.mark.parametrize(
    "path", ["/fhir/ImagingStudy", "/fhir/Patient", "/fhir/DocumentReference", "/dicomweb/studies"]
)
def test_no_token_is_exactly_401(harness: Harness, path: str) -> None:
    response = harness.client.get(path)
    assert response.status_code == 401
    assert response.headers["www-authenticate"].startswith("Bearer")
    wrong = harness.client.get(path, headers={"Authorization": "Bearer not-a-token"})
    assert wrong.status_code == 401
    assert 'error="invalid_token"' in wrong.headers["www-authenticate"]


@pytest.mark.parametrize("alg", ["RS384", "ES384"])
def test_backend_services_flow(harness: Harness, alg: str) -> None:
    token = harness.backend_token("system/ImagingStudy.rs", alg)
    assert token["token_type"] == "Bearer" and token["expires_in"] <= 300
    assert token["scope"] == "system/ImagingStudy.rs"
    assert "refresh_token" not in token
    studies = harness.client.get("/fhir/ImagingStudy?_count=1", headers=bearer(token))
    assert studies.status_code == 200 and studies.json()["total"] > 1
    assert harness.client.get("/dicomweb/studies?limit=1", headers=bearer(token)).status_code == 200
    # Scopes it does not hold: 403 OperationOutcome (FHIR) or 403 text (DICOMweb).
    documents = harness.client.get("/fhir/DocumentReference", headers=bearer(token))
    assert documents.status_code == 403
    assert documents.json()["resourceType"] == "OperationOutcome"
    store = harness.client.post(
        "/dicomweb/studies",
        headers={**bearer(token), "Content-Type": 'multipart/related; type="application/dicom"'},
        content=b"",
    )
    assert store.status_code == 403


def test_backend_refusals(harness: Harness) -> None:
    client_id, key = harness.backend_client()
    base = {"client_assertion_type": JWT_BEARER, "scope": "system/*.rs"}

    def ask(**form: str) -> Any:
        return harness.client.post("/oauth/token", data={**base, **form})

    # N14: an unknown grant type is exactly 400 unsupported_grant_type.
    unknown = ask(grant_type="not_a_grant_type", client_assertion=harness.assertion(client_id, key))
    assert unknown.status_code == 400 and unknown.json()["error"] == "unsupported_grant_type"
    # N15, N16 and the rest: 401 invalid_client.
    refused = [
        ask(
            grant_type="client_credentials",
            client_assertion_type="not_an_assertion_type",
            client_assertion=harness.assertion(client_id, key),
        ),
        ask(
            grant_type="client_credentials",
            client_assertion=harness.assertion(client_id, key, iss="not_a_valid_iss"),
        ),
        ask(
            grant_type="client_credentials",
            client_assertion=harness.assertion(client_id, key, aud="https://elsewhere/token"),
        ),
    ]
    replayed = harness.assertion(client_id, key)
    assert ask(grant_type="client_credentials", client_assertion=replayed).status_code == 200
    refused.append(ask(grant_type="client_credentials", client_assertion=replayed))
    for response in refused:
        assert response.status_code == 401, response.text
        assert response.json()["error"] == "invalid_client"
        assert response.headers["cache-control"] == "no-store"
    wider = ask(
        grant_type="client_credentials",
        client_assertion=harness.assertion(client_id, key),
        scope="system/ImagingStudy.c",
    )
    assert wider.status_code == 400 and wider.json()["error"] == "invalid_scope"


def test_introspection_and_revocation(harness: Harness) -> None:
    token = harness.backend_token("system/*.rs")
    client_id, key = token["client_id"], token["key"]

    def assertion_form(**extra: str) -> dict[str, str]:
        return {
            "client_assertion_type": JWT_BEARER,
            "client_assertion": harness.assertion(client_id, key),
            **extra,
        }

    active = harness.client.post(
        "/oauth/introspect", data=assertion_form(token=token["access_token"])
    ).json()
    assert active["active"] is True and active["client_id"] == client_id
    assert active["scope"] == token["scope"] and isinstance(active["exp"], int)
    # N13: an unknown token is exactly {"active": false}.
    inactive = harness.client.post(
        "/oauth/introspect", data={"token": "invalid_token_value"}, headers=bearer(token)
    )
    assert inactive.status_code == 200 and inactive.json() == {"active": False}
    assert harness.client.post("/oauth/introspect", data={"token": "x"}).status_code == 401
    revoked = harness.client.post("/oauth/revoke", data=assertion_form(token=token["access_token"]))
    assert revoked.status_code == 200
    # N11: the revoked token no longer opens anything.
    assert harness.client.get("/fhir/ImagingStudy", headers=bearer(token)).status_code == 401
    again = harness.client.post("/oauth/revoke", data=assertion_form(token="never-issued"))
    assert again.status_code == 200


def test_registration(harness: Harness) -> None:
    answer = harness.client.post(
        "/oauth/register",
        json={"client_name": "My viewer", "redirect_uris": ["https://viewer.example/cb"]},
    )
    assert answer.status_code == 201
    body = answer.json()
    assert body["client_id"] and body["token_endpoint_auth_method"] == "none"
    assert "client_secret" not in body
    confidential = harness.client.post(
        "/oauth/register",
        json={
            "redirect_uris": ["https://v.example/cb"],
            "token_endpoint_auth_method": "client_secret_basic",
        },
    )
    assert confidential.status_code == 400
    assert harness.client.post("/oauth/register", content=b"{").status_code == 400
    no_uri = harness.client.post("/oauth/register", json={"client_name": "x"})
    assert no_uri.status_code == 400 and no_uri.json()["error"] == "invalid_redirect_uri"


def test_granular_scopes_filter_searches_and_reads(
    harness: Harness, fixture_files: list[Path]
) -> None:
    system = harness.backend_token("system/*.rs")
    found = harness.client.get(
        f"/fhir/Patient?identifier={BENCH_PATIENT_ID}", headers=bearer(system)
    ).json()
    patient_id = found["entry"][0]["resource"]["id"]
    reports, manifests = set(), set()
    for path in fixture_files:
        ds = dcmread(path, stop_before_pixels=True)
        if (ds.get("IssuerOfPatientID"), ds.PatientID) != ("HOSP-A", BENCH_PATIENT_ID):
            continue
        if ds.Modality == "KO":
            manifests.add(str(ds.SOPInstanceUID))
        elif ds.Modality in ("SR", "DOC"):
            reports.add(str(ds.SOPInstanceUID))
    assert reports and manifests
    granular = "patient/DocumentReference.rs?type=http://loinc.org|18748-4"
    token = harness.patient_token(
        patient_id, f"launch/patient {granular} patient/ImagingStudy.rs?modality=CT"
    )
    # N18: the grant comes back exactly as asked, never widened.
    assert granular in token["scope"].split()
    assert "patient/DocumentReference.rs" not in token["scope"].split()
    # N17: searches return only what the filter allows, whatever the client asks.
    listed = harness.client.get("/fhir/DocumentReference?_count=100", headers=bearer(token)).json()
    assert {e["resource"]["id"] for e in listed["entry"]} == reports
    asked = harness.client.get("/fhir/DocumentReference?type=113030", headers=bearer(token)).json()
    assert asked["total"] == 0
    # ... and reads outside it are refused.
    manifest = next(iter(manifests))
    assert (
        harness.client.get(f"/fhir/DocumentReference/{manifest}", headers=bearer(token)).status_code
        == 403
    )
    assert harness.client.get(f"/fhir/Binary/{manifest}", headers=bearer(token)).status_code == 403
    report = next(iter(reports))
    assert (
        harness.client.get(f"/fhir/DocumentReference/{report}", headers=bearer(token)).status_code
        == 200
    )
    studies = harness.client.get("/fhir/ImagingStudy?_count=100", headers=bearer(token)).json()
    assert studies["total"] >= 1
    assert all(any(m["code"] == "CT" for m in e["resource"]["modality"]) for e in studies["entry"])
    # A filter DICOMweb cannot express is refused rather than ignored.
    assert harness.client.get("/dicomweb/studies", headers=bearer(token)).status_code == 403
