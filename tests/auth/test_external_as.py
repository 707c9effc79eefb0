"""External authorization server mode: this gateway as Imaging Server for an EHR's SMART server.

A second ``gateway serve`` (real uvicorn, its own SQLite store and its own
archive) plays the EHR: its authorization server issues a patient's token, its
introspection endpoint answers for it, and its ``Patient/{id}`` carries the
identifier (system ``urn:oid:1.2.840.99999.1``, value ``IS-1005``) that this
gateway maps to IssuerOfPatientID ``HOSP-A`` (GATEWAY_IDENTIFIER_ISSUERS). The
patient then sees HOSP-A's IS-1005 here, never HOSP-B's patient with the same
PatientID. Revocation at the EHR shows once the cached answer ends (moved with
the checker's clock, so no test waits), and at once for a token not cached;
the EHR down is a 503 with Retry-After.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydicom import Dataset, dcmread
from pydicom.sequence import Sequence
from starlette.testclient import TestClient

from gateway.app import create_app
from gateway.auth.clients import ClientKind
from gateway.auth.service import AuthServices
from gateway.auth.tokens import s256
from gateway.dicomweb.file_store import FileStoreUpstream
from gateway.services import Services
from gateway.store.database import Database
from gateway.store.patients import PatientIndex
from tests.conftest import make_settings, migrate
from tests.support.catalog import StudyFacts, by_patient, read_catalog
from tests.support.gateway_process import GatewayProcess

pytestmark = pytest.mark.slow

SYSTEM = "urn:oid:1.2.840.99999.1"
EHR_ISSUER = "EHR-MPI"


def _ehr_copy(path: Path) -> Dataset:
    """A fixture instance as the EHR's archive holds it: its MPI as issuer, with an OID."""
    ds = dcmread(path)
    ds.IssuerOfPatientID = EHR_ISSUER
    qualifier = Dataset()
    qualifier.UniversalEntityID = SYSTEM.removeprefix("urn:oid:")
    qualifier.UniversalEntityIDType = "ISO"
    ds.IssuerOfPatientIDQualifiersSequence = Sequence([qualifier])
    return ds


class Ehr:
    """The EHR gateway's database, reached directly as an operator would (CLI-like)."""

    def __init__(self, process: GatewayProcess, database_url: str, data_dir: Path) -> None:
        self.process = process
        self.url = process.url
        self.database_url = database_url
        self.settings = make_settings(
            data_dir, database_url=database_url, public_url=process.url, auth_required=True
        )

    def run(self, action: Any) -> Any:
        async def go() -> Any:
            database = Database(self.database_url)
            auth = AuthServices.build(self.settings, database.sessions)
            try:
                return await action(auth, database)
            finally:
                await auth.aclose()
                await database.dispose()

        return asyncio.run(go())

    def imaging_server_client(self) -> tuple[str, str]:
        """The Imaging Server's credentials at the EHR (a confidential client)."""

        async def add(auth: AuthServices, database: Database) -> tuple[str, str]:
            created = await auth.clients.add(
                name="Imaging server",
                kind=ClientKind.symmetric,
                redirect_uris=["https://imaging.example/unused"],
            )
            return created.client.client_id, str(created.secret)

        return self.run(add)

    def patient_token(self, scope: str = "launch/patient patient/*.rs") -> dict[str, Any]:
        """A standalone patient launch's token, issued by the EHR over HTTP."""
        verifier = uuid.uuid4().hex * 2

        async def code(auth: AuthServices, database: Database) -> tuple[str, str, str]:
            patient = (await PatientIndex(database.sessions).ids_for([(EHR_ISSUER, "IS-1005")]))[
                (EHR_ISSUER, "IS-1005")
            ]
            app = await auth.clients.add(
                name="Patient app", kind=ClientKind.public, redirect_uris=["https://app.example/cb"]
            )
            made = await auth.tokens.create_code(
                client_id=app.client.client_id,
                account_id="ehr-patient-account",
                scope=scope.split(),
                context={"patient": patient, "fhirUser": f"{self.url}/fhir/Patient/{patient}"},
                redirect_uri="https://app.example/cb",
                code_challenge=s256(verifier),
                nonce=None,
            )
            return made, app.client.client_id, patient

        made, client_id, patient = self.run(code)
        response = httpx.post(
            f"{self.url}/oauth/token",
            data={
                "grant_type": "authorization_code",
                "code": made,
                "redirect_uri": "https://app.example/cb",
                "code_verifier": verifier,
                "client_id": client_id,
            },
        )
        assert response.status_code == 200, response.text
        token = response.json()
        assert token["patient"] == patient
        return token

    def revoke(self, token: dict[str, Any]) -> None:
        async def revoke(auth: AuthServices, database: Database) -> None:
            checked = await auth.tokens.check(token["access_token"])
            assert checked is not None
            await auth.tokens.revoke(token["access_token"], checked.client_id)

        self.run(revoke)


@pytest.fixture(scope="module")
def catalog(fixture_files: list[Path]) -> dict[str, StudyFacts]:
    return read_catalog(fixture_files)


@pytest.fixture(scope="module")
def ehr(tmp_path_factory: pytest.TempPathFactory, fixture_files: list[Path]) -> Iterator[Ehr]:
    workdir = tmp_path_factory.mktemp("ehr")
    data_dir = workdir / "var"
    chosen = [
        p
        for p in fixture_files
        if (ds := dcmread(p, stop_before_pixels=True)).PatientID == "IS-1005"
        and ds.get("IssuerOfPatientID") == "HOSP-A"
    ][:2]

    async def seed() -> None:
        store = FileStoreUpstream(data_dir / "dicom")
        result = await store.store_instances([_ehr_copy(p) for p in chosen])
        await store.aclose()
        assert not result.failed

    asyncio.run(seed())
    database_url = f"sqlite+aiosqlite:///{workdir / 'ehr.db'}"
    process = GatewayProcess(
        workdir,
        data_dir=str(data_dir),
        database_url=database_url,
        auth_required="true",
        release_delay_hours="0",
        access_token_seconds="60",
    )
    process.start()
    try:
        yield Ehr(process, database_url, data_dir)
    finally:
        process.stop()


@pytest.fixture(scope="module")
def imaging(
    tmp_path_factory: pytest.TempPathFactory, embedded_data_dir: Path, ehr: Ehr
) -> Iterator[tuple[TestClient, Services]]:
    client_id, secret = ehr.imaging_server_client()
    database = tmp_path_factory.mktemp("imaging") / "g.db"
    settings = make_settings(
        embedded_data_dir,
        database_url=f"sqlite+aiosqlite:///{database}",
        auth_required=True,
        public_url="https://imaging.example",
        external_as_issuer=ehr.url,
        external_as_introspection_url=f"{ehr.url}/oauth/introspect",
        external_as_authorization_url=f"{ehr.url}/oauth/authorize",
        external_as_token_url=f"{ehr.url}/oauth/token",
        external_as_fhir_url=f"{ehr.url}/fhir",
        external_as_client_id=client_id,
        external_as_client_secret=secret,
        external_as_cache_seconds=600,
        identifier_issuers={SYSTEM: "HOSP-A"},
    )
    migrate(settings)
    services = Services.build(settings)
    with TestClient(
        create_app(settings, services=services), base_url="https://imaging.example"
    ) as client:
        yield client, services


def _bearer(token: dict[str, Any]) -> dict[str, str]:
    return {"Authorization": f"Bearer {token['access_token']}"}


def _uids(bundle: dict[str, Any]) -> set[str]:
    return {e["resource"]["id"] for e in bundle.get("entry", []) if e["search"]["mode"] == "match"}


def test_an_ehr_patient_token_sees_the_mapped_patient_only(
    ehr: Ehr, imaging: tuple[TestClient, Services], catalog: dict[str, StudyFacts]
) -> None:
    client, _ = imaging
    token = ehr.patient_token()
    grouped = by_patient(catalog)
    mine = {s.uid for s in grouped[("HOSP-A", "IS-1005")]}
    namesake = grouped[("HOSP-B", "IS-1005")]

    # The app searches with the EHR's patient id, as the guide says.
    found = client.get(f"/fhir/ImagingStudy?patient={token['patient']}", headers=_bearer(token))
    assert found.status_code == 200, found.text[:300]
    assert _uids(found.json()) == mine
    everything = client.get("/fhir/ImagingStudy?_count=100", headers=_bearer(token))
    assert _uids(everything.json()) == mine
    for study in namesake:
        path = f"/dicomweb/studies/{study.uid}/metadata"
        assert client.get(path, headers=_bearer(token)).status_code == 404
    some = sorted(mine)[0]
    assert (
        client.get(f"/dicomweb/studies/{some}/metadata", headers=_bearer(token)).status_code == 200
    )


def test_discovery_names_the_external_server(
    ehr: Ehr, imaging: tuple[TestClient, Services]
) -> None:
    client, _ = imaging
    found = client.get("/fhir/.well-known/smart-configuration").json()
    assert found["issuer"] == ehr.url
    assert found["token_endpoint"] == f"{ehr.url}/oauth/token"
    assert found["authorization_endpoint"] == f"{ehr.url}/oauth/authorize"
    assert found["introspection_endpoint"] == f"{ehr.url}/oauth/introspect"


def test_an_inactive_token_is_401_with_the_challenge(imaging: tuple[TestClient, Services]) -> None:
    client, _ = imaging
    answer = client.get("/fhir/ImagingStudy", headers={"Authorization": "Bearer not-a-token"})
    assert answer.status_code == 401
    assert 'error="invalid_token"' in answer.headers["www-authenticate"]
    assert answer.headers["www-authenticate"].startswith("Bearer")


def test_revocation_at_the_ehr_shows_when_the_cached_answer_ends(
    ehr: Ehr, imaging: tuple[TestClient, Services]
) -> None:
    client, services = imaging
    checker = services.auth.external
    assert checker is not None
    cached, uncached = ehr.patient_token(), ehr.patient_token()
    assert client.get("/fhir/ImagingStudy", headers=_bearer(cached)).status_code == 200
    ehr.revoke(cached)
    ehr.revoke(uncached)
    # Not cached: the introspection says inactive, and that is the answer at once.
    assert client.get("/fhir/ImagingStudy", headers=_bearer(uncached)).status_code == 401
    # Cached: still honoured within the cache's time, then asked again and refused.
    assert client.get("/fhir/ImagingStudy", headers=_bearer(cached)).status_code == 200
    real = checker.clock
    try:
        checker.clock = lambda: real() + 601
        assert client.get("/fhir/ImagingStudy", headers=_bearer(cached)).status_code == 401
    finally:
        checker.clock = real


def test_the_cache_never_outlives_the_token(ehr: Ehr, imaging: tuple[TestClient, Services]) -> None:
    """Answers are kept 600 s, but the EHR's tokens live 60 s: past its exp, it is over."""
    client, services = imaging
    checker = services.auth.external
    assert checker is not None
    token = ehr.patient_token()
    assert client.get("/fhir/ImagingStudy", headers=_bearer(token)).status_code == 200
    assert token["expires_in"] == 60
    real = checker.clock
    try:
        checker.clock = lambda: real() + 61  # well within the 600 s the answer may be kept
        assert client.get("/fhir/ImagingStudy", headers=_bearer(token)).status_code == 401
    finally:
        checker.clock = real


def test_the_ehr_down_is_503_with_retry_after(
    ehr: Ehr, imaging: tuple[TestClient, Services]
) -> None:
    client, _ = imaging
    ehr.process.stop()
    try:
        for path in ("/fhir/ImagingStudy", "/dicomweb/studies"):
            answer = client.get(path, headers={"Authorization": "Bearer never-seen-before"})
            assert answer.status_code == 503, (path, answer.text[:200])
            assert int(answer.headers["retry-after"]) > 0
    finally:
        ehr.process.start()
