"""`gateway demo`: a demo patient with studies in every state, and the held copy behind it."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any, TypeVar

import pytest
from pydicom import Dataset, dcmread
from starlette.testclient import TestClient
from typer.testing import CliRunner

from fixtures.demo_states import HELD_STUDY_ID, NOT_IMAGES, held_copy
from gateway.app import create_app
from gateway.cli import app
from gateway.demo import DEMO_SHARE_LABEL
from gateway.portal.shares import PinCheck
from gateway.services import Services
from gateway.settings import load_settings
from tests.portal.support import enter_pin

runner = CliRunner()
PUBLIC_URL = "http://127.0.0.1:8080"
T = TypeVar("T")


@pytest.fixture
def data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for name in ("GATEWAY_DICOMWEB_URL", "GATEWAY_DATABASE_URL"):
        monkeypatch.delenv(name, raising=False)
    # Set here (not by `demo` itself) so that it is undone after the test.
    monkeypatch.setenv("GATEWAY_PUBLIC_URL", PUBLIC_URL)
    monkeypatch.setenv("GATEWAY_DATA_DIR", str(tmp_path / "var"))
    monkeypatch.chdir(tmp_path)  # no stray .env
    return tmp_path / "var"


def on_services(
    action: Callable[[Services], Coroutine[Any, Any, T]],
    clock: Callable[[], datetime] | None = None,
) -> T:
    """Run ``action`` on services built from the environment (the demo's data folder)."""

    async def run() -> T:
        services = Services.build(load_settings(), clock=clock)
        try:
            return await action(services)
        finally:
            await services.aclose()

    return asyncio.run(run())


async def study_uids(services: Services) -> list[str]:
    found = await services.upstream.search_studies({}, ("StudyInstanceUID", "StudyID"))
    return sorted(str(s["0020000D"]["Value"][0]) for s in found)


async def held_studies(services: Services) -> list[str]:
    found = await services.upstream.search_studies({"StudyID": HELD_STUDY_ID})
    return [str(s["0020000D"]["Value"][0]) for s in found]


# -- the command ---------------------------------------------------------------


@pytest.mark.slow
def test_demo_has_a_study_in_every_state_and_runs_twice(data_dir: Path) -> None:
    first = runner.invoke(app, ["demo", "--no-serve"])
    assert first.exit_code == 0, first.output
    summary = json.loads((data_dir / "demo.json").read_text())
    states, share = summary["states"], summary["share"]
    patient = summary["smart"]["patient"]
    assert states["patient"] == patient["fhir_id"] == summary["patients"][0]["fhir_id"]
    assert patient["account_id"]
    for name in ("released", "held", "shared", "reported"):
        assert states[name], f"no {name} study"

    # Held: one fresh study, not released, available 72 hours after it was made.
    (held,) = states["held"]
    assert held["uid"] not in states["released"]
    assert held["uid"] not in states["reported"] and held["uid"] not in states["shared"]
    available_at = datetime.fromisoformat(held["available_at"])
    assert timedelta(hours=71) < available_at - datetime.now(UTC) <= timedelta(hours=72)
    assert on_services(held_studies) == [held["uid"]]

    # Shared: two released studies, one with a report, the link for Dr. Demo.
    assert share["label"] == DEMO_SHARE_LABEL
    assert len(share["studies"]) == 2 and set(share["studies"]) <= set(states["released"])
    assert set(share["studies"]) & set(states["reported"])
    assert states["shared"] == share["studies"]
    assert share["link"].startswith(f"{PUBLIC_URL}/share/") and re.fullmatch(r"\d{6}", share["pin"])
    expires = datetime.fromisoformat(share["expires"])
    assert timedelta(days=29) < expires - datetime.now(UTC) <= timedelta(days=30)

    # The summary tells a newcomer where to start.
    assert f"{PUBLIC_URL}/portal/signin" in first.output
    assert patient["access_code"] in first.output and patient["passphrase"] in first.output
    assert share["link"] in first.output and share["pin"] in first.output
    assert re.search(r"\d+ released, 1 held, 2 shared, \d+ reported", first.output)

    before = on_services(study_uids)
    assert summary["studies"] == len(before)

    # A second run on the same folder adds nothing and keeps the share.
    second = runner.invoke(app, ["demo", "--no-serve"])
    assert second.exit_code == 0, second.output
    again = json.loads((data_dir / "demo.json").read_text())
    assert on_services(study_uids) == before
    assert on_services(held_studies) == [held["uid"]]
    assert again["seeded_now"] == 0 and again["studies"] == summary["studies"]
    assert again["share"] == share and again["states"] == states
    assert again["smart"] == summary["smart"] and again["patients"] == summary["patients"]

    # 73 hours on, the held study is released like the others.
    later = datetime.now(UTC) + timedelta(hours=73)

    async def releases(services: Services) -> tuple[frozenset[str], dict[str, datetime]]:
        computed = await services.records.jackets.of(patient["fhir_id"])
        return computed.released, computed.held

    released, still_held = on_services(releases, clock=lambda: later)
    assert held["uid"] in released and not still_held
    assert set(states["released"]) < released


def test_the_demo_share_opens_with_its_pin(data_dir: Path) -> None:
    assert runner.invoke(app, ["demo", "--no-serve"]).exit_code == 0
    share = json.loads((data_dir / "demo.json").read_text())["share"]
    settings = load_settings()
    with TestClient(create_app(settings), base_url=PUBLIC_URL) as client:
        opened = enter_pin(client, share["link"], share["pin"])
        assert opened.status_code == 303 and opened.headers["location"].endswith("/share/view")
        overview = client.get("/share/view")
        assert overview.status_code == 200
        shown = set(re.findall(r'href="[^"]*/share/view/studies/([0-9.]+)"', overview.text))
        assert shown == set(share["studies"])

    async def check(services: Services) -> PinCheck:
        found = await services.shares.by_token(share["link"].rsplit("/", 1)[1])
        assert found is not None and found.label == DEMO_SHARE_LABEL
        return await services.shares.check_pin(found, share["pin"])

    assert on_services(check) is PinCheck.opened
    # The demo patient sees the share among their own.
    account = json.loads((data_dir / "demo.json").read_text())["smart"]["patient"]["account_id"]

    async def of_account(services: Services) -> list[str]:
        return [s.id for s in await services.shares.of_account(account)]

    assert on_services(of_account) == [share["id"]]


def test_a_withdrawn_demo_share_is_made_again(data_dir: Path) -> None:
    assert runner.invoke(app, ["demo", "--no-serve"]).exit_code == 0
    summary = json.loads((data_dir / "demo.json").read_text())
    old = summary["share"]

    async def revoke(services: Services) -> bool:
        return await services.shares.revoke(old["id"], summary["smart"]["patient"]["account_id"])

    assert on_services(revoke)
    assert runner.invoke(app, ["demo", "--no-serve"]).exit_code == 0
    again = json.loads((data_dir / "demo.json").read_text())
    assert again["share"]["id"] != old["id"] and again["share"]["link"] != old["link"]
    assert again["states"]["shared"] == again["share"]["studies"]


# -- the held copy (pure) ------------------------------------------------------


def _study_with_reports(fixture_files: list[Path]) -> list[Dataset]:
    """The instances of a fixture study that has images, a report and a manifest."""
    by_study: dict[str, list[Dataset]] = {}
    for path in fixture_files:
        if path.parent.parent.parent.name == "IS-1001":
            by_study.setdefault(path.parent.parent.name, []).append(dcmread(path))
    for datasets in by_study.values():
        modalities = {str(ds.Modality) for ds in datasets}
        if {"SR", "KO"} <= modalities and len({ds.SeriesInstanceUID for ds in datasets}) > 3:
            return datasets
    for datasets in by_study.values():
        if {"SR", "KO"} <= {str(ds.Modality) for ds in datasets}:
            return datasets
    raise AssertionError("no fixture study with a report and a manifest")


def test_held_copy_is_a_new_study_dated_now(fixture_files: list[Path]) -> None:
    originals = _study_with_reports(fixture_files)
    before = [ds.to_json_dict() for ds in originals]
    now = datetime(2030, 5, 6, 23, 45, 12, tzinfo=timezone(timedelta(hours=2)))
    copies = held_copy(originals, now)

    images = [ds for ds in originals if ds.Modality not in NOT_IMAGES]
    assert len(copies) == len(images) and images
    assert all(ds.Modality not in {"SR", "KO", "DOC"} for ds in copies)
    # Fresh, consistent UIDs: one study, one new series per old one, new instances.
    old_uids = {
        str(ds.get(k))
        for ds in originals
        for k in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")
    }
    assert len({ds.StudyInstanceUID for ds in copies}) == 1
    assert copies[0].StudyInstanceUID not in old_uids
    series: dict[str, set[str]] = {}
    for original, made in zip(images, copies, strict=True):
        series.setdefault(original.SeriesInstanceUID, set()).add(made.SeriesInstanceUID)
        assert made.SOPInstanceUID not in old_uids and made.SeriesInstanceUID not in old_uids
        assert made.file_meta.MediaStorageSOPInstanceUID == made.SOPInstanceUID
        assert made.SOPClassUID == original.SOPClassUID
        assert made.PatientID == original.PatientID and made.PixelData == original.PixelData
    assert all(len(new) == 1 for new in series.values())
    assert len({uid for new in series.values() for uid in new}) == len(series)
    assert len({ds.SOPInstanceUID for ds in copies}) == len(copies)
    # Dated now, in UTC, with the offset written out.
    for ds in copies:
        assert ds.StudyDate == ds.SeriesDate == ds.ContentDate == "20300506"
        assert ds.StudyTime == ds.SeriesTime == ds.ContentTime == "214512"
        assert ds.TimezoneOffsetFromUTC == "+0000"
        assert ds.StudyID == HELD_STUDY_ID
        assert ds.StudyDescription.endswith("(new result)")
        assert ds.AccessionNumber != originals[0].AccessionNumber
    # The originals are untouched.
    assert [ds.to_json_dict() for ds in originals] == before


def test_held_copy_names_the_procedure_and_refuses_reports_alone() -> None:
    image = Dataset()
    image.StudyInstanceUID, image.SeriesInstanceUID, image.SOPInstanceUID = "1.2.3", "1.2.3.4", "5"
    image.Modality, image.StudyDescription = "CT", "CT CHEST W/O CONTRAST"
    procedure = Dataset()
    procedure.CodeMeaning = "CT Chest"
    image.ProcedureCodeSequence = [procedure]
    naive_now = datetime(2031, 1, 2, 3, 4, 5)
    (copy,) = held_copy([image], naive_now)
    assert copy.StudyDescription == "CT Chest (new result)"
    assert (copy.StudyDate, copy.StudyTime) == ("20310102", "030405")
    assert held_copy([image], naive_now, description="Mine")[0].StudyDescription == "Mine"
    report = Dataset()
    report.StudyInstanceUID, report.Modality = "1.2.3", "SR"
    with pytest.raises(ValueError):
        held_copy([report], naive_now)
    other = Dataset()
    other.StudyInstanceUID, other.SeriesInstanceUID, other.SOPInstanceUID = "9.9", "9.9.1", "9"
    other.Modality = "CT"
    with pytest.raises(ValueError):
        held_copy([image, other], naive_now)
