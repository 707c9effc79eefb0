"""Hypothesis over the whole route table: nothing a client sends gets a 5xx, a hang or a
malformed error.

Every route of ``create_app`` (Mounts walked, so new routes are covered) gets
requests with odd path parameters, every query parameter name its area knows
plus random ones, random bodies and headers, and real credentials (patient,
practitioner, system and admin tokens; a portal session; an opened share).
It runs in-process on the embedded store and SQLite with tokens required,
about 1,500 requests, seeded. Problems are collected rather than stopping at
the first, so one run lists every distinct one with the request that shows it
(and the server's traceback when it logged one).
"""

from __future__ import annotations

import asyncio
import logging
import time
import traceback
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from io import BytesIO
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from pydicom import dcmread
from pydicom.uid import generate_uid

from tests.auth.test_authorize import hidden
from tests.auth.test_oauth_api import Harness
from tests.fuzz.strategies import (
    FuzzRequest,
    Pools,
    RouteInfo,
    request_for,
    route_table,
    weighted,
)
from tests.portal.support import create_share, enroll, enter_pin, portal_sign_in, shareable
from tests.support.browsers import _WithServices
from tests.support.stores import private_store

REQUESTS = int(__import__("os").environ.get("FUZZ_REQUESTS", "1500"))
SLOW_SECONDS = 5.0
# Reached an endpoint (its own methods); a router's own 404/405 has no area format.
FORMATTED_AREAS = ("fhir", "oauth", "admin", "dicomweb")
OAUTH_JSON = (
    "/oauth/token",
    "/oauth/introspect",
    "/oauth/revoke",
    "/oauth/register",
    "/oauth/launch",
)


@dataclass
class Target:
    harness: Harness
    routes: list[RouteInfo]
    pools: Pools
    cookies: dict[str, dict[str, str]]
    csrf: dict[str, str]


@dataclass
class Problems:
    """Distinct problems, each with the first request that showed it."""

    found: dict[tuple[str, ...], tuple[int, str]] = field(default_factory=dict)
    statuses: Counter[tuple[str, int]] = field(default_factory=Counter)

    def add(self, key: tuple[str, ...], report: str) -> None:
        count, first = self.found.get(key, (0, report))
        self.found[key] = (count + 1, first)

    def summary(self) -> str:
        lines = [f"{len(self.found)} distinct problem(s):"]
        for key, (count, report) in sorted(self.found.items()):
            lines.append(f"\n=== {' | '.join(key)} ({count} request(s)); first:\n{report}")
        return "\n".join(lines)


class ServerErrors(logging.Handler):
    """Tracebacks the gateway logs while a request runs."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.seen: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.exc_info:
            self.seen.append("".join(traceback.format_exception(*record.exc_info))[-1500:])


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory, fixture_files: list[Path]) -> Iterator[Target]:
    datasets = [dcmread(p) for p in fixture_files]
    with private_store(
        ("embedded", "sqlite"), tmp_path_factory.mktemp("fuzz"), datasets
    ) as harness:
        yield _prepare(harness, datasets)


def _prepare(harness: Harness, datasets: list[Any]) -> Target:
    patient = enroll(harness)
    # Tokens the fuzz may revoke, refresh or introspect; the ones it sends as credentials
    # (``tokens``) are never in a form, so they stay valid to the end.
    spare = {
        "patient": harness.patient_token(patient.fhir_id, "patient/*.rs offline_access"),
        "system": harness.backend_token("system/*.rs"),
    }
    tokens = {
        "patient": harness.patient_token(
            patient.fhir_id, "patient/*.rs offline_access openid fhirUser"
        ),
        "patient-images": harness.patient_token(patient.fhir_id, "patient/ImagingStudy.rs"),
        "practitioner": harness.practitioner_token(),
        "system": harness.backend_token("system/*.rs"),
        "writer": harness.backend_token("system/*.cruds"),
        "admin": harness.backend_token("admin/enrollments"),
    }
    client = harness.client
    # A portal session, and an opened share, each in a cookie jar of its own.
    assert portal_sign_in(client, patient.code) == 303
    studies = shareable(client)
    status, _, link, pin = create_share(client, studies[:2])
    assert status == 201 and link and pin
    # A second link for the fuzz to guess PINs at (and lock), so the opened one stays open.
    guessed = create_share(client, studies[:1])[2]
    assert guessed
    portal_page = client.get("/portal/shares").text
    portal_cookies = dict(client.cookies)
    client.cookies.clear()
    assert enter_pin(client, link, pin).status_code in (302, 303)
    share_page = client.get("/share/view").text
    share_cookies = dict(client.cookies)
    client.cookies.clear()

    uids: dict[str, set[str]] = {"study": set(), "series": set(), "instance": set()}
    for ds in datasets:
        uids["study"].add(str(ds.StudyInstanceUID))
        uids["series"].add(str(ds.SeriesInstanceUID))
        uids["instance"].add(str(ds.SOPInstanceUID))
    parts = []
    for number, ds in enumerate(datasets[:3]):
        copy = ds.copy()
        # Derived, not random: the parts keep their lengths from run to run, and so do the
        # draws that cut them short.
        copy.SOPInstanceUID = generate_uid(entropy_srcs=[f"fuzz-part-{number}"])
        copy.file_meta.MediaStorageSOPInstanceUID = copy.SOPInstanceUID
        buffer = BytesIO()
        copy.save_as(buffer, enforce_file_format=True)
        parts.append(buffer.getvalue())
    studies_list = sorted(uids["study"])
    by_name = {
        "study": studies_list,
        "uid": studies_list,
        "series": sorted(uids["series"]),
        "instance": sorted(uids["instance"]),
        "id": [*studies_list[:5], *sorted(uids["instance"])[:5], patient.fhir_id, "dicomweb"],
        "patient": [patient.fhir_id, f"Patient/{patient.fhir_id}"],
        "subject": [f"Patient/{patient.fhir_id}"],
        "StudyInstanceUID": studies_list,
        "identifier": [f"urn:oid:{u}" for u in studies_list[:5]] + ["HOSP-A|IS-1001"],
        "client_id": [spare["patient"]["client_id"], spare["system"]["client_id"]],
        "redirect_uri": ["https://app.example/cb"],
        "refresh_token": [spare["patient"]["refresh_token"]],
        "token": [t["access_token"] for t in spare.values()] + [spare["patient"]["refresh_token"]],
        "grant_type": ["authorization_code", "refresh_token", "client_credentials", "password"],
        "grant": ["x"],
        "share": ["x"],
        "frame": ["1", "2", "0", "\uff11"],
        "frames": ["1", "1,2", "0", "1,,2"],
        "tags": ["7FE00010", "00420011", "7FE00010/x"],
        "account_id": [patient.account_id],
        "token_param": [guessed.rsplit("/", 1)[-1]],
        "path": [
            "ImagingStudy",
            "metadata",
            "metadata/",
            "viewer/index.html",
            "Patient/x/_history",
        ],
    }
    by_name["token"] = by_name["token"] + by_name["token_param"]
    authorizations = [f"Bearer {t['access_token']}" for t in tokens.values()]
    return Target(
        harness,
        route_table(list(harness.client.app.routes)),  # type: ignore[attr-defined]
        Pools(
            by_name=by_name,
            anywhere=[patient.fhir_id, studies_list[0], guessed],
            authorizations=authorizations,
            dicom_parts=parts,
        ),
        {"none": {}, "portal": portal_cookies, "share": share_cookies},
        {
            "portal": hidden(portal_page, "csrf_token"),
            "share": hidden(share_page, "csrf_token"),
        },
    )


def _check(request: FuzzRequest, response: httpx.Response, problems: Problems, report: str) -> None:
    route, status = request.route, response.status_code
    problems.statuses[(route.template, status)] += 1
    where = f"{request.method} {route.template}"
    if status >= 500:
        problems.add((where, f"HTTP {status}"), report)
    for name, value in response.headers.raw:
        if any((b < 0x20 and b != 0x09) or b == 0x7F for b in value):
            problems.add((where, f"control character in {name.decode()} header"), report)
    if status == 405 and request.method in response.headers.get("allow", ""):
        problems.add((where, f"405 though Allow lists {request.method}"), report)
    if status < 400 or request.method == "HEAD" or request.method not in route.methods:
        return
    area = route.area
    if area not in FORMATTED_AREAS or (
        status == 404 and area != "fhir" and "warning" not in response.headers
    ):
        return
    if area == "fhir":
        try:
            outcome = orjson.loads(response.content)
            ok = outcome.get("resourceType") == "OperationOutcome" and outcome.get("issue")
        except (orjson.JSONDecodeError, AttributeError):
            ok = False
        if not ok:
            problems.add((where, f"HTTP {status} without an OperationOutcome"), report)
    elif area in ("oauth", "admin") and route.template in (*OAUTH_JSON, "/admin/enrollments"):
        try:
            error = orjson.loads(response.content).get("error")
        except (orjson.JSONDecodeError, AttributeError):
            error = None
        if not isinstance(error, str) or not error:
            problems.add((where, f"HTTP {status} without an OAuth 'error'"), report)
    elif area == "dicomweb" and not response.headers.get("warning", "").startswith("299 "):
        problems.add((where, f"HTTP {status} without a PS3.18 Warning header"), report)


async def _send(
    target: Target, request: FuzzRequest, problems: Problems, errors: ServerErrors
) -> None:
    transport = httpx.ASGITransport(
        app=_WithServices(target.harness), client=("203.0.113.9", 40000)
    )
    async with httpx.AsyncClient(
        transport=transport,
        base_url=target.harness.settings.public_url,
        cookies=target.cookies[request.identity],
    ) as client:
        errors.seen.clear()
        started = time.monotonic()
        built = client.build_request(
            request.method,
            request.path,
            headers=[(k.encode("latin-1"), v.encode("latin-1")) for k, v in request.headers],
            content=request.body.content if request.body else None,
        )
        try:
            response = await asyncio.wait_for(client.send(built), SLOW_SECONDS * 2)
        except TimeoutError:
            problems.add(
                (f"{request.method} {request.route.template}", "no answer"), request.describe()
            )
            return
        except Exception as exc:  # the app raised through the server: a 500 on the wire
            report = request.describe() + "\n" + "".join(traceback.format_exception(exc))[-1500:]
            problems.add(
                (f"{request.method} {request.route.template}", f"raised {type(exc).__name__}"),
                report,
            )
            return
        elapsed = time.monotonic() - started
    media_type = response.headers.get("content-type", "")
    report = (
        f"{request.describe()}\n  -> {response.status_code} {media_type} {response.content[:300]!r}"
    )
    if errors.seen:
        report += "\n  server traceback:\n" + errors.seen[-1]
    if elapsed > SLOW_SECONDS:
        problems.add(
            (f"{request.method} {request.route.template}", f"over {SLOW_SECONDS:.0f} s"), report
        )
    _check(request, response, problems, report)


def test_no_request_gets_a_5xx_a_hang_or_a_malformed_error(target: Target) -> None:
    problems = Problems()
    errors = ServerErrors()
    logging.getLogger().addHandler(errors)
    sent = 0

    @settings(
        max_examples=REQUESTS,
        derandomize=True,
        database=None,
        deadline=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
        print_blob=False,
    )
    @given(st.data())
    def fuzz(data: st.DataObject) -> None:
        nonlocal sent
        route = data.draw(st.sampled_from(weighted(target.routes)), label="route")
        request = data.draw(request_for(route, target.pools, target.csrf), label="request")
        sent += 1

        async def run() -> None:
            await _send(target, request, problems, errors)

        target.harness.client.portal.call(run)  # type: ignore[union-attr]

    try:
        fuzz()
    finally:
        logging.getLogger().removeHandler(errors)
    # What the requests got, by route: shown with -s, to see how deep the fuzz reaches.
    for (template, status), count in sorted(problems.statuses.items()):
        print(f"{count:5d}  {status}  {template}")
    assert sent >= REQUESTS * 0.9
    if problems.found:
        pytest.fail(problems.summary(), pytrace=False)
