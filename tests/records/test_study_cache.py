"""The study detail cache: used only while the PACS's counts still agree."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.uid import generate_uid
from starlette.testclient import TestClient

from gateway.app import create_app
from gateway.dicomweb.dicomjson import element, tag
from gateway.records.study_cache import StudyDetailCache
from tests.conftest import make_settings, migrate


def study(uid: str, series: int | None, instances: int | None) -> dict:
    data = {tag("StudyInstanceUID"): element("UI", uid)}
    if series is not None:
        data[tag("NumberOfStudyRelatedSeries")] = element("IS", str(series))
    if instances is not None:
        data[tag("NumberOfStudyRelatedInstances")] = element("IS", str(instances))
    return data


def test_hit_only_while_counts_agree() -> None:
    cache = StudyDetailCache(ttl=60, max_entries=10)
    cache.put(study("1.2", 1, 3), [{"s": 1}], [{"i": 1}])
    assert cache.get(study("1.2", 1, 3)) is not None
    assert cache.get(study("1.2", 1, 4)) is None  # an instance arrived
    assert cache.get(study("1.2", 1, 3)) is None  # and the stale entry is gone


def test_no_counts_means_no_caching_and_ttl_and_size_bound(monkeypatch: pytest.MonkeyPatch) -> None:
    cache = StudyDetailCache(ttl=60, max_entries=2)
    cache.put(study("1.1", None, None), [], [])
    assert cache.get(study("1.1", None, None)) is None
    for uid in ("1.3", "1.4", "1.5"):
        cache.put(study(uid, 1, 1), [], [])
    assert cache.get(study("1.3", 1, 1)) is None  # evicted, least recently used
    assert cache.get(study("1.5", 1, 1)) is not None
    later = time.monotonic() + 61
    monkeypatch.setattr("gateway.records.study_cache.time.monotonic", lambda: later)
    assert cache.get(study("1.5", 1, 1)) is None
    assert not StudyDetailCache(ttl=0, max_entries=5).enabled


def test_a_new_instance_shows_on_the_next_search(tmp_path: Path, fixture_files: list[Path]) -> None:
    settings = make_settings(tmp_path)
    migrate(settings)
    source = dcmread(fixture_files[0])
    (settings.dicom_dir).mkdir(parents=True)
    source.save_as(settings.dicom_dir / "first.dcm", enforce_file_format=True)
    uid = str(source.StudyInstanceUID)
    with TestClient(create_app(settings)) as client:
        before = client.get(f"/fhir/ImagingStudy?_id={uid}").json()["entry"][0]["resource"]
        assert before["numberOfInstances"] == 1
        client.get(f"/fhir/ImagingStudy?_id={uid}")  # now cached
        extra = dcmread(fixture_files[0])
        extra.SOPInstanceUID = extra.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        extra.InstanceNumber = 99
        extra.save_as(settings.dicom_dir / "second.dcm", enforce_file_format=True)
        time.sleep(2.1)  # the embedded store looks at its folder again after 2 s
        after = client.get(f"/fhir/ImagingStudy?_id={uid}").json()["entry"][0]["resource"]
        assert after["numberOfInstances"] == 2
        numbers = [i["number"] for s in after["series"] for i in s["instance"]]
        assert 99 in numbers
