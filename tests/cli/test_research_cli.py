"""`gateway research projects add | list | remove`, `deliveries`, `package`, in-process."""

from __future__ import annotations

import json
import sqlite3
import zipfile
from pathlib import Path

from typer.testing import CliRunner

from gateway.cli import app
from tests.cli.test_cli import data_dir as data_dir

runner = CliRunner()


def test_projects_add_list_remove(data_dir: Path, tmp_path: Path) -> None:
    assert runner.invoke(app, ["db", "upgrade"]).exit_code == 0
    added = runner.invoke(
        app,
        [
            "research",
            "projects",
            "add",
            "Lung cohort",
            "--protocol-id",
            "LC-1",
            "--archive-url",
            "http://127.0.0.1:9/dicom-web",
            "--option",
            "retain-longitudinal-modified-dates",
            "--option",
            "clean-descriptors",
        ],
    )
    assert added.exit_code == 0, added.output
    project = json.loads(added.stdout)
    assert project["delivery"] == "archive" and project["options"] == [
        "retain-longitudinal-modified-dates",
        "clean-descriptors",
    ]
    # The key was generated and kept, and is shown nowhere.
    with sqlite3.connect(data_dir / "gateway.db") as db:
        (secret,) = db.execute("SELECT secret FROM research_project").fetchone()
    assert len(secret) >= 64 and secret not in added.output
    listed = runner.invoke(app, ["research", "projects", "list"])
    assert listed.exit_code == 0 and "Lung cohort" in listed.output and secret not in listed.output

    for wrong in (
        ["--protocol-id", "LC-1"],  # taken
        ["--protocol-id", "LC-2", "--option", "no-such-option"],
        [
            "--protocol-id",
            "LC-3",
            "--option",
            "retain-longitudinal-modified-dates",
            "--option",
            "retain-longitudinal-full-dates",
        ],
        ["--protocol-id", "LC-4", "--archive-url", "ftp://archive"],
    ):
        refused = runner.invoke(app, ["research", "projects", "add", "Other", *wrong])
        assert refused.exit_code == 2, (wrong, refused.output)

    empty = runner.invoke(app, ["research", "deliveries", project["id"]])
    assert empty.exit_code == 0 and empty.stdout.strip() == ""
    out = tmp_path / "package.zip"
    packaged = runner.invoke(app, ["research", "package", project["id"], str(out)])
    assert packaged.exit_code == 0, packaged.output
    with zipfile.ZipFile(out) as archive:
        assert archive.namelist() == []

    assert runner.invoke(app, ["research", "projects", "remove", project["id"]]).exit_code == 0
    assert runner.invoke(app, ["research", "projects", "remove", project["id"]]).exit_code == 1
    assert "Lung cohort" not in runner.invoke(app, ["research", "projects", "list"]).output
    assert runner.invoke(app, ["research", "deliveries", project["id"]]).exit_code == 1
