from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.auth.test_oauth_api import Harness
from tests.imaging.support import A, B, datasets
from tests.portal.support import Clock
from tests.support.stores import private_store


class Imaging:
    """The gateway over the imaging studies, its clock, and the two patients' ids."""

    def __init__(self, harness: Harness) -> None:
        self.harness = harness
        self.clock: Clock = harness.services.clock  # type: ignore[assignment]
        identify = harness.services.records.patients.identify
        self.a = harness.call(identify, *A)
        self.b = harness.call(identify, *B)

    def patient_headers(self, patient: str, scope: str) -> dict[str, str]:
        token = self.harness.patient_token(patient, scope)
        return {"Authorization": f"Bearer {token['access_token']}"}


@pytest.fixture(scope="module")
def imaging(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Imaging]:
    with private_store(
        ("embedded", "sqlite"), tmp_path_factory.mktemp("imaging"), datasets()
    ) as harness:
        yield Imaging(harness)
