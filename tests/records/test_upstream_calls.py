"""A patient token's first search makes at most three upstream calls (issue 10, item 3).

Deciding what the token may see needs the patient's studies and when each
was reported (the release delay); the search then needs the page's series and
instances. The jacket answers the first part in two calls (one study-level
QIDO, one instance-level QIDO for the reports) and is the search's candidate
list too; the series come with the instances.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from fixtures.generate import BENCH_PATIENT_ID
from gateway.app import create_app
from gateway.services import Services
from tests.auth.test_oauth_api import Harness, bearer
from tests.conftest import make_settings, migrate
from tests.fhir.test_search_bounds import CountingUpstream


class EveryCallCounted(CountingUpstream):
    """QIDO, and WADO too (a report's metadata is a retrieval)."""

    async def retrieve(self, path: str, accept: str):  # type: ignore[no-untyped-def]
        self.calls["retrieve"] += 1
        return await super().retrieve(path, accept)


@pytest.fixture
def counted(tmp_path: Path, embedded_data_dir: Path) -> Iterator[tuple[Harness, CountingUpstream]]:
    settings = make_settings(
        embedded_data_dir,
        database_url=f"sqlite+aiosqlite:///{tmp_path / 'g.db'}",
        auth_required=True,
        public_url="https://gateway.example",
        release_delay_hours=72,
    )
    migrate(settings)
    upstream = EveryCallCounted(settings.dicom_dir)
    services = Services.build(settings, upstream)
    app = create_app(settings, services=services)
    with TestClient(app, base_url="https://gateway.example") as client:
        yield Harness(client, services), upstream


def _patient_token(harness: Harness) -> dict[str, str]:
    system = bearer(harness.backend_token("system/*.rs"))
    patient = harness.client.get(
        f"/fhir/Patient?identifier={BENCH_PATIENT_ID}", headers=system
    ).json()["entry"][0]["resource"]["id"]
    return bearer(
        harness.patient_token(
            patient, "launch/patient patient/ImagingStudy.rs patient/DocumentReference.rs"
        )
    )


@pytest.mark.parametrize(
    "search",
    [
        "/fhir/ImagingStudy?_count=20",
        "/fhir/ImagingStudy?_count=1&_sort=started",
        "/dicomweb/studies",
    ],
)
def test_a_patient_tokens_first_search(counted, search: str) -> None:  # type: ignore[no-untyped-def]
    harness, upstream = counted
    token = _patient_token(harness)
    upstream.calls.clear()
    answer = harness.client.get(search, headers=token)
    assert answer.status_code == 200, answer.text
    assert sum(upstream.calls.values()) <= 3, upstream.calls
    # The next request of the same token decides from the jacket it already has.
    upstream.calls.clear()
    assert harness.client.get(search, headers=token).status_code == 200
    assert sum(upstream.calls.values()) <= 1, upstream.calls
