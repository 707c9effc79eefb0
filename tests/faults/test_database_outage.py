"""PostgreSQL goes away under a running gateway, then comes back.

A real ``gateway serve`` reaches its database through a TCP proxy
(``tests/support/tcp_proxy.py``). Cutting the proxy refuses new connections
and resets the pooled ones, as a database restart or a network split does.
During the outage every area answers 503 with ``Retry-After`` in its own
format (FHIR OperationOutcome, OAuth ``temporarily_unavailable``, a portal
page, PS3.18 for DICOMweb), within seconds, and ``/readyz`` says 503 while
``/healthz`` stays 200. Once it is back, everything works without a restart.
"""

from __future__ import annotations

import time
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import orjson
import pytest

from fixtures.generate import BENCH_PATIENT_ID
from tests.faults.support import Backend, Findings, enroll_patient, portal_session, timed
from tests.support.gateway_process import GatewayProcess, gateway_process
from tests.support.postgres import throwaway_database
from tests.support.tcp_proxy import tcp_proxy

pytestmark = [pytest.mark.slow, pytest.mark.postgres]
ANSWER_WITHIN = 10.0


def _through(url: str, port: int) -> str:
    parts = urlsplit(url)
    netloc = parts.netloc.rsplit("@", 1)
    user = netloc[0] + "@" if len(netloc) == 2 else ""
    return parts._replace(netloc=f"{user}127.0.0.1:{port}").geturl()


def _json(response: httpx.Response) -> dict[str, object]:
    try:
        found = orjson.loads(response.content)
    except orjson.JSONDecodeError:
        return {}
    return found if isinstance(found, dict) else {}


def test_a_database_outage_answers_503_everywhere_and_heals(
    tmp_path: Path, embedded_data_dir: Path
) -> None:
    findings = Findings()
    with throwaway_database() as url, tcp_proxy(("127.0.0.1", 5432)) as proxy:
        with gateway_process(
            tmp_path / "gw",
            data_dir=str(embedded_data_dir),
            database_url=_through(url, proxy.port),
            auth_required="true",
        ) as gateway:
            base = gateway.url
            backend = Backend(url, embedded_data_dir)
            bearer = backend.token(base)
            found = httpx.get(
                f"{base}/fhir/Patient?identifier={BENCH_PATIENT_ID}", headers=bearer
            ).json()
            patient = found["entry"][0]["resource"]["id"]
            portal = portal_session(base, enroll_patient(url, embedded_data_dir, patient))

            def requests() -> dict[str, httpx.Response | Exception]:
                calls = {
                    "FHIR search": lambda: httpx.get(
                        f"{base}/fhir/ImagingStudy?patient={patient}", headers=bearer, timeout=30
                    ),
                    "QIDO": lambda: httpx.get(
                        f"{base}/dicomweb/studies", headers=bearer, timeout=30
                    ),
                    "token": lambda: httpx.post(
                        f"{base}/oauth/token", data=backend.form(f"{base}/oauth/token"), timeout=30
                    ),
                    "portal": lambda: portal.get("/portal/"),
                    "readyz": lambda: httpx.get(f"{base}/readyz", timeout=30),
                    "healthz": lambda: httpx.get(f"{base}/healthz", timeout=30),
                }
                answers: dict[str, httpx.Response | Exception] = {}
                for name, call in calls.items():
                    answer, seconds = timed(call)
                    findings.expect(
                        seconds < ANSWER_WITHIN, f"{name}: answered after {seconds:.1f} s"
                    )
                    answers[name] = answer
                return answers

            before = requests()
            for name, answer in before.items():
                assert isinstance(answer, httpx.Response) and answer.status_code == 200, (
                    name,
                    answer,
                )

            proxy.cut()
            during = requests()
            for name, answer in during.items():
                if not findings.expect(
                    isinstance(answer, httpx.Response), f"{name} during the outage: {answer!r}"
                ):
                    continue
                assert isinstance(answer, httpx.Response)
                status, text = answer.status_code, answer.text[:200]
                if name == "healthz":
                    findings.expect(status == 200, f"healthz during the outage: {status}")
                    continue
                findings.expect(
                    status == 503, f"{name} during the outage: HTTP {status} (want 503) {text!r}"
                )
                if name == "readyz":
                    continue
                findings.expect(
                    answer.headers.get("retry-after", "").isdigit(),
                    f"{name} during the outage: no Retry-After (HTTP {status})",
                )
                body = _json(answer)
                if name == "FHIR search":
                    findings.expect(
                        body.get("resourceType") == "OperationOutcome",
                        f"FHIR during the outage: not an OperationOutcome: {text!r}",
                    )
                elif name == "token":
                    findings.expect(
                        body.get("error") == "temporarily_unavailable",
                        f"token during the outage: error is {body.get('error')!r}, "
                        "want temporarily_unavailable",
                    )
                elif name == "portal":
                    findings.expect(
                        answer.headers.get("content-type", "").startswith("text/html"),
                        f"portal during the outage: not a page: {text!r}",
                    )
                elif name == "QIDO":
                    findings.expect(
                        answer.headers.get("warning", "").startswith("299 "),
                        f"QIDO during the outage: no PS3.18 Warning header ({status})",
                    )

            proxy.restore()
            after = requests()
            for name, answer in after.items():
                status = answer.status_code if isinstance(answer, httpx.Response) else answer
                findings.expect(status == 200, f"{name} after the outage: {status!r}")
            findings.expect(gateway.process and gateway.process.poll() is None, "gateway exited")
            portal.close()
    findings.check()


def test_serve_with_the_database_down_says_so_without_a_traceback(
    tmp_path: Path, embedded_data_dir: Path
) -> None:
    """Started while PostgreSQL is unreachable, ``gateway serve`` either stops with a
    plain message, or serves /healthz and answers /readyz 503 until the database is back;
    in neither case does it print a traceback."""
    findings = Findings()
    with throwaway_database() as url, tcp_proxy(("127.0.0.1", 5432)) as proxy:
        proxy.cut()
        gateway = GatewayProcess(
            tmp_path / "gw",
            data_dir=str(embedded_data_dir),
            database_url=_through(url, proxy.port),
            auth_required="true",
        )
        process = gateway.spawn()
        try:
            deadline = time.monotonic() + 20
            ready = None
            while time.monotonic() < deadline and process.poll() is None:
                try:
                    ready = httpx.get(f"{gateway.url}/readyz", timeout=2).status_code
                    break
                except httpx.TransportError:
                    time.sleep(0.1)
            findings.expect(
                process.poll() is not None or ready == 503,
                f"neither stopped nor serving /readyz 503 after 20 s (readyz: {ready})",
            )
            if process.poll() is None:
                proxy.restore()
                healed = None
                for _ in range(100):
                    healed = httpx.get(f"{gateway.url}/readyz", timeout=5).status_code
                    if healed == 200:
                        break
                    time.sleep(0.1)
                findings.expect(healed == 200, f"/readyz once the database is back: {healed}")
            else:
                findings.expect(process.returncode != 0, "stopped with status 0")
        finally:
            gateway.stop()
        log = gateway.log
        findings.expect(
            "Traceback" not in log, f"gateway serve printed a traceback:\n{log[-1500:]}"
        )
    findings.check()
