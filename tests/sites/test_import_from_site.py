"""``gateway import --from-site`` against a real sending gateway process: site B's backend
client imports exactly what site A sent it, under B's patient ID with A's kept in
OtherPatientIDsSequence; a wrong key and a withdrawn send are refused with the reason."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from joserfc.jwk import RSAKey
from pydicom import dcmread

from tests.sites.test_two_sites import _json, backend_token, cli
from tests.support.catalog import by_patient, read_catalog
from tests.support.gateway_process import GatewayProcess

pytestmark = pytest.mark.slow


def _import(site: GatewayProcess, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway", "import", *args],
        env=site.env,
        capture_output=True,
        text=True,
        timeout=180,
    )


def _stored(site: GatewayProcess) -> list[object]:
    folder = site.workdir / "var" / "dicom" / "studies"
    return [dcmread(p, stop_before_pixels=True) for p in folder.rglob("*") if p.is_file()]


def test_import_from_a_sending_site(
    tmp_path: Path, embedded_data_dir: Path, fixture_files: list[Path]
) -> None:
    catalog = by_patient(read_catalog(fixture_files))
    mine = catalog[("HOSP-A", "IS-1003")]
    sent, not_sent = [s.uid for s in mine[:2]], mine[2].uid
    instances = sum(s.instances for s in mine[:2])

    a_data = tmp_path / "a-data"
    shutil.copytree(embedded_data_dir / "dicom", a_data / "dicom")
    a = GatewayProcess(tmp_path / "a", data_dir=str(a_data), transfer_worker="false")
    b = GatewayProcess(tmp_path / "b")  # B's store is written by the command alone
    a.start()
    try:
        key = RSAKey.generate_key(2048, parameters={"kid": "site-b"})
        public, private = tmp_path / "b-jwks.json", tmp_path / "b-key.json"
        public.write_text(json.dumps({"keys": [key.as_dict(private=False)]}))
        private.write_text(json.dumps(key.as_dict(private=True)))
        added = _json(
            cli(a, "orgs", "add", "site-b", "--name", "Site B", "--jwks-file", str(public))
        )
        b_client = added["backend_clients"][0]
        admin = {"Authorization": f"Bearer {backend_token(a, 'admin/transfers')}"}
        created = httpx.post(
            f"{a.url}/admin/transfers",
            headers=admin,
            json={
                "identifier": {"system": "HOSP-A", "value": "IS-1003"},
                "organization": "site-b",
                "studies": sent,
                "days": 2,
                "reason": "referral",
            },
        )
        assert created.status_code == 201, created.text

        # Nothing is fetched with the wrong key.
        wrong = tmp_path / "wrong.json"
        wrong.write_text(json.dumps(RSAKey.generate_key(2048).as_dict(private=True)))

        def from_a(key_file: Path, *more: str) -> subprocess.CompletedProcess[str]:
            return _import(
                b, "--from-site", a.url, "--client", b_client, "--key", str(key_file), *more
            )

        refused = from_a(wrong, "--patient-id", "X")
        assert refused.returncode == 1
        assert "cannot import: the site refused the client (401" in refused.stdout + refused.stderr
        assert _stored(b) == []

        done = from_a(private, "--patient-id", "B-900", "--issuer", "SITE-B")
        output = done.stdout + done.stderr
        assert done.returncode == 0, output
        assert "Fetching" in output and "Importing" in output
        assert f"stored {instances} of {instances} files" in output
        stored = _stored(b)
        assert len(stored) == instances
        assert {str(ds.StudyInstanceUID) for ds in stored} == set(sent)  # not_sent stays at A
        assert not_sent not in {str(ds.StudyInstanceUID) for ds in stored}
        for ds in stored:
            assert (ds.PatientID, ds.IssuerOfPatientID) == ("B-900", "SITE-B")
            (other,) = ds.OtherPatientIDsSequence
            assert (other.PatientID, other.IssuerOfPatientID) == ("IS-1003", "HOSP-A")

        # Withdrawn at A: B's next import gets nothing, and says why.
        revoked = httpx.post(
            f"{a.url}/admin/transfers/{created.json()['id']}/revoke", headers=admin
        )
        assert revoked.status_code == 200
        again = from_a(private, "--patient-id", "B-900")
        assert again.returncode == 1
        assert "lets this client see no study" in again.stdout + again.stderr
        assert len(_stored(b)) == instances
    finally:
        a.stop()
