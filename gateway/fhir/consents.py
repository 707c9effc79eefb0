"""Each patient's grant to an app, served as an R4 ``Consent`` (read and search)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from gateway.auth import scopes
from gateway.store.models import Account, Grant, OAuthClient, as_utc

SEARCH_PARAMETERS: dict[str, tuple[str, str]] = {
    "patient": ("reference", "The patient who consented"),
    "status": ("token", "active | inactive"),
}
MAX_CONSENTS = 500


async def consents(
    sessions: async_sessionmaker[AsyncSession],
    *,
    patient: str | None = None,
    grant_id: str | None = None,
    now: datetime,
) -> list[dict[str, Any]]:
    """The patients' grants (optionally one patient's, or one grant) as Consent resources."""
    query = (
        select(Grant, OAuthClient.name, Account.patient_fhir_id)
        .join(Account, Account.id == Grant.account_id)
        .join(OAuthClient, OAuthClient.client_id == Grant.client_id)
        .where(Account.kind == "patient")
        .order_by(Grant.created_at.desc())
        .limit(MAX_CONSENTS)
    )
    if patient is not None:
        query = query.where(Account.patient_fhir_id == patient)
    if grant_id is not None:
        query = query.where(Grant.id == grant_id)
    async with sessions() as session:
        rows = (await session.execute(query)).all()
    return [consent(grant, app, owner or "", now) for grant, app, owner in rows]


def consent(grant: Grant, app_name: str, patient: str, now: datetime) -> dict[str, Any]:
    context = grant.context or {}
    until = context.get("consent_until")
    ended = grant.revoked_at is not None or (
        bool(until) and datetime.fromisoformat(str(until)) <= now
    )
    period: dict[str, str] = {"start": as_utc(grant.created_at).isoformat(timespec="seconds")}
    if grant.revoked_at is not None:
        period["end"] = as_utc(grant.revoked_at).isoformat(timespec="seconds")
    elif until:
        period["end"] = str(until)
    provision: dict[str, Any] = {
        "type": "permit",
        "period": period,
        "actor": [
            {
                "role": {
                    "coding": [
                        {
                            "system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType",
                            "code": "IRCP",
                            "display": "information recipient",
                        }
                    ]
                },
                "reference": {"display": app_name},
            }
        ],
        "action": [
            {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/consentaction",
                        "code": "access",
                    }
                ],
                "text": "; ".join(scopes.describe(s) for s in scopes.split(grant.scope)),
            }
        ],
    }
    chosen = context.get("studies")
    if isinstance(chosen, list):
        provision["data"] = [
            {"meaning": "instance", "reference": {"reference": f"ImagingStudy/{uid}"}}
            for uid in chosen
        ]
    return {
        "resourceType": "Consent",
        "id": grant.id,
        "status": "inactive" if ended else "active",
        "scope": {
            "coding": [
                {
                    "system": "http://terminology.hl7.org/CodeSystem/consentscope",
                    "code": "patient-privacy",
                }
            ]
        },
        "category": [
            {"coding": [{"system": "http://loinc.org", "code": "59284-0", "display": "Consent"}]}
        ],
        "patient": {"reference": f"Patient/{patient}"},
        "dateTime": as_utc(grant.created_at).isoformat(timespec="seconds"),
        "performer": [{"reference": f"Patient/{patient}"}],
        "policyRule": {
            "coding": [
                {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "OPTIN"}
            ]
        },
        "provision": provision,
    }
