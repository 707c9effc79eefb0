"""The production topology, end to end: clients talk to nginx only, nginx round-robins
over two ``gateway serve`` replicas on one PostgreSQL database, and WADO-RS bytes
come from Orthanc through nginx (GATEWAY_OFFLOAD=nginx). tests/support/stack.py
starts it all from Debian packages on loopback; the token harness is an in-process
app on the same database and PACS, used only to enroll and register."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydicom import dcmread
from starlette.testclient import TestClient

from fixtures.generate import BENCH_PATIENT_ID
from gateway.app import create_app
from gateway.auth.clients import ClientKind
from gateway.services import Services
from tests.auth.test_authorize import (
    REDIRECT,
    approve,
    authorize_params,
    follow_to_consent,
    pkce,
    redeem,
)
from tests.auth.test_oauth_api import Harness, bearer
from tests.conftest import make_settings
from tests.support.stack import Stack, running_stack

pytestmark = [pytest.mark.slow, pytest.mark.orthanc, pytest.mark.postgres]
METADATA = {"Accept": "application/dicom+json"}
DICOM = {"Accept": 'multipart/related; type="application/dicom"'}


class Topology:
    def __init__(self, stack: Stack, harness: Harness, files: list[Path]) -> None:
        self.stack = stack
        self.harness = harness
        self.files = files
        self.nginx = httpx.Client(base_url=stack.url, timeout=60)
        self.replicas = [httpx.Client(base_url=url, timeout=60) for url in stack.replicas]

    def studies_of(self, patient_id: str) -> list[str]:
        return sorted(
            {
                str(ds.StudyInstanceUID)
                for p in self.files
                if (ds := dcmread(p, stop_before_pixels=True)).PatientID == patient_id
            }
        )


@pytest.fixture(scope="module")
def topology(
    tmp_path_factory: pytest.TempPathFactory, fixture_files: list[Path]
) -> Iterator[Topology]:
    workdir = tmp_path_factory.mktemp("topology")
    with running_stack(workdir / "stack", replicas=2, offload="nginx") as stack:
        http_base = stack.pacs_dicomweb_url.removesuffix("/dicom-web")
        with httpx.Client(timeout=60) as client:
            for path in fixture_files:
                client.post(f"{http_base}/instances", content=path.read_bytes()).raise_for_status()
        settings = make_settings(
            workdir,
            database_url=stack.database_url,
            dicomweb_url=stack.pacs_dicomweb_url,
            auth_required=True,
            public_url=stack.url,
        )
        services = Services.build(settings)
        with TestClient(create_app(settings, services=services), base_url=stack.url) as client:
            yield Topology(stack, Harness(client, services), fixture_files)


@pytest.fixture(scope="module")
def launched(topology: Topology) -> dict[str, Any]:
    """A standalone SMART launch made entirely through nginx: authorize, sign in
    (activating), consent, token; nginx spreads these requests over both replicas."""
    harness = topology.harness
    system = harness.backend_token("system/*.rs")
    found = harness.client.get(
        f"/fhir/Patient?identifier={BENCH_PATIENT_ID}", headers=bearer(system)
    ).json()
    fhir_id = str(found["entry"][0]["resource"]["id"])
    account = harness.call(
        harness.services.auth.accounts.enroll_patient, fhir_id, "1961-04-12", "Jane Doe"
    )
    app = harness.call(
        harness.services.auth.clients.add,
        name="Image Viewer",
        kind=ClientKind.public,
        redirect_uris=[REDIRECT],
    )
    client_id = str(app.client.client_id)
    through_nginx = Harness(topology.nginx, harness.services)  # type: ignore[arg-type]
    verifier, challenge = pkce()
    params = authorize_params(client_id, challenge, aud=f"{topology.stack.url}/fhir")
    consent = follow_to_consent(through_nginx, params, {"code": account.login})
    answer = approve(through_nginx, consent)
    assert answer["state"] == params["state"]
    token = redeem(through_nginx, answer["code"], verifier, client_id)
    assert token.status_code == 200, token.text
    return {
        **token.json(),
        "client_id": client_id,
        "fhir_id": fhir_id,
        "system": bearer(system),
    }


def test_the_launch_gives_the_patient_their_studies(
    topology: Topology, launched: dict[str, Any]
) -> None:
    assert launched["patient"] == launched["fhir_id"]
    headers = bearer(launched)
    own = topology.studies_of(BENCH_PATIENT_ID)
    for _ in range(4):  # round-robin: every replica answers at least once
        bundle = topology.nginx.get("/fhir/ImagingStudy", headers=headers)
        assert bundle.status_code == 200, bundle.text
        seen = {
            i["value"].removeprefix("urn:oid:")
            for e in bundle.json().get("entry", [])
            for i in e["resource"]["identifier"]
            if i["value"].startswith("urn:oid:")
        }
        assert seen and seen <= set(own)


def test_the_main_paths_answer_through_nginx(topology: Topology, launched: dict[str, Any]) -> None:
    headers = bearer(launched)
    nginx = topology.nginx
    bundle = nginx.get("/fhir/ImagingStudy", headers=headers).json()
    study_id = bundle["entry"][0]["resource"]["id"]
    read = nginx.get(f"/fhir/ImagingStudy/{study_id}", headers=headers)
    assert read.status_code == 200 and read.json()["id"] == study_id
    documents = nginx.get("/fhir/DocumentReference", headers=headers)
    assert documents.status_code == 200 and documents.json()["resourceType"] == "Bundle"
    qido = nginx.get("/dicomweb/studies", headers=headers)
    assert qido.status_code == 200, qido.text
    uids = [s["0020000D"]["Value"][0] for s in qido.json()]
    assert uids and set(uids) <= set(topology.studies_of(BENCH_PATIENT_ID))
    metadata = nginx.get(f"/dicomweb/studies/{uids[0]}/metadata", headers={**headers, **METADATA})
    assert metadata.status_code == 200 and metadata.json()
    # A series retrieval is decided by a replica and its bytes fetched by nginx; a full
    # study is assembled by the replica (records/full_study.py).
    series = nginx.get(f"/dicomweb/studies/{uids[0]}/series", headers={**headers, **METADATA})
    series_uid = series.json()[0]["0020000E"]["Value"][0]
    decided = topology.replicas[0].get(
        f"/dicomweb/studies/{uids[0]}/series/{series_uid}", headers={**headers, **DICOM}
    )
    assert decided.status_code == 200 and decided.headers["x-accel-redirect"]
    whole = topology.replicas[0].get(f"/dicomweb/studies/{uids[0]}", headers={**headers, **DICOM})
    assert whole.status_code == 200 and "x-accel-redirect" not in whole.headers
    retrieved = nginx.get(f"/dicomweb/studies/{uids[0]}", headers={**headers, **DICOM})
    assert retrieved.status_code == 200 and "x-accel-redirect" not in retrieved.headers
    assert retrieved.headers["content-type"].startswith("multipart/related")
    assert len(retrieved.content) > 1000
    signin = nginx.get("/portal/signin")
    assert signin.status_code == 200 and "csrf_token" in signin.text


def test_the_patient_cannot_reach_another_patients_studies(
    topology: Topology, launched: dict[str, Any]
) -> None:
    headers = bearer(launched)
    own = set(topology.studies_of(BENCH_PATIENT_ID))
    others = {
        str(ds.StudyInstanceUID)
        for p in topology.files
        if (ds := dcmread(p, stop_before_pixels=True)).PatientID != BENCH_PATIENT_ID
    } - own
    assert others
    system_bundle = topology.nginx.get("/fhir/ImagingStudy?_count=200", headers=launched["system"])
    foreign_ids = [
        e["resource"]["id"]
        for e in system_bundle.json()["entry"]
        if e["resource"]["subject"]["reference"] != f"Patient/{launched['fhir_id']}"
    ]
    assert foreign_ids
    for _ in range(2):  # on both replicas
        for study_id in foreign_ids[:3]:
            read = topology.nginx.get(f"/fhir/ImagingStudy/{study_id}", headers=headers)
            assert read.status_code in (403, 404), read.text
        for uid in sorted(others)[:3]:
            for path in (
                f"studies/{uid}/metadata",
                f"studies/{uid}",
                f"studies?StudyInstanceUID={uid}",
            ):
                accept = DICOM if path == f"studies/{uid}" else METADATA
                answer = topology.nginx.get(f"/dicomweb/{path}", headers={**headers, **accept})
                if path.startswith("studies?"):
                    assert answer.status_code in (200, 204) and uid not in answer.text
                else:
                    assert answer.status_code in (403, 404), (path, answer.status_code)
        searched = topology.nginx.get(
            "/fhir/ImagingStudy?patient=Patient/" + foreign_ids[0], headers=headers
        )
        assert searched.status_code in (200, 403)
        if searched.status_code == 200:
            assert not searched.json().get("entry")


def test_a_revocation_on_one_replica_holds_on_the_other(
    topology: Topology, launched: dict[str, Any]
) -> None:
    first, second = topology.replicas
    # A fresh token of the same launch, so the other tests keep theirs.
    refreshed = first.post(
        "/oauth/token",
        data={
            "grant_type": "refresh_token",
            "refresh_token": launched["refresh_token"],
            "client_id": launched["client_id"],
        },
    )
    assert refreshed.status_code == 200, refreshed.text
    token = refreshed.json()["access_token"]
    headers = {"Authorization": f"Bearer {token}"}
    assert second.get("/fhir/ImagingStudy", headers=headers).status_code == 200
    assert first.get("/fhir/ImagingStudy", headers=headers).status_code == 200
    revoked = first.post("/oauth/revoke", data={"token": token, "client_id": launched["client_id"]})
    assert revoked.status_code == 200
    assert second.get("/fhir/ImagingStudy", headers=headers).status_code == 401
    assert first.get("/fhir/ImagingStudy", headers=headers).status_code == 401
    for _ in range(2):
        assert topology.nginx.get("/fhir/ImagingStudy", headers=headers).status_code == 401
