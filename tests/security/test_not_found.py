"""A path no route matches is answered in its area's format, whatever is in it.

Starlette's mounts match no path containing a line break, so ``/fhir/x%0Ay``
reached the application's own 404, a bare ``{"error": "not found"}``, which
a FHIR client cannot read as an OperationOutcome (found by tests/fuzz).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.auth.test_oauth_api import Harness, bearer
from tests.portal.support import Clock, portal_harness


@pytest.fixture(scope="module")
def harness(tmp_path_factory: pytest.TempPathFactory, embedded_data_dir: Path) -> Iterator[Harness]:
    with portal_harness(tmp_path_factory.mktemp("not-found"), embedded_data_dir, Clock()) as made:
        yield made


@pytest.mark.parametrize(
    "path", ["/fhir/ImagingStudy/x%0Ay", "/fhir/Binary/a%0D%0Ab", "/fhir/no-such-type/x%0A"]
)
def test_fhir_paths_get_an_operation_outcome(harness: Harness, path: str) -> None:
    token = bearer(harness.backend_token("system/*.rs"))
    response = harness.client.get(path, headers=token)
    assert response.status_code == 404
    assert response.json()["resourceType"] == "OperationOutcome"


@pytest.mark.parametrize("path", ["/dicomweb/no-such-resource", "/dicomweb/studies/1%0A2"])
def test_dicomweb_paths_get_a_ps318_error(harness: Harness, path: str) -> None:
    token = bearer(harness.backend_token("system/*.rs"))
    response = harness.client.get(path, headers=token)
    assert response.status_code == 404
    assert response.headers["warning"].startswith("299 ")


def test_other_paths_keep_the_plain_answer(harness: Harness) -> None:
    response = harness.client.get("/no-such-place")
    assert response.status_code == 404 and response.json() == {"error": "not found"}
