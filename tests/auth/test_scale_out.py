"""Two gateway processes on one PostgreSQL agree on tokens and revocations at once."""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path

import httpx
import pytest
from joserfc import jwt
from joserfc.jwk import RSAKey

from gateway.auth.client_auth import JWT_BEARER
from gateway.auth.clients import ClientKind
from gateway.auth.service import AuthServices
from gateway.store.database import Database
from tests.conftest import make_settings, serve_gateway
from tests.support.postgres import throwaway_database

pytestmark = [pytest.mark.postgres, pytest.mark.slow]
PUBLIC = "https://images.example.org"


def assertion(client_id: str, key: RSAKey, token_url: str) -> str:
    claims = {
        "iss": client_id,
        "sub": client_id,
        "aud": token_url,
        "exp": int(time.time()) + 240,
        "jti": uuid.uuid4().hex,
    }
    header = {"alg": "RS384", "kid": key.kid, "typ": "JWT"}
    return jwt.encode(header, claims, key, algorithms=["RS384"])


def test_a_token_from_one_replica_works_and_dies_on_the_other(
    tmp_path: Path, embedded_data_dir: Path
) -> None:
    key = RSAKey.generate_key(2048, parameters={"kid": "scale-1"})
    with throwaway_database() as url:
        # Replicas behind one load balancer share one public address.
        shared = {
            "data_dir": str(embedded_data_dir),
            "database_url": url,
            "auth_required": "true",
            "public_url": PUBLIC,
        }
        with serve_gateway(tmp_path / "a", **shared) as first:
            with serve_gateway(tmp_path / "b", **shared) as second:
                settings = make_settings(embedded_data_dir, database_url=url)

                async def register() -> str:
                    database = Database(url)
                    auth = AuthServices.build(settings, database.sessions)
                    try:
                        created = await auth.clients.add(
                            name="Backend",
                            kind=ClientKind.backend,
                            jwks={"keys": [key.as_dict(private=False)]},
                            scope="system/*.rs",
                            operator=True,
                        )
                        return created.client.client_id
                    finally:
                        await auth.aclose()
                        await database.dispose()

                client_id = asyncio.run(register())

                def form(**extra: str) -> dict[str, str]:
                    return {
                        "client_assertion_type": JWT_BEARER,
                        "client_assertion": assertion(client_id, key, f"{PUBLIC}/oauth/token"),
                        **extra,
                    }

                issued = httpx.post(
                    f"{first}/oauth/token", data=form(grant_type="client_credentials")
                )
                assert issued.status_code == 200, issued.text
                bearer = {"Authorization": f"Bearer {issued.json()['access_token']}"}
                assert httpx.get(f"{second}/fhir/ImagingStudy", headers=bearer).status_code == 200
                assert httpx.get(f"{first}/fhir/ImagingStudy", headers=bearer).status_code == 200
                # The jti cache is shared too: the same assertion is refused on the other one.
                replay = form(grant_type="client_credentials")
                assert httpx.post(f"{first}/oauth/token", data=replay).status_code == 200
                refused = httpx.post(f"{second}/oauth/token", data=replay)
                assert refused.status_code == 401 and "jti" in refused.json()["error_description"]
                revoked = httpx.post(
                    f"{second}/oauth/revoke",
                    data=form(token=issued.json()["access_token"]),
                )
                assert revoked.status_code == 200
                assert httpx.get(f"{first}/fhir/ImagingStudy", headers=bearer).status_code == 401
                assert httpx.get(f"{second}/fhir/ImagingStudy", headers=bearer).status_code == 401
