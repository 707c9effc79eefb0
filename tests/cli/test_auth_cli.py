"""`gateway clients | patients | users | keys | launch`, in-process."""

from __future__ import annotations

import json
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from joserfc.jwk import RSAKey
from typer.testing import CliRunner

from gateway.cli import app
from tests.cli.test_cli import data_dir as data_dir

runner = CliRunner()


def run(*args: str, stdin: str | None = None) -> dict | list | str:
    result = runner.invoke(app, list(args), input=stdin)
    assert result.exit_code == 0, result.output
    text = result.stdout.strip()
    return json.loads(text) if text.startswith(("{", "[")) else text


def test_clients_add_list_remove(data_dir: Path, tmp_path: Path) -> None:
    assert runner.invoke(app, ["db", "upgrade"]).exit_code == 0
    public = run(
        "clients",
        "add",
        "--name",
        "Viewer",
        "--type",
        "public",
        "--redirect-uri",
        "https://viewer.example/cb",
        "--launch-uri",
        "https://viewer.example/launch",
    )
    assert public["client_id"] and "client_secret" not in public
    symmetric = run(
        "clients",
        "add",
        "--name",
        "Portal",
        "--type",
        "confidential-symmetric",
        "--redirect-uri",
        "https://portal.example/cb",
    )
    assert len(symmetric["client_secret"]) >= 32
    key = RSAKey.generate_key(2048, parameters={"kid": "k1"})
    jwks_file = tmp_path / "jwks.json"
    jwks_file.write_text(json.dumps({"keys": [key.as_dict(private=False)]}))
    backend = run(
        "clients",
        "add",
        "--name",
        "EHR",
        "--type",
        "backend",
        "--jwks-file",
        str(jwks_file),
        "--scope",
        "system/*.rs",
        "--ehr",
    )
    assert backend["token_endpoint_auth_method"] == "private_key_jwt" and backend["ehr"]
    issued = run(
        "tokens", "issue", "--client", backend["client_id"], "--scope", "system/ImagingStudy.rs"
    )
    assert issued["access_token"] and issued["scope"] == "system/ImagingStudy.rs"
    assert issued["expires_in"] <= 300
    wider = runner.invoke(
        app, ["tokens", "issue", "--client", backend["client_id"], "--scope", "system/*.cruds"]
    )
    assert wider.exit_code == 2 and "do not include" in wider.output
    listed = run("clients", "list", "--json")
    assert {c["client_name"] for c in listed} == {"Viewer", "Portal", "EHR"}
    assert symmetric["client_secret"] not in json.dumps(listed)
    assert all("client_secret" not in c for c in listed)
    table = runner.invoke(app, ["clients", "list"])
    assert table.exit_code == 0 and "Viewer" in table.stdout
    refused = runner.invoke(app, ["clients", "add", "--name", "X", "--type", "public"])
    assert refused.exit_code == 2 and "redirect URI" in refused.output
    assert runner.invoke(app, ["clients", "remove", symmetric["client_id"]]).exit_code == 0
    assert runner.invoke(app, ["clients", "remove", symmetric["client_id"]]).exit_code == 1
    url = run("launch", "--client", public["client_id"], "--patient", "abc123")
    query = parse_qs(urlsplit(url).query)
    assert url.startswith("https://viewer.example/launch?")
    assert query["iss"] == ["http://127.0.0.1:8080/fhir"] and query["launch"][0]


def test_patients_users_and_keys(data_dir: Path) -> None:
    assert runner.invoke(app, ["db", "upgrade"]).exit_code == 0
    enrolled = run(
        "patients",
        "enroll",
        "--patient-id",
        "IS-1001",
        "--issuer",
        "HOSP-A",
        "--birth-date",
        "1961-04-12",
    )
    assert len(enrolled["access_code"]) == 8 and enrolled["access_code"].isdigit()
    again = run(
        "patients",
        "enroll",
        "--patient-id",
        "IS-1001",
        "--issuer",
        "HOSP-A",
        "--birth-date",
        "1961-04-12",
    )
    assert (
        again["patient"] == enrolled["patient"] and again["access_code"] != enrolled["access_code"]
    )
    bad_date = runner.invoke(
        app, ["patients", "enroll", "--patient-id", "X", "--birth-date", "12/04/1961"]
    )
    assert bad_date.exit_code == 2
    user = run(
        "users",
        "add",
        "--username",
        "dr.house",
        "--name",
        "House^Gregory",
        "--password-stdin",
        stdin="a good long password\n",
    )
    assert "/fhir/Practitioner/" in user["fhirUser"]
    short = runner.invoke(
        app,
        ["users", "add", "--username", "dr.x", "--name", "X^Y", "--password-stdin"],
        input="short\n",
    )
    assert short.exit_code == 2 and "at least" in short.output
    released = runner.invoke(app, ["studies", "release", "1.2.3.4", "--by", "dr.house"])
    assert released.exit_code == 0 and "released 1.2.3.4" in released.output
    again = runner.invoke(app, ["studies", "release", "1.2.3.4"])
    assert again.exit_code == 0 and "already" in again.output
    assert runner.invoke(app, ["studies", "release", "not-a-uid"]).exit_code == 2
    first = run("keys", "rotate")["kid"]
    second = run("keys", "rotate")["kid"]
    assert first != second


def test_clients_access_add_list_remove(
    data_dir: Path, tmp_path: Path, fixture_files: list[Path]
) -> None:
    """A backend client's pre-authorized access, by hand (SMART Imaging Access backend mode)."""
    import asyncio

    from pydicom import dcmread

    from gateway.dicomweb.file_store import FileStoreUpstream

    chosen = {
        (str(ds.PatientID), str(ds.StudyInstanceUID)): path
        for path in fixture_files
        if (ds := dcmread(path, stop_before_pixels=True)).PatientID in ("IS-1001", "IS-1002")
    }
    study = sorted(uid for patient, uid in chosen if patient == "IS-1002")[0]

    async def seed() -> None:
        store = FileStoreUpstream(data_dir / "dicom")
        await store.store_instances([dcmread(p) for p in chosen.values()])
        await store.aclose()

    asyncio.run(seed())
    assert runner.invoke(app, ["db", "upgrade"]).exit_code == 0
    key = RSAKey.generate_key(2048, parameters={"kid": "k1"})
    jwks_file = tmp_path / "jwks.json"
    jwks_file.write_text(json.dumps({"keys": [key.as_dict(private=False)]}))
    backend = run(
        "clients", "add", "--name", "Referrals", "--type", "backend",
        "--jwks-file", str(jwks_file), "--scope", "system/ImagingStudy.rs",
        "--organization", "trauma-centre",
    )  # fmt: skip
    assert backend["operator"] is False and backend["organization"] == "trauma-centre"
    operator = run(
        "clients", "add", "--name", "Ops", "--type", "backend",
        "--jwks-file", str(jwks_file), "--scope", "system/*.rs", "--operator",
    )  # fmt: skip
    assert operator["operator"] is True
    client = backend["client_id"]

    given = run("clients", "access", "add", client, "--patient", "HOSP-A|IS-1001", "--study", study)
    assert given["added"] == 2
    listed = run("clients", "access", "list", client, "--json")
    assert {(e["patient_id"], e["study"]) for e in listed} == {
        ("IS-1001", "(all studies)"),
        ("IS-1002", study),
    }
    by_fhir_id = listed[0]["patient"]
    again = run("clients", "access", "add", client, "--patient", by_fhir_id)
    assert again["added"] == 0  # already given
    removed = run("clients", "access", "remove", client, "--study", study)
    assert removed["removed"] == 1
    assert len(run("clients", "access", "list", client, "--json")) == 1
    assert run("clients", "access", "remove", client, "--all")["removed"] == 1

    unknown_study = runner.invoke(app, ["clients", "access", "add", client, "--study", "1.2.3"])
    assert unknown_study.exit_code == 2 and "not in the PACS" in unknown_study.output
    unknown_patient = runner.invoke(app, ["clients", "access", "add", client, "--patient", "nope"])
    assert unknown_patient.exit_code == 2 and "no patient" in unknown_patient.output
    no_client = runner.invoke(app, ["clients", "access", "add", "nobody", "--patient", "a|b"])
    assert no_client.exit_code == 2 and "no client" in no_client.output
    organization = run(
        "clients", "access", "add", "trauma-centre", "--organization", "--patient", "HOSP-A|IS-1002"
    )
    assert organization["kind"] == "organization"
    shown = runner.invoke(app, ["clients", "access", "add", "--help"])
    assert shown.exit_code == 0 and "system|value" in shown.output


def test_a_launch_uri_can_carry_the_new_client_id(data_dir: Path) -> None:
    """OHIF's launch page learns its app from the link: ``{client_id}`` is filled in."""
    assert runner.invoke(app, ["db", "upgrade"]).exit_code == 0
    made = run(
        "clients",
        "add",
        "--name",
        "OHIF Viewer",
        "--type",
        "public",
        "--redirect-uri",
        "https://images.example/apps/launch/",
        "--launch-uri",
        "https://images.example/apps/launch/?client_id={client_id}",
    )
    assert isinstance(made, dict)
    link = run("launch", "--client", made["client_id"], "--patient", "p-1", "--study", "1.2.3")
    assert isinstance(link, str)
    query = parse_qs(urlsplit(link).query)
    assert query["client_id"] == [made["client_id"]] and query["launch"]
    refused = runner.invoke(
        app, ["launch", "--client", made["client_id"], "--patient", "p-1", "--study", "x y"]
    )
    assert refused.exit_code != 0
