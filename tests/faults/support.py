"""Shared by the fault tests: findings collected and reported together, and set-up steps
done directly on the database (a client, an enrolled patient) while it is reachable."""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
from joserfc import jwt
from joserfc.jwk import RSAKey

from gateway.auth.client_auth import JWT_BEARER
from gateway.auth.clients import ClientKind
from gateway.auth.service import AuthServices
from gateway.store.database import Database
from tests.conftest import make_settings

PASSPHRASE = "correct horse battery"
T = TypeVar("T")


class Findings:
    """Every failed expectation of a scenario, so one run names them all."""

    def __init__(self) -> None:
        self.failed: list[str] = []

    def expect(self, ok: object, message: str) -> bool:
        if not ok:
            self.failed.append(message)
        return bool(ok)

    def check(self) -> None:
        if self.failed:
            report = f"{len(self.failed)} expectation(s) failed:\n- " + "\n- ".join(self.failed)
            pytest.fail(report, pytrace=False)


def timed(call: Callable[[], T]) -> tuple[T | Exception, float]:
    started = time.monotonic()
    try:
        result: T | Exception = call()
    except Exception as exc:
        result = exc
    return result, time.monotonic() - started


def hidden(html: str, name: str) -> str:
    found = re.search(rf'name="{name}" value="([^"]*)"', html)
    assert found, f"no {name} in page"
    return found.group(1)


class Backend:
    """A backend client registered directly in the database; it signs its own assertions."""

    def __init__(self, url: str, data_dir: Path, scope: str = "system/*.cruds") -> None:
        self.key = RSAKey.generate_key(2048, parameters={"kid": f"k-{uuid.uuid4().hex[:6]}"})
        self.scope = scope
        settings = make_settings(data_dir, database_url=url)

        async def register() -> str:
            database = Database(url)
            auth = AuthServices.build(settings, database.sessions)
            try:
                created = await auth.clients.add(
                    name="Fault test system",
                    kind=ClientKind.backend,
                    jwks={"keys": [self.key.as_dict(private=False)]},
                    scope=scope,
                    operator=True,
                )
                return str(created.client.client_id)
            finally:
                await auth.aclose()
                await database.dispose()

        self.client_id = asyncio.run(register())

    def form(self, token_url: str) -> dict[str, str]:
        claims = {
            "iss": self.client_id,
            "sub": self.client_id,
            "aud": token_url,
            "exp": int(time.time()) + 240,
            "jti": uuid.uuid4().hex,
        }
        header = {"alg": "RS384", "kid": self.key.kid, "typ": "JWT"}
        return {
            "grant_type": "client_credentials",
            "scope": self.scope,
            "client_assertion_type": JWT_BEARER,
            "client_assertion": jwt.encode(header, claims, self.key, algorithms=["RS384"]),
        }

    def token(self, base: str) -> dict[str, str]:
        answer = httpx.post(f"{base}/oauth/token", data=self.form(f"{base}/oauth/token"))
        assert answer.status_code == 200, answer.text
        return {"Authorization": f"Bearer {answer.json()['access_token']}"}


def enroll_patient(url: str, data_dir: Path, patient_fhir_id: str) -> str:
    """Enroll and activate a patient directly in the database; their access code."""
    settings = make_settings(data_dir, database_url=url)

    async def run() -> str:
        database = Database(url)
        auth = AuthServices.build(settings, database.sessions)
        try:
            account = await auth.accounts.enroll_patient(patient_fhir_id, "1961-04-12", "Jane")
            await auth.accounts.activate(account.login, "1961-04-12", PASSPHRASE)
            return str(account.login)
        finally:
            await auth.aclose()
            await database.dispose()

    return asyncio.run(run())


def add_public_client(url: str, data_dir: Path, redirect_uri: str) -> str:
    settings = make_settings(data_dir, database_url=url)

    async def run() -> str:
        database = Database(url)
        auth = AuthServices.build(settings, database.sessions)
        try:
            created = await auth.clients.add(
                name="Fault test app", kind=ClientKind.public, redirect_uris=[redirect_uri]
            )
            return str(created.client.client_id)
        finally:
            await auth.aclose()
            await database.dispose()

    return asyncio.run(run())


def portal_session(base: str, access_code: str) -> httpx.Client:
    """An HTTP client signed in to the portal."""
    client = httpx.Client(base_url=base, timeout=30)
    page = client.get("/portal/signin")
    answer = client.post(
        "/portal/signin",
        data={
            "csrf_token": hidden(page.text, "csrf_token"),
            "mode": "patient",
            "access_code": access_code,
            "passphrase": PASSPHRASE,
        },
    )
    assert answer.status_code in (200, 303), answer.text
    return client


def retry_after_ok(response: Any) -> bool:
    value = response.headers.get("retry-after", "") if hasattr(response, "headers") else ""
    return value.isascii() and value.isdigit()
