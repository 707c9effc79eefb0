"""Numbers a client sends: only ASCII digits count, and anything else is a 400 naming the parameter.

A superscript two, a circled one, an Arabic-Indic one and a full-width one
all pass ``str.isdigit()``; ``int()`` rejects the first two (a 500 before) and
reads the others as 1. Every numeric parameter
goes through ``gateway.numbers.whole_number``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway.errors import BadRequest
from gateway.numbers import whole_number
from tests.auth.test_oauth_api import Harness, bearer
from tests.portal.support import (
    Clock,
    create_share,
    enroll,
    portal_harness,
    portal_sign_in,
    shareable,
)

# Superscript two, circled one, Arabic-Indic one, full-width one.
LOOK_LIKE_DIGITS = ["\u00b2", "\u2460", "\u0661", "\uff11"]
NOT_ASCII = [*LOOK_LIKE_DIGITS, "1\u00b2", "-1", "+1", " 1", "1.0", "0x1", ""]


@pytest.fixture(scope="module")
def harness(tmp_path_factory: pytest.TempPathFactory, embedded_data_dir: Path) -> Iterator[Harness]:
    workdir = tmp_path_factory.mktemp("numbers")
    with portal_harness(workdir, embedded_data_dir, Clock()) as made:
        yield made


@pytest.fixture(scope="module")
def system(harness: Harness) -> dict[str, str]:
    return bearer(harness.backend_token("system/*.rs"))


@pytest.fixture(scope="module")
def instance(harness: Harness, system: dict[str, str]) -> str:
    found = harness.client.get("/dicomweb/instances?Modality=CT&limit=1", headers=system).json()[0]
    study, series, sop = (found[tag]["Value"][0] for tag in ("0020000D", "0020000E", "00080018"))
    return f"/dicomweb/studies/{study}/series/{series}/instances/{sop}"


@pytest.mark.parametrize("text", NOT_ASCII)
def test_the_parser_takes_ascii_digits_only(text: str) -> None:
    with pytest.raises(BadRequest, match="Parameter 'n'"):
        whole_number("n", text)


def test_the_parser_checks_bounds_and_size() -> None:
    assert whole_number("n", "007") == 7
    assert whole_number("n", "100", minimum=1, maximum=100) == 100
    for text in ("0", "101", "9" * 19, "1" + "0" * 5000):
        with pytest.raises(BadRequest, match="out of range"):
            whole_number("n", text, minimum=1, maximum=100)


@pytest.mark.parametrize("text", LOOK_LIKE_DIGITS)
@pytest.mark.parametrize("name", ["_count", "_offset"])
def test_fhir_paging(harness: Harness, system: dict[str, str], name: str, text: str) -> None:
    for resource in ("ImagingStudy", "DocumentReference", "Patient", "AuditEvent"):
        response = harness.client.get(f"/fhir/{resource}", params={name: text}, headers=system)
        assert response.status_code == 400, (resource, response.text)
        outcome = response.json()
        assert outcome["resourceType"] == "OperationOutcome"
        assert f"'{name}'" in outcome["issue"][0]["diagnostics"]


def test_fhir_dates_take_ascii_digits_only(harness: Harness, system: dict[str, str]) -> None:
    arabic_indic_2024 = "\u0662\u0660\u0662\u0664"
    response = harness.client.get(f"/fhir/ImagingStudy?started={arabic_indic_2024}", headers=system)
    assert response.status_code == 400, response.text
    assert "'started'" in response.json()["issue"][0]["diagnostics"]


@pytest.mark.parametrize("text", LOOK_LIKE_DIGITS)
@pytest.mark.parametrize("name", ["limit", "offset"])
def test_qido_paging(harness: Harness, system: dict[str, str], name: str, text: str) -> None:
    for path in ("/dicomweb/studies", "/dicomweb/series", "/dicomweb/instances"):
        response = harness.client.get(path, params={name: text}, headers=system)
        assert response.status_code == 400, (path, response.text)
        assert f"'{name}'" in response.headers["warning"]


@pytest.mark.parametrize("text", [*LOOK_LIKE_DIGITS, "0", "101"])
def test_rendered_quality(
    harness: Harness, system: dict[str, str], instance: str, text: str
) -> None:
    for tail in ("rendered", "thumbnail", "frames/1/rendered"):
        response = harness.client.get(
            f"{instance}/{tail}", params={"quality": text}, headers=system
        )
        assert response.status_code == 400, (tail, response.text)
        assert "'quality'" in response.headers["warning"]


def test_a_content_length_that_is_not_a_number(harness: Harness) -> None:
    writer = bearer(harness.backend_token("system/ImagingStudy.cr"))
    stow = harness.client.post(
        "/dicomweb/studies",
        content=b"x",
        headers={
            **writer,
            "Content-Type": 'multipart/related; type="application/dicom"; boundary=b',
            "Content-Length": b"\xb2",  # type: ignore[dict-item]
        },
    )
    assert stow.status_code == 400 and "'Content-Length'" in stow.headers["warning"]
    token = harness.client.post(
        "/oauth/token",
        content=b"grant_type=x",
        headers={"Content-Type": b"application/x-www-form-urlencoded", "Content-Length": b"\xb2"},
    )
    assert token.status_code == 400 and token.json()["error"] == "invalid_request"


@pytest.fixture(scope="module")
def signed_in(harness: Harness) -> dict[str, Any]:
    patient = enroll(harness)
    assert portal_sign_in(harness.client, patient.code) == 303
    return {"studies": shareable(harness.client)}


@pytest.mark.parametrize("text", LOOK_LIKE_DIGITS)
def test_portal_pages(harness: Harness, signed_in: dict[str, Any], text: str) -> None:
    study = signed_in["studies"][0]
    for path, name in [(f"/portal/studies/{study}", "image"), ("/portal/activity", "page")]:
        response = harness.client.get(path, params={name: text})
        assert response.status_code == 400, (path, response.text[:300])
        assert response.headers["content-type"].startswith("text/html")
        assert f"Parameter &#39;{name}&#39;" in response.text
    good = harness.client.get(f"/portal/studies/{study}", params={"image": "99999"})
    assert good.status_code == 200  # past the end is the last image


@pytest.mark.parametrize("text", LOOK_LIKE_DIGITS)
def test_share_days(harness: Harness, signed_in: dict[str, Any], text: str) -> None:
    status, page, link, _ = create_share(harness.client, signed_in["studies"][:1], days=text)
    assert status in (200, 400) and link is None
    assert "from 1 to 90 days" in page
