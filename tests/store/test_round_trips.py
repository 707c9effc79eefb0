"""Database round trips of a patient's request on PostgreSQL (issue 12, bench/load.py).

A patient's QIDO or metadata request inside the freshness bound reads the
token, the jacket's index rows and the release facts, and writes one audit
row: four statements, with no BEGIN, ROLLBACK or COMMIT around them. Counted
at asyncpg, so a change that adds a round trip to every request shows here.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import asyncpg.prepared_stmt
import pytest
from starlette.testclient import TestClient

from fixtures.generate import BENCH_PATIENT_ID
from gateway.app import create_app
from gateway.services import Services
from tests.auth.test_oauth_api import Harness, bearer
from tests.conftest import make_settings, migrate
from tests.support.postgres import throwaway_database

pytestmark = [pytest.mark.postgres]


@pytest.fixture
def counted(
    embedded_data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[Harness, Counter[str]]]:
    calls: Counter[str] = Counter()

    def count(cls: Any, name: str) -> None:
        original = getattr(cls, name)

        async def counting(self: Any, *args: Any, **kwargs: Any) -> Any:
            first = args[0] if args and isinstance(args[0], str) else ""
            calls[first.split()[0].upper() if name == "execute" and first else name] += 1
            return await original(self, *args, **kwargs)

        monkeypatch.setattr(cls, name, counting)

    with throwaway_database() as url:
        settings = make_settings(
            embedded_data_dir,
            database_url=url,
            auth_required=True,
            public_url="https://gateway.example",
            release_delay_hours=0,
        )
        migrate(settings)
        services = Services.build(settings)
        app = create_app(settings, services=services)
        with TestClient(app, base_url="https://gateway.example") as client:
            count(asyncpg.Connection, "execute")
            count(asyncpg.prepared_stmt.PreparedStatement, "fetch")
            yield Harness(client, services), calls


def test_a_patient_request_makes_four_statements(counted) -> None:  # type: ignore[no-untyped-def]
    harness, calls = counted
    system = bearer(harness.backend_token("system/*.rs"))
    patient = harness.client.get(
        f"/fhir/Patient?identifier={BENCH_PATIENT_ID}", headers=system
    ).json()["entry"][0]["resource"]["id"]
    token = bearer(
        harness.patient_token(
            patient, "launch/patient patient/ImagingStudy.rs patient/DocumentReference.rs"
        )
    )
    found = harness.client.get("/dicomweb/studies", headers=token)
    uid = found.json()[0]["0020000D"]["Value"][0]
    for path in ("/dicomweb/studies", f"/dicomweb/studies/{uid}/metadata"):
        calls.clear()
        assert harness.client.get(path, headers=token).status_code == 200
        assert calls == Counter({"fetch": 4}), (path, calls)
