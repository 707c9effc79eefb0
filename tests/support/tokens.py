"""Tokens as an authorization-code launch ends, for any account and context."""

from __future__ import annotations

import uuid
from typing import Any

from gateway.auth.clients import ClientKind
from gateway.auth.tokens import s256
from tests.auth.test_oauth_api import Harness, bearer


def code_token(
    harness: Harness, scope: str, context: dict[str, Any], account_id: str
) -> dict[str, str]:
    """The bearer header of a token issued for a code created directly (no pages)."""
    client = harness.call(
        harness.services.auth.clients.add,
        name=f"App {uuid.uuid4().hex[:6]}",
        kind=ClientKind.public,
        redirect_uris=["https://app.example/cb"],
    ).client
    verifier = uuid.uuid4().hex * 2
    code = harness.call(
        harness.services.auth.tokens.create_code,
        client_id=client.client_id,
        account_id=account_id,
        scope=scope.split(),
        context=context,
        redirect_uri="https://app.example/cb",
        code_challenge=s256(verifier),
        nonce=None,
    )
    answer = harness.client.post(
        "/oauth/token",
        data={
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": "https://app.example/cb",
            "code_verifier": verifier,
            "client_id": client.client_id,
        },
    )
    assert answer.status_code == 200, answer.text
    return bearer(answer.json())


def practitioner_token(
    harness: Harness, scope: str = "openid fhirUser user/*.rs"
) -> dict[str, str]:
    """A physician's token: a new Practitioner account, its fhirUser in the context."""
    doctor = harness.call(
        harness.services.auth.accounts.add_practitioner,
        f"dr.{uuid.uuid4().hex[:8]}",
        "House^Gregory",
        "a long password here",
    )
    fhir_user = f"{harness.settings.fhir_base_url}/Practitioner/{doctor.id}"
    return code_token(harness, scope, {"fhirUser": fhir_user}, doctor.id)
