"""Two gateways on loopback, each with its own store and database (real uvicorn processes).

A patient's studies at site A are sent (by staff, for the patient, with the reason) to
site B: B's backend client pulls exactly those from A and nothing else; A pushes them to
B's STOW-RS endpoint through B being down and A being killed and started again; B imports
a share link from A with the local patient ID; and the patient's revocation at A stops
B's client at its next request.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
from joserfc import jwt
from joserfc.jwk import RSAKey
from pydicom import dcmread

from gateway.auth.client_auth import JWT_BEARER
from gateway.portal.shares import ShareService
from gateway.store.database import Database
from gateway.store.patients import PatientIndex
from tests.support.catalog import by_patient, read_catalog
from tests.support.gateway_process import GatewayProcess

pytestmark = pytest.mark.slow
DICOM_JSON = {"Accept": "application/dicom+json"}


def cli(site: GatewayProcess, *args: str, env: dict[str, str] | None = None) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "gateway", *args],
        env={**site.env, **(env or {})},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout + done.stderr


def backend_token(site: GatewayProcess, scope: str) -> str:
    """A backend (operator) client's token, issued by hand at ``site``."""
    created = _json(
        cli(
            site,
            "clients",
            "add",
            "--name",
            "ops",
            "--type",
            "backend",
            "--operator",
            "--jwks-url",
            "https://ops.example/jwks",
            "--scope",
            scope,
        )
    )
    issued = _json(cli(site, "tokens", "issue", "--client", created["client_id"], "--scope", scope))
    return str(issued["access_token"])


def _json(output: str) -> Any:
    return json.loads(output[output.index("{") : output.rindex("}") + 1])


def pull_token(site: GatewayProcess, client_id: str, key: RSAKey) -> str:
    token_url = f"{site.url}/oauth/token"
    assertion = jwt.encode(
        {"alg": "RS384", "kid": key.kid, "typ": "JWT"},
        {
            "iss": client_id,
            "sub": client_id,
            "aud": token_url,
            "exp": int(time.time()) + 240,
            "jti": uuid.uuid4().hex,
        },
        key,
        algorithms=["RS384"],
    )
    answer = httpx.post(
        token_url,
        data={
            "grant_type": "client_credentials",
            "scope": "system/ImagingStudy.rs system/DocumentReference.rs",
            "client_assertion_type": JWT_BEARER,
            "client_assertion": assertion,
        },
    )
    assert answer.status_code == 200, answer.text
    return str(answer.json()["access_token"])


def wait_for(check, what: str, seconds: float = 60):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}")


def jobs(site: GatewayProcess) -> list[dict[str, Any]]:
    output = cli(site, "transfers", "list", "--json")
    return json.loads(output[output.index("[") : output.rindex("]") + 1])


def test_site_a_sends_to_site_b(
    tmp_path: Path, embedded_data_dir: Path, fixture_files: list[Path]
) -> None:
    catalog = by_patient(read_catalog(fixture_files))
    mine = catalog[("HOSP-A", "IS-1003")]
    sent, not_sent = [s.uid for s in mine[:2]], mine[2].uid
    other_patient_study = catalog[("HOSP-A", "IS-1004")][0].uid
    instances = sum(s.instances for s in mine[:2])

    a_data = tmp_path / "a-data"
    shutil.copytree(embedded_data_dir / "dicom", a_data / "dicom")
    fast = {
        "transfer_poll_seconds": "0.3",
        "transfer_backoff_seconds": "0.5",
        "transfer_backoff_max_seconds": "1",
        "transfer_batch": "3",
        "transfer_lease_seconds": "5",
    }
    a = GatewayProcess(tmp_path / "a", data_dir=str(a_data), **fast)
    b = GatewayProcess(tmp_path / "b")
    b.start()
    a.start()
    try:
        # B lets A store into it with a bearer token; A records B: its pulling client's
        # public keys, and its STOW-RS endpoint with that token (sealed at A).
        b_token = backend_token(b, "system/*.cruds")
        key = RSAKey.generate_key(2048, parameters={"kid": "site-b"})
        jwks = tmp_path / "b-jwks.json"
        jwks.write_text(json.dumps({"keys": [key.as_dict(private=False)]}))
        added = _json(
            cli(
                a,
                "orgs",
                "add",
                "site-b",
                "--name",
                "Site B Trauma Centre",
                "--identifier",
                "urn:oid:1.2.3|B",
                "--jwks-file",
                str(jwks),
                "--stow-url",
                f"{b.url}/dicomweb",
                "--bearer-env",
                "B_TOKEN",
                env={"B_TOKEN": b_token},
            )
        )
        b_client = added["backend_clients"][0]
        assert b_token not in cli(a, "orgs", "list", "--json")
        assert b_token not in (tmp_path / "a" / "gateway.db").read_bytes().decode("latin-1")

        # Staff at A send two studies for the patient, with the reason.
        admin = backend_token(a, "admin/transfers")
        created = httpx.post(
            f"{a.url}/admin/transfers",
            headers={"Authorization": f"Bearer {admin}"},
            json={
                "identifier": {"system": "HOSP-A", "value": "IS-1003"},
                "organization": "site-b",
                "studies": sent,
                "days": 7,
                "reason": "trauma transfer",
            },
        )
        assert created.status_code == 201, created.text
        send = created.json()

        # Pull: B's client sees exactly the two studies, nothing else.
        pull = {"Authorization": f"Bearer {pull_token(a, b_client, key)}"}
        found = httpx.get(f"{a.url}/dicomweb/studies", headers={**pull, **DICOM_JSON})
        assert {s["0020000D"]["Value"][0] for s in found.json()} == set(sent)
        fhir = httpx.get(f"{a.url}/fhir/ImagingStudy", headers=pull).json()
        assert {e["resource"]["id"] for e in fhir.get("entry", [])} == set(sent)
        for uid in sent:
            read = httpx.get(f"{a.url}/dicomweb/studies/{uid}/metadata", headers=pull)
            assert read.status_code == 200, (read.text[:300], read.headers)
        for probe in (not_sent, other_patient_study):
            assert (
                httpx.get(f"{a.url}/dicomweb/studies/{probe}/metadata", headers=pull).status_code
                == 404
            )
            assert httpx.get(f"{a.url}/fhir/ImagingStudy/{probe}", headers=pull).status_code == 404

        # Push: delivered to B's archive.
        done = wait_for(lambda: [j for j in jobs(a) if j["status"] == "done"], "the first push")
        assert done[0]["sent"] == done[0]["total"] == instances
        b_ops = {"Authorization": f"Bearer {b_token}", **DICOM_JSON}
        at_b = httpx.get(f"{b.url}/dicomweb/studies?PatientID=IS-1003", headers=b_ops).json()
        assert {s["0020000D"]["Value"][0] for s in at_b} == set(sent)

        # B down for a while, and A killed and started again: the push still arrives.
        b.stop()
        again = httpx.post(
            f"{a.url}/admin/transfers",
            headers={"Authorization": f"Bearer {admin}"},
            json={
                "identifier": {"system": "HOSP-A", "value": "IS-1003"},
                "organization": "site-b",
                "studies": [not_sent],
                "days": 1,
                "reason": "the third study too",
            },
        )
        assert again.status_code == 201
        wait_for(
            lambda: [j for j in jobs(a) if j["status"] == "queued" and j["tries"] >= 1],
            "a failed try while B is down",
        )
        a.kill()
        b.start()
        a.start()
        third = wait_for(
            lambda: [
                j
                for j in jobs(a)
                if j["studies"] == [not_sent] and j["status"] not in ("queued", "running")
            ],
            "the second push",
        )
        assert third[0]["status"] == "done" and third[0]["sent"] == third[0]["total"] > 0
        at_b = httpx.get(f"{b.url}/dicomweb/studies?PatientID=IS-1003", headers=b_ops).json()
        assert {s["0020000D"]["Value"][0] for s in at_b} == {*sent, not_sent}

        # B imports a share link from A, under its own patient ID.
        async def share() -> tuple[str, str]:
            database = Database(a.env["GATEWAY_DATABASE_URL"])
            fhir_id = (await PatientIndex(database.sessions).ids_for([("HOSP-A", "IS-1004")]))[
                ("HOSP-A", "IS-1004")
            ]
            service = ShareService(database.sessions, public_url=a.url, default_days=7, max_days=90)
            created = await service.create(
                account_id="acct", patient_fhir_id=fhir_id, studies=[other_patient_study], days=1
            )
            await database.dispose()
            return service.link(created.token), created.pin

        link, pin = asyncio.run(share())
        output = cli(
            b,
            "import",
            "--share",
            link,
            "--pin",
            pin,
            "--patient-id",
            "B-777",
            "--issuer",
            "SITE-B",
        )
        assert "Fetching" in output and "Importing" in output
        assert "patient ID reconciled to B-777" in output
        stored = [
            dcmread(p, stop_before_pixels=True)
            for p in (b.workdir / "var" / "dicom" / "studies").rglob("*")
            if p.is_file()
        ]
        mine_at_b = [ds for ds in stored if ds.get("PatientID") == "B-777"]
        assert mine_at_b and all(
            str(ds.StudyInstanceUID) == other_patient_study for ds in mine_at_b
        )
        other = mine_at_b[0].OtherPatientIDsSequence[0]
        assert (other.PatientID, other.IssuerOfPatientID) == ("IS-1004", "HOSP-A")
        assert mine_at_b[0].IssuerOfPatientID == "SITE-B"

        # Revocation: B's client is refused at its next request.
        revoked = httpx.post(
            f"{a.url}/admin/transfers/{send['id']}/revoke",
            headers={"Authorization": f"Bearer {admin}"},
        )
        assert revoked.status_code == 200
        assert (
            httpx.get(f"{a.url}/dicomweb/studies/{sent[0]}/metadata", headers=pull).status_code
            == 404
        )
        # The patient's trail holds every transfer, and the Consent says who and why.
        consent = httpx.get(
            f"{a.url}/fhir/Consent/org-{send['id']}",
            headers={"Authorization": f"Bearer {backend_token(a, 'system/*.rs')}"},
        )
        assert consent.status_code == 200 and consent.json()["status"] == "inactive"
        assert "trauma transfer" in json.dumps(consent.json())
    finally:
        a.stop()
        b.stop()
