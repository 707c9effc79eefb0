"""`gateway deid IN_DIR OUT_DIR`: a folder in, de-identified files out, exclusions listed."""

from __future__ import annotations

from pathlib import Path

from pydicom import dcmread
from typer.testing import CliRunner

from fixtures.generate import iter_datasets
from gateway.cli import app

runner = CliRunner()


def _inputs(folder: Path) -> dict[str, int]:
    kinds = {"images": 0, "ultrasound": 0, "reports": 0}
    for ds in iter_datasets():
        if ds.PatientID != "IS-1001":
            continue
        ds.save_as(folder / f"{ds.SOPInstanceUID}.dcm", enforce_file_format=True)
        if ds.Modality == "US":
            kinds["ultrasound"] += 1
        elif "PixelData" in ds:
            kinds["images"] += 1
        else:
            kinds["reports"] += 1
    (folder / "notes.txt").write_text("not DICOM")
    return kinds


def test_deid_writes_the_images_and_lists_what_it_left_out(tmp_path: Path) -> None:
    source, out = tmp_path / "in", tmp_path / "out"
    source.mkdir()
    kinds = _inputs(source)
    key = tmp_path / "project.key"
    key.write_text("a" * 64)
    result = runner.invoke(
        app,
        [
            "deid",
            str(source),
            str(out),
            "--project-key-file",
            str(key),
            "--option",
            "retain-longitudinal-modified-dates",
            "--option",
            "clean-descriptors",
        ],
    )
    assert result.exit_code == 1, result.output  # notes.txt is not DICOM
    assert "notes.txt: not a readable DICOM Part 10 file" in result.output
    written = sorted(out.rglob("*.dcm"))
    assert len(written) == kinds["images"] > 0
    assert f"excluded {kinds['ultrasound']}: a secondary capture or ultrasound" in result.output
    assert "a structured report" in result.output and "an encapsulated document" in result.output
    for path in written:
        ds = dcmread(path)
        assert ds.PatientIdentityRemoved == "YES" and ds.PatientID.startswith("RP-")
        assert path.parent.parent.name == ds.StudyInstanceUID
        assert path.stem == ds.SOPInstanceUID == ds.file_meta.MediaStorageSOPInstanceUID
    again = runner.invoke(
        app, ["deid", str(source), str(tmp_path / "again"), "--project-key-file", str(key)]
    )
    names = sorted(p.name for p in written)
    assert sorted(p.name for p in (tmp_path / "again").rglob("*.dcm")) == names
    assert again.exit_code == 1


def test_deid_refuses_bad_input(tmp_path: Path) -> None:
    short = tmp_path / "short.key"
    short.write_text("too short")
    refused = runner.invoke(
        app, ["deid", str(tmp_path), str(tmp_path / "o"), "--project-key-file", str(short)]
    )
    assert refused.exit_code == 2 and "at least 32 bytes" in refused.output
    good = tmp_path / "good.key"
    good.write_text("b" * 40)
    unknown = runner.invoke(
        app,
        [
            "deid",
            str(tmp_path),
            str(tmp_path / "o"),
            "--project-key-file",
            str(good),
            "--option",
            "keep-all",
        ],
    )
    assert unknown.exit_code == 2 and "unknown option" in unknown.output
    both = runner.invoke(
        app,
        [
            "deid",
            str(tmp_path),
            str(tmp_path / "o"),
            "--project-key-file",
            str(good),
            "--option",
            "retain-longitudinal-full-dates",
            "--option",
            "retain-longitudinal-modified-dates",
        ],
    )
    assert both.exit_code == 2 and "not both" in both.output
    helped = runner.invoke(app, ["deid", "--help"])
    assert helped.exit_code == 0
    assert (
        "retain-patient-characteristics" in helped.output and "--accept-burned-in" in helped.output
    )
