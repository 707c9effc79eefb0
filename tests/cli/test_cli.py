"""The `gateway` command, run in-process through typer's runner."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from gateway import __version__
from gateway.cli import app

runner = CliRunner()


@pytest.fixture
def data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for name in ("GATEWAY_DICOMWEB_URL", "GATEWAY_DATABASE_URL", "GATEWAY_PUBLIC_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("GATEWAY_DATA_DIR", str(tmp_path / "var"))
    monkeypatch.chdir(tmp_path)  # no stray .env
    return tmp_path / "var"


def test_version() -> None:
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and result.output.strip() == f"gateway {__version__}"


def test_bad_configuration_is_one_clear_line(data_dir: Path, monkeypatch) -> None:
    monkeypatch.setenv("GATEWAY_DICOMWEB_URL", "not-a-url")
    result = runner.invoke(app, ["db", "upgrade"])
    assert result.exit_code == 2
    assert "GATEWAY_DICOMWEB_URL" in result.output
    assert "Traceback" not in result.output


def test_serve_refuses_an_unmigrated_database(data_dir: Path) -> None:
    result = runner.invoke(app, ["serve", "--port", "1"])
    assert result.exit_code == 2
    assert "gateway db upgrade" in result.output


def test_db_upgrade_then_current(data_dir: Path) -> None:
    assert runner.invoke(app, ["db", "upgrade"]).exit_code == 0
    result = runner.invoke(app, ["db", "current"])
    assert result.exit_code == 0
    current, needed = (line.split()[-1] for line in result.output.strip().splitlines())
    assert current == needed != "empty"


def test_import_reports_failures_and_stores_the_rest(
    data_dir: Path, fixture_files: list[Path], tmp_path: Path
) -> None:
    folder = tmp_path / "cd"
    folder.mkdir()
    chosen = fixture_files[:5]
    for path in chosen:
        (folder / path.name).write_bytes(path.read_bytes())
    (folder / "README.TXT").write_text("not DICOM")
    result = runner.invoke(app, ["import", str(folder)])
    assert result.exit_code == 1, result.output
    assert "stored 5 of 6" in result.output
    assert "README.TXT" in result.output
    assert (
        len(
            [
                p
                for p in (data_dir / "dicom").rglob("*")
                if p.is_file() and not p.name.startswith(".")
            ]
        )
        == 5
    )


def test_import_of_a_missing_path_fails_cleanly(data_dir: Path) -> None:
    result = runner.invoke(app, ["import", "/no/such/folder"])
    assert result.exit_code == 2 and "no such file" in result.output


def test_demo_seeds_once_and_describes_itself(data_dir: Path) -> None:
    first = runner.invoke(app, ["demo", "--no-serve"])
    assert first.exit_code == 0, first.output
    summary = json.loads((data_dir / "demo.json").read_text())
    assert summary["seeded_now"] > 0 and summary["studies"] >= 25
    assert len(summary["patients"]) >= 6
    assert all(p["patient_id"] not in p["fhir_id"] for p in summary["patients"])
    second = runner.invoke(app, ["demo", "--no-serve"])
    assert second.exit_code == 0
    again = json.loads((data_dir / "demo.json").read_text())
    assert again["seeded_now"] == 0 and again["studies"] == summary["studies"]
    assert again["patients"] == summary["patients"]
    # The demo app and sign-ins are made once and kept.
    smart = summary["smart"]
    assert again["smart"] == smart
    assert smart["app"]["client_id"] and smart["app"]["redirect_uri"].endswith("/apps/launch/")
    # OHIF's launch page, which knows its client from the link (and so do EHR launches).
    assert (
        smart["app"]["open"]
        == f"{smart['app']['redirect_uri']}?client_id={smart['app']['client_id']}"
    )
    assert smart["app"]["ohif"].endswith("/apps/ohif/")
    assert "OHIF viewer:" in first.output and smart["app"]["open"] in first.output
    assert len(smart["patient"]["access_code"]) == 8
    assert smart["patient"]["fhir_id"] == summary["patients"][0]["fhir_id"]
    assert smart["practitioner"]["username"] == "demo.doctor"
    operator = smart["operator"]
    assert Path(operator["private_key"]).stat().st_mode & 0o077 == 0
    issued = runner.invoke(app, [*operator["token"].split()[1:5], "--scope", "system/*.rs"])
    assert issued.exit_code == 0 and json.loads(issued.stdout)["access_token"]


@pytest.mark.orthanc
def test_import_into_orthanc(
    data_dir: Path, orthanc, fixture_files: list[Path], monkeypatch
) -> None:
    monkeypatch.setenv("GATEWAY_DICOMWEB_URL", orthanc.dicomweb_url)
    result = runner.invoke(app, ["import", *map(str, fixture_files[:8])])
    assert result.exit_code == 0, result.output
    assert "stored 8 of 8" in result.output
