"""External authorization server mode: the gateway as Imaging Server for an EHR's SMART
authorization server (SMART Imaging Access, "Token validation and access enforcement").

With ``GATEWAY_EXTERNAL_AS_ISSUER`` set, a bearer token at ``/fhir`` and
``/dicomweb`` is not one of this gateway's: it is checked by RFC 7662 / SMART
token introspection at the configured endpoint, the gateway authenticating with
its client id and secret (HTTP Basic, RFC 7662 2.1).

- An active answer is kept per process for ``GATEWAY_EXTERNAL_AS_CACHE_SECONDS``
  and never past the token's ``exp``; an inactive one is not kept (the next
  request asks again), so a revocation at the server shows at the latest when
  the cached answer ends, and at once for a token not cached.
- The answer must be active, carry an ``exp`` in the future and, when it names
  an ``iss``, name the configured issuer.
- The server unreachable, timing out or answering 5xx is an outage: 503 with
  ``Retry-After`` (``ServiceUnavailable``), never a 401 that would make an app
  throw its token away.
- The token's ``patient`` is the EHR's Patient id. Its DICOM patients are found
  as the guide's identifiers page describes: the EHR's ``Patient/{id}`` is read
  (``GATEWAY_EXTERNAL_AS_FHIR_URL``, with the presented token), and each
  identifier ``system|value`` whose system ``GATEWAY_IDENTIFIER_ISSUERS`` maps to
  an IssuerOfPatientID names (issuer, PatientID). Identifiers of other systems
  are ignored, so an EHR patient never reaches a DICOM patient by an MRN
  alone. No mapping: the token sees none of the patient's studies.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qsl, urlencode

import httpx
from starlette.requests import Request

from gateway.auth import scopes
from gateway.auth.tokens import AccessGrant
from gateway.errors import ServiceUnavailable
from gateway.settings import Settings
from gateway.store.patients import PatientIndex

logger = logging.getLogger(__name__)
RETRY_AFTER = 10
_MAX_CACHED = 10_000


@dataclass(frozen=True)
class _Cached:
    grant: AccessGrant
    until: float  # time.time() after which the answer is asked for again


class ExternalTokens:
    """Bearer tokens of the external authorization server, checked by introspection."""

    def __init__(self, settings: Settings, index: PatientIndex) -> None:
        assert settings.external_as_introspection_url and settings.external_as_client_id
        secret = settings.external_as_client_secret
        self.settings = settings
        self.index = index
        self.url = settings.external_as_introspection_url
        self.issuer = settings.external_as_issuer
        self.client = httpx.AsyncClient(
            auth=(settings.external_as_client_id, secret.get_secret_value() if secret else ""),
            timeout=settings.external_as_timeout,
            headers={"Accept": "application/json"},
        )
        self.cache: dict[str, _Cached] = {}
        self.clock: Callable[[], float] = time.time  # seconds since the epoch (tests move it)

    async def aclose(self) -> None:
        await self.client.aclose()

    async def check(self, token: str) -> AccessGrant | None:
        """The token's grant when active; None when not (401). Raises ServiceUnavailable."""
        if not token or len(token) > 4096:
            return None
        key = hashlib.sha256(token.encode()).hexdigest()
        now = self.clock()
        cached = self.cache.get(key)
        if cached is not None and cached.until > now:
            return cached.grant
        self.cache.pop(key, None)
        answer = await self._introspect(token)
        grant = await self._grant(answer, token, key)
        if grant is None or grant.expires_at is None:
            return None
        until = min(grant.expires_at.timestamp(), now + self.settings.external_as_cache_seconds)
        if until > now:
            if len(self.cache) >= _MAX_CACHED:
                self._forget_expired(now)
            self.cache[key] = _Cached(grant, until)
        return grant

    def _forget_expired(self, now: float) -> None:
        for stale in [k for k, v in self.cache.items() if v.until <= now]:
            del self.cache[stale]
        if len(self.cache) >= _MAX_CACHED:
            self.cache.clear()

    async def _introspect(self, token: str) -> dict[str, Any]:
        try:
            response = await self.client.post(self.url, data={"token": token})
        except httpx.HTTPError as exc:
            logger.warning("authorization server unreachable for introspection: %s", type(exc))
            raise _down() from None
        if response.status_code >= 500 or response.status_code in (408, 429):
            logger.warning("authorization server answered introspection %s", response.status_code)
            raise _down()
        if response.status_code != 200:
            # 401/403: our credentials were refused. Not the caller's fault, and no
            # token can be checked: an outage of the arrangement, logged loudly.
            logger.error("introspection refused the gateway (%s)", response.status_code)
            raise _down()
        try:
            answer = response.json()
        except ValueError:
            raise _down() from None
        return answer if isinstance(answer, dict) else {}

    async def _grant(self, answer: dict[str, Any], token: str, key: str) -> AccessGrant | None:
        if answer.get("active") is not True:
            return None
        exp = answer.get("exp")
        if not isinstance(exp, int | float) or exp <= self.clock():
            return None  # a token without a lifetime cannot be cached within it
        if answer.get("iss") not in (None, self.issuer):
            return None
        client_id = str(answer.get("client_id") or "")
        if not client_id:
            return None
        context: dict[str, Any] = {}
        fhir_user = answer.get("fhirUser")
        if isinstance(fhir_user, str) and fhir_user:
            context["fhirUser"] = fhir_user
        patient = answer.get("patient")
        if isinstance(patient, str) and patient:
            local = await self._local_patients(patient, token)
            context["external_patient"] = patient
            context["patients"] = local
            # The token is confined to the patient even when no DICOM patient maps.
            unmapped = "unmapped-" + hashlib.sha256(patient.encode()).hexdigest()[:32]
            context["patient"] = local[0] if len(local) == 1 else unmapped
        issued = answer.get("iat")
        return AccessGrant(
            grant_id=f"external:{key[:32]}",
            client_id=client_id,
            account_id=str(answer.get("sub") or "") if fhir_user else None,
            scope=tuple(scopes.split(str(answer.get("scope") or ""))),
            context=context,
            expires_at=datetime.fromtimestamp(float(exp), UTC),
            issued_at=(
                datetime.fromtimestamp(float(issued), UTC)
                if isinstance(issued, int | float)
                else None
            ),
            external=True,
        )

    async def _local_patients(self, patient: str, token: str) -> list[str]:
        """This gateway's FHIR ids of the DICOM patients the EHR's patient names."""
        keys = [(issuer, value) for issuer, value in await self._identifiers(patient, token)]
        if not keys:
            return []
        ids = await self.index.ids_for(keys)
        return sorted({ids[key] for key in keys})

    async def _identifiers(self, patient: str, token: str) -> list[tuple[str, str]]:
        base = self.settings.external_as_fhir_url
        if not base or "/" in patient or len(patient) > 64:
            return []
        try:
            response = await self.client.get(
                f"{base}/Patient/{patient}",
                headers={"Authorization": f"Bearer {token}", "Accept": "application/fhir+json"},
                auth=None,  # the presented token, not the gateway's introspection credentials
            )
        except httpx.HTTPError:
            raise _down() from None
        if response.status_code >= 500:
            raise _down()
        if response.status_code != 200:
            logger.warning("the EHR answered %s for the token's Patient", response.status_code)
            return []
        try:
            resource = response.json()
        except ValueError:
            return []
        return identifier_keys(resource, self.settings.identifier_issuers)


def identifier_keys(resource: Any, issuers: dict[str, str]) -> list[tuple[str, str]]:
    """(IssuerOfPatientID, PatientID) for each identifier of a Patient whose system maps."""
    if not isinstance(resource, dict) or resource.get("resourceType") != "Patient":
        return []
    found = []
    for identifier in resource.get("identifier") or []:
        if not isinstance(identifier, dict):
            continue
        system, value = identifier.get("system"), identifier.get("value")
        if isinstance(system, str) and isinstance(value, str) and value and system in issuers:
            found.append((issuers[system], value))
    return sorted(set(found))


_PATIENT_PARAMETERS = ("patient", "subject", "patient:Patient", "subject:Patient")


def name_local_patients(request: Request, grant: AccessGrant) -> None:
    """Searches name the patient by the EHR's id (the guide: "the patient's FHIR logical ID
    in the source Clinical FHIR Server's namespace"); here that patient is this gateway's
    DICOM patients. Rewrite ``patient=`` / ``subject=`` values naming the EHR's patient."""
    ehr = grant.context.get("external_patient")
    local = grant.context.get("patients")
    if not ehr or not isinstance(local, list):
        return
    asked = request.scope.get("query_string", b"").decode("latin-1")
    pairs = parse_qsl(asked, keep_blank_values=True)
    changed = False
    rewritten = []
    for name, value in pairs:
        if name in _PATIENT_PARAMETERS:
            values = []
            for one in value.split(","):
                bare = one.strip().rsplit("Patient/", 1)[-1]
                if bare == ehr:
                    values.extend(local or [str(grant.context.get("patient"))])
                    changed = True
                else:
                    values.append(one)
            value = ",".join(values)
        rewritten.append((name, value))
    if changed:
        request.scope["query_string"] = urlencode(rewritten).encode("latin-1")


def _down() -> ServiceUnavailable:
    return ServiceUnavailable(
        "The authorization server cannot be reached to check the token; try again shortly.",
        retry_after=RETRY_AFTER,
    )
