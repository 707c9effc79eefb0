"""Forms over their limits get a clear 400 (or 413), never a 500, on every form-reading route.

Starlette's form parser refuses more fields than allowed, or a field over its
size, with an exception: the OAuth API turned it into a 500, the pages into a
bare text answer. A body sent without Content-Length was read to its end.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.auth.client_auth import JWT_BEARER
from tests.auth.test_authorize import _make_ehr, hidden
from tests.auth.test_oauth_api import Harness, bearer
from tests.portal.support import (
    Clock,
    create_share,
    enroll,
    portal_harness,
    portal_sign_in,
    shareable,
)

OAUTH_API = ["/oauth/token", "/oauth/revoke", "/oauth/introspect"]
PAGES = ["/oauth/authorize", "/oauth/signin", "/oauth/consent", "/portal/signin"]


@pytest.fixture(scope="module")
def harness(tmp_path_factory: pytest.TempPathFactory, embedded_data_dir: Path) -> Iterator[Harness]:
    with portal_harness(tmp_path_factory.mktemp("forms"), embedded_data_dir, Clock()) as made:
        yield made


def many_fields(count: int) -> dict[str, str]:
    return {f"f{n}": "x" for n in range(count)}


def chunked(size: int) -> Iterator[bytes]:
    """A body of ``size`` bytes with no Content-Length (httpx sends it chunked)."""
    yield b"grant_type=authorization_code&code="
    for _ in range(size // 65536):
        yield b"a" * 65536


@pytest.mark.parametrize("path", OAUTH_API)
def test_too_many_fields_is_400_invalid_request(harness: Harness, path: str) -> None:
    answer = harness.client.post(path, data=many_fields(2000))
    assert answer.status_code == 400, answer.text
    body = answer.json()
    assert body["error"] == "invalid_request"
    assert "64 fields" in body["error_description"]


@pytest.mark.parametrize("path", OAUTH_API)
def test_a_huge_field_without_length_is_400_invalid_request(harness: Harness, path: str) -> None:
    answer = harness.client.post(
        path,
        content=chunked(2 << 20),
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert answer.status_code == 400, answer.text
    assert answer.json()["error"] == "invalid_request"
    assert "larger than 64 KiB" in answer.json()["error_description"]


@pytest.mark.parametrize("path", PAGES)
def test_pages_answer_an_html_400_for_too_many_fields(harness: Harness, path: str) -> None:
    answer = harness.client.post(path, data=many_fields(5000))
    assert answer.status_code == 400, answer.text
    assert answer.headers["content-type"].startswith("text/html")
    assert "at most" in answer.text and "fields" in answer.text


@pytest.mark.parametrize("path", PAGES)
def test_pages_answer_an_html_413_for_a_huge_body(harness: Harness, path: str) -> None:
    answer = harness.client.post(
        path,
        content=chunked(2 << 20),
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert answer.status_code == 413, answer.text
    assert answer.headers["content-type"].startswith("text/html")
    assert "larger than 256 KiB" in answer.text


def test_signed_in_portal_forms_and_share_pin_forms(harness: Harness) -> None:
    patient = enroll(harness)
    client = harness.client
    client.cookies.clear()
    assert portal_sign_in(client, patient.code) == 303
    studies = shareable(client)
    assert studies
    csrf = hidden(client.get("/portal/shares").text, "csrf_token")
    crowded = client.post("/portal/shares", data={"csrf_token": csrf, **many_fields(600)})
    assert crowded.status_code == 400 and crowded.headers["content-type"].startswith("text/html")
    assert "fields" in crowded.text
    status, _, link, _ = create_share(client, studies[:1])
    assert status == 201 and link
    client.cookies.clear()
    client.get(link)
    pin = client.post(link, data=many_fields(9))
    assert pin.status_code == 400 and pin.headers["content-type"].startswith("text/html")
    assert "fields" in pin.text
    closing = client.post("/share/view/close", data=many_fields(9))
    assert closing.status_code == 400 and "fields" in closing.text


def test_the_launch_api_refuses_a_huge_body_with_json(harness: Harness) -> None:
    ehr_id, ehr_key = harness.backend_client(scope="system/*.rs")
    harness.call(_make_ehr, harness, ehr_id)
    ehr_token = harness.client.post(
        "/oauth/token",
        data={
            "grant_type": "client_credentials",
            "client_assertion_type": JWT_BEARER,
            "client_assertion": harness.assertion(ehr_id, ehr_key),
        },
    ).json()
    context = {"patient": "p-1", "intent": "x" * (1 << 20)}
    answer = harness.client.post("/oauth/launch", json=context, headers=bearer(ehr_token))
    assert answer.status_code == 413
    assert answer.json()["error"] == "invalid_request"


@pytest.mark.parametrize("name", ['sco"pe', "sco\\pe", "scopé", "sc\x7fope"])
@pytest.mark.parametrize("path", OAUTH_API)
def test_a_repeated_odd_parameter_name_is_400_not_500(
    harness: Harness, path: str, name: str
) -> None:
    # RFC 6749 forbids '"', '\\' and non-ASCII in error_description, and authlib raises
    # ValueError building such an error: the description that quotes the name must be safe.
    answer = harness.client.post(
        path,
        content=f"grant_type=x&{name}=a&{name}=b".encode(),
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert answer.status_code == 400, answer.text
    body = answer.json()
    assert body["error"] == "invalid_request"
    assert "is repeated" in body["error_description"]
