"""An outbound STOW-RS client: POST instances to an organization's DICOMweb endpoint.

Credentials: none, a static bearer token, or OAuth 2.0 client credentials (client id
and secret by HTTP Basic at the token URL; the token is reused until shortly before it
expires, and fetched again once after a 401). The answer's Referenced SOP Sequence and
Failed SOP Sequence (PS3.18 10.5.3) say what was stored and what was refused.

Errors are two types: :class:`StowUnavailable` (worth trying again later: the network,
5xx, 408, 429) and :class:`StowRefused` (the request itself is refused: other 4xx).
Secrets never appear in their messages.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx
from pydantic import SecretStr

from gateway.dicomweb.stow import multipart_request

RETRYABLE = {408, 425, 429, 500, 502, 503, 504}


@dataclass(frozen=True)
class StowTarget:
    """Where and how to push: ``url`` is the DICOMweb base (``/studies`` is appended)."""

    url: str
    auth: str  # none | bearer | oauth
    secret: SecretStr | None = None  # the bearer token, or the OAuth client secret
    token_url: str | None = None
    client_id: str | None = None
    scope: str | None = None

    def __repr__(self) -> str:  # the secret stays out of logs and tracebacks
        return f"StowTarget(url={self.url!r}, auth={self.auth!r})"


class StowUnavailable(Exception):
    """Try again later."""


class StowRefused(Exception):
    """Trying again will not help."""


@dataclass
class StowAnswer:
    stored: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    status: int = 200


def _text(item: dict[str, Any], tag: str) -> str | None:
    values = item.get(tag, {}).get("Value") or []
    return str(values[0]) if values else None


def parse_answer(answer: Any) -> StowAnswer:
    """A STOW-RS answer in DICOM JSON (an object, or a list of one)."""
    if isinstance(answer, list):
        answer = answer[0] if answer else {}
    if not isinstance(answer, dict):
        return StowAnswer()
    parsed = StowAnswer()
    for item in answer.get("00081199", {}).get("Value", []) or []:
        uid = _text(item, "00081155") if isinstance(item, dict) else None
        if uid:
            parsed.stored.append(uid)
    for item in answer.get("00081198", {}).get("Value", []) or []:
        if not isinstance(item, dict):
            continue
        uid = _text(item, "00081155")
        if uid:
            parsed.failed[uid] = f"failure reason {_text(item, '00081197') or 'not given'}"
    return parsed


class StowClient:
    def __init__(self, target: StowTarget, *, timeout: float = 60.0) -> None:
        self.target = target
        self._http = httpx.AsyncClient(timeout=httpx.Timeout(timeout, connect=min(timeout, 10)))
        self._token: str | None = None
        self._token_until = 0.0

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _authorization(self, fresh: bool = False) -> dict[str, str]:
        target = self.target
        if target.auth == "bearer" and target.secret is not None:
            return {"Authorization": f"Bearer {target.secret.get_secret_value()}"}
        if target.auth != "oauth":
            return {}
        if fresh or self._token is None or time.monotonic() >= self._token_until:
            await self._fetch_token()
        return {"Authorization": f"Bearer {self._token}"}

    async def _fetch_token(self) -> None:
        target = self.target
        assert target.token_url and target.client_id and target.secret is not None
        form = {"grant_type": "client_credentials"}
        if target.scope:
            form["scope"] = target.scope
        try:
            response = await self._http.post(
                target.token_url,
                data=form,
                auth=(target.client_id, target.secret.get_secret_value()),
                headers={"Accept": "application/json"},
            )
        except httpx.HTTPError as exc:
            raise StowUnavailable(
                f"the token endpoint did not answer ({type(exc).__name__})"
            ) from None
        if response.status_code in RETRYABLE:
            raise StowUnavailable(f"the token endpoint answered {response.status_code}")
        try:
            body = response.json()
        except ValueError:
            body = {}
        token = body.get("access_token") if isinstance(body, dict) else None
        if response.status_code != 200 or not isinstance(token, str):
            error = body.get("error", "") if isinstance(body, dict) else ""
            raise StowRefused(
                f"the token endpoint refused the client credentials "
                f"({response.status_code} {str(error)[:60]})".rstrip()
            )
        lifetime = body.get("expires_in", 300)
        lifetime = lifetime if isinstance(lifetime, int | float) and lifetime > 0 else 300
        self._token = token
        self._token_until = time.monotonic() + max(lifetime - 30, lifetime / 2)

    async def send(self, parts: Sequence[bytes]) -> StowAnswer:
        """Store Part 10 files in one multipart/related request."""
        body, content_type = multipart_request(parts)
        headers = {"Content-Type": content_type, "Accept": "application/dicom+json"}
        url = f"{self.target.url}/studies"
        response = await self._post(url, body, {**headers, **await self._authorization()})
        if response.status_code == 401 and self.target.auth == "oauth":
            fresh = await self._authorization(fresh=True)
            response = await self._post(url, body, {**headers, **fresh})
        status = response.status_code
        if status in RETRYABLE:
            raise StowUnavailable(f"the STOW-RS endpoint answered {status}")
        if status not in (200, 202, 409):
            raise StowRefused(f"the STOW-RS endpoint refused the request ({status})")
        try:
            answer = parse_answer(response.json() if response.content else {})
        except ValueError:
            answer = StowAnswer()
        answer.status = status
        return answer

    async def _post(self, url: str, body: bytes, headers: dict[str, str]) -> httpx.Response:
        try:
            return await self._http.post(url, content=body, headers=headers)
        except httpx.HTTPError as exc:
            raise StowUnavailable(
                f"the STOW-RS endpoint did not answer ({type(exc).__name__})"
            ) from None
