"""A search costs a bounded number of upstream calls, and says when it was cut short."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import pytest
from fhir.resources.R4B.bundle import Bundle
from starlette.testclient import TestClient

from fixtures.generate import BENCH_PATIENT_ID
from gateway.app import create_app
from gateway.dicomweb.file_store import FileStoreUpstream
from gateway.services import Services
from tests.conftest import make_settings, migrate


class CountingUpstream(FileStoreUpstream):
    """The real embedded store, counting the QIDO calls made of it."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.calls: Counter[str] = Counter()

    async def search_studies(
        self, filters: Mapping[str, str], fields: Sequence[str] = (), limit=None
    ):  # type: ignore[no-untyped-def]
        self.calls["studies"] += 1
        return await super().search_studies(filters, fields, limit)

    async def search_series(
        self, filters: Mapping[str, str], fields: Sequence[str] = (), limit=None
    ):  # type: ignore[no-untyped-def]
        self.calls["series"] += 1
        return await super().search_series(filters, fields, limit)

    async def search_instances(
        self, filters: Mapping[str, str], fields: Sequence[str] = (), limit=None
    ):  # type: ignore[no-untyped-def]
        self.calls["instances"] += 1
        return await super().search_instances(filters, fields, limit)


@pytest.fixture
def counted(
    tmp_path: Path, embedded_data_dir: Path
) -> Iterator[tuple[TestClient, CountingUpstream]]:
    settings = make_settings(
        embedded_data_dir,
        database_url=f"sqlite+aiosqlite:///{tmp_path / 'g.db'}",
        study_cache_seconds=0,
        max_search_candidates=12,
    )
    migrate(settings)
    upstream = CountingUpstream(settings.dicom_dir)
    with TestClient(create_app(settings, services=Services.build(settings, upstream))) as client:
        yield client, upstream


def test_calls_do_not_grow_with_the_page(counted) -> None:
    client, upstream = counted
    patient = client.get(f"/fhir/Patient?identifier={BENCH_PATIENT_ID}").json()["entry"][0]
    # The first search fills the study index (the patient's studies and reports); the
    # next is answered from it. The page costs one instance-level QIDO either way
    # (the detail cache is off here), and series come with the instances.
    expected = {1: Counter(studies=1, instances=2), 10: Counter(instances=1)}
    for count in (1, 10):
        upstream.calls.clear()
        bundle = client.get(
            f"/fhir/ImagingStudy?patient={patient['resource']['id']}&_count={count}"
        ).json()
        assert len(bundle["entry"]) == count
        assert upstream.calls == expected[count]


def test_a_cut_short_search_has_no_total_and_says_so(counted) -> None:
    client, _ = counted
    bundle = client.get("/fhir/ImagingStudy?_count=5").json()
    Bundle.model_validate(bundle)
    assert "total" not in bundle
    outcomes = [e for e in bundle["entry"] if e["search"]["mode"] == "outcome"]
    assert len(outcomes) == 1
    assert "More than 12 studies" in outcomes[0]["resource"]["issue"][0]["diagnostics"]
    narrowed = client.get("/fhir/ImagingStudy?_summary=count&identifier=urn:oid:1.2.3").json()
    assert narrowed["total"] == 0
