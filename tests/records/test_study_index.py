"""The study index (issue 12): searches inside the freshness bound ask the PACS nothing.

Every replica on one database shares the index; a study stored through the
gateway shows at once; past the bound one study-level QIDO revalidates the
patient (deletions at the PACS disappear, direct arrivals appear); the
change-feed follower polls one replica at a time.
"""

from __future__ import annotations

import io
import shutil
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.uid import generate_uid
from starlette.testclient import TestClient

from fixtures.generate import BENCH_PATIENT_ID
from gateway.app import create_app
from gateway.services import Services
from tests.auth.test_oauth_api import Harness, bearer
from tests.conftest import make_settings, migrate
from tests.dicomweb.test_stow import CONTENT_TYPE, multipart
from tests.outages.test_archive_down import closed_port
from tests.portal.support import DATABASES, Clock
from tests.records.test_upstream_calls import EveryCallCounted

BASE = "https://gateway.example"
SCOPES = "launch/patient patient/ImagingStudy.rs patient/DocumentReference.rs"


@dataclass
class Replica:
    harness: Harness
    upstream: EveryCallCounted

    def search(self, path: str, token: str) -> list[str]:
        answer = self.harness.client.get(path, headers=bearer(token))
        assert answer.status_code == 200, answer.text
        return sorted(e["resource"]["id"] for e in answer.json().get("entry", []))

    def calls(self, path: str, token: str) -> tuple[list[str], Counter[str]]:
        self.upstream.calls.clear()
        found = self.search(path, token)
        return found, Counter(self.upstream.calls)


@contextmanager
def database_url(kind: str, workdir: Path) -> Iterator[str]:
    if kind == "postgres":
        from tests.support.postgres import throwaway_database

        with throwaway_database() as url:
            yield url
    else:
        yield f"sqlite+aiosqlite:///{workdir / 'g.db'}"


@contextmanager
def replica(data_dir: Path, url: str, clock: Clock, **extra: object) -> Iterator[Replica]:
    """One gateway instance (its own process state) on a shared database and store."""
    settings = make_settings(
        data_dir,
        database_url=url,
        auth_required=True,
        public_url=BASE,
        release_delay_hours=0,
        **extra,
    )
    upstream = EveryCallCounted(settings.dicom_dir)
    services = Services.build(settings, upstream, clock=clock)
    with TestClient(create_app(settings, services=services), base_url=BASE) as client:
        yield Replica(Harness(client, services), upstream)


@pytest.fixture(params=DATABASES)
def world(
    request: pytest.FixtureRequest, tmp_path: Path, embedded_data_dir: Path
) -> Iterator[tuple[Replica, Replica, Clock, Path]]:
    """Two replicas on one database and a private copy of the embedded store."""
    data_dir = tmp_path / "data"
    shutil.copytree(embedded_data_dir / "dicom", data_dir / "dicom")
    clock = Clock()
    clock.now = datetime(2030, 1, 1, tzinfo=UTC)
    with ExitStack() as stack:
        url = stack.enter_context(database_url(request.param, tmp_path))
        migrate(make_settings(data_dir, database_url=url))
        first = stack.enter_context(replica(data_dir, url, clock))
        second = stack.enter_context(replica(data_dir, url, clock))
        yield first, second, clock, data_dir / "dicom"


def tokens(replica: Replica) -> tuple[str, str, str]:
    """A system token, the bench patient's FHIR id, and a patient token for them."""
    system = replica.harness.backend_token("system/*.rs")
    patient = replica.harness.client.get(
        f"/fhir/Patient?identifier={BENCH_PATIENT_ID}", headers=bearer(system)
    ).json()["entry"][0]["resource"]["id"]
    return system, patient, replica.harness.patient_token(patient, SCOPES)


def patient_image(store: Path) -> Path:
    """A file of the bench patient's that holds an image (not a report)."""
    for path in sorted((store / "studies").rglob("*")):
        if path.is_file() and dcmread(path).PatientID == BENCH_PATIENT_ID:
            if "PixelData" in dcmread(path):
                return path
    raise AssertionError("the fixtures hold no image of the bench patient")


def in_new_study(path: Path) -> tuple[str, bytes]:
    ds = dcmread(path)
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return str(ds.StudyInstanceUID), buffer.getvalue()


MINE = "/fhir/ImagingStudy?_count=50"


def test_a_second_replica_answers_from_the_index(world) -> None:  # type: ignore[no-untyped-def]
    first, second, _, _ = world
    system, patient, token = tokens(first)
    seen, calls = first.calls(MINE, token)
    assert len(seen) == 10 and sum(calls.values()) <= 3, calls
    # Another process on the same database: the index and the details are shared.
    again, calls = second.calls(MINE, token)
    assert again == seen and calls == Counter(), calls
    # A system token's search by patient is answered from the same index.
    by_patient, calls = second.calls(f"/fhir/ImagingStudy?patient={patient}&_count=50", system)
    assert by_patient == seen and calls == Counter(), calls


def test_past_the_bound_one_query_revalidates(world) -> None:  # type: ignore[no-untyped-def]
    first, second, clock, store = world
    _, _, token = tokens(first)
    seen, _ = first.calls(MINE, token)
    # Deleted at the PACS, not through the gateway: still listed inside the bound.
    gone = seen[0]
    shutil.rmtree(store / "studies" / gone)  # the embedded store's layout: studies/{uid}/...
    time.sleep(2.1)  # the embedded store looks at its folder again after 2 s
    clock.advance(seconds=59)
    assert first.calls(MINE, token) == (seen, Counter())
    # Past the bound: one study-level QIDO; unchanged studies keep reports and details.
    clock.advance(seconds=2)
    after, calls = second.calls(MINE, token)
    assert after == seen[1:] and calls == Counter(studies=1), calls
    # A study sent to the PACS directly shows at the next revalidation, not before.
    arrived, data = in_new_study(patient_image(store))
    (store / "direct.dcm").write_bytes(data)
    time.sleep(2.1)
    assert first.calls(MINE, token) == (after, Counter())
    clock.advance(seconds=61)
    found, calls = first.calls(MINE, token)
    assert found == sorted([*after, arrived])
    # The new study needs its reports looked for, and its series and instances.
    assert calls == Counter(studies=1, instances=2), calls


def test_a_study_stored_through_the_gateway_shows_at_once(world) -> None:  # type: ignore[no-untyped-def]
    first, second, _, store = world
    _, _, token = tokens(first)
    seen, _ = second.calls(MINE, token)
    study, data = in_new_study(patient_image(store))
    writer = first.harness.backend_token("system/ImagingStudy.c")
    stored = first.harness.client.post(
        "/dicomweb/studies",
        content=multipart(("application/dicom", data)),
        headers={"Content-Type": CONTENT_TYPE, **bearer(writer)},
    )
    assert stored.status_code == 200, stored.text
    # No clock moved: the STOW marked the patient stale in the shared index, and the
    # revalidation on one replica serves the other.
    assert first.search(MINE, token) == sorted([*seen, study])
    assert second.calls(MINE, token)[0] == sorted([*seen, study])


def test_a_clock_set_back_revalidates(world) -> None:  # type: ignore[no-untyped-def]
    first, _, clock, _ = world
    _, _, token = tokens(first)
    first.calls(MINE, token)
    clock.now -= timedelta(hours=1)
    _, calls = first.calls(MINE, token)
    # Nothing stored "in the future" is trusted: the study list and the details are read.
    assert calls == Counter(studies=1, instances=1), calls
    assert first.calls(MINE, token)[1] == Counter()


def test_inside_the_bound_the_index_answers_while_the_pacs_is_down(world) -> None:  # type: ignore[no-untyped-def]
    first, _, clock, store = world
    _, _, token = tokens(first)
    seen, _ = first.calls(MINE, token)
    settings = make_settings(
        store.parent,
        database_url=first.harness.services.settings.effective_database_url,
        dicomweb_url=f"http://127.0.0.1:{closed_port()}/dicom-web",
        auth_required=True,
        public_url=BASE,
        release_delay_hours=0,
    )
    services = Services.build(settings, clock=clock)
    with TestClient(create_app(settings, services=services), base_url=BASE) as client:
        down = Replica(Harness(client, services), first.upstream)
        assert down.search(MINE, token) == seen  # studies, series and instances from the index
        clock.advance(seconds=settings.index_freshness_seconds + 1)
        assert client.get(MINE, headers=bearer(token)).status_code == 503
