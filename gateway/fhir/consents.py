"""Each patient's grant to an app, and each share link, served as an R4 ``Consent``.

A share's Consent id is ``share-{id}`` and a research donation's ``research-{id}``,
so the kinds never collide. A donation is a Consent of scope and category
``research``: its provision names the study donated, or none (all the patient's
studies, future ones included).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from gateway.auth import scopes
from gateway.records.trail import (
    MAX_CONSENTS,
    RESEARCH_PREFIX,
    SEND_PREFIX,
    SHARE_PREFIX,
    Consents,
    SendConsent,
)
from gateway.store.models import Grant, ResearchConsent, ShareLink, as_utc

SEARCH_PARAMETERS: dict[str, tuple[str, str]] = {
    "patient": ("reference", "The patient who consented"),
    "status": ("token", "active | inactive"),
}


def resources(found: Consents, now: datetime) -> list[dict[str, Any]]:
    """Grants and share links as Consents, newest first."""
    mapped = [consent(g.grant, g.app, g.patient, now) for g in found.grants]
    mapped += [share_consent(share, now) for share in found.shares]
    mapped += [research_consent(row, project) for row, project in found.donations]
    mapped += [send_consent(sent, now) for sent in found.sends]
    mapped.sort(key=lambda c: str(c["dateTime"]), reverse=True)
    return mapped[:MAX_CONSENTS]


def share_consent(share: ShareLink, now: datetime) -> dict[str, Any]:
    """A share link: the patient permits its holder (with the PIN) to see the studies."""
    ended_at = share.revoked_at or share.locked_at
    end = as_utc(ended_at) if ended_at else as_utc(share.expires_at)
    recipient = share.label or share.email or "Whoever holds the link and its PIN"
    return _resource(
        consent_id=f"{SHARE_PREFIX}{share.id}",
        active=ended_at is None and end > now,
        patient=share.patient_fhir_id,
        created=as_utc(share.created_at),
        end=end.isoformat(timespec="seconds"),
        recipient=recipient,
        words="View and download the chosen studies through a share link",
        studies=list(share.studies),
    )


def research_consent(row: ResearchConsent, project: str) -> dict[str, Any]:
    """A donation to a research project: de-identified copies of one study, or of all."""
    resource = _resource(
        consent_id=f"{RESEARCH_PREFIX}{row.id}",
        active=row.withdrawn_at is None,
        patient=row.patient_fhir_id,
        created=as_utc(row.created_at),
        end=as_utc(row.withdrawn_at).isoformat(timespec="seconds") if row.withdrawn_at else None,
        recipient=f"Research project: {project}",
        words="Donate de-identified copies"
        + (" of this study" if row.study_uid else " of all studies, future ones included"),
        studies=[row.study_uid] if row.study_uid else None,
    )
    resource["scope"] = {"coding": [{"system": _SCOPE_SYSTEM, "code": "research"}]}
    resource["category"] = [
        {"coding": [{"system": _CATEGORY_SYSTEM, "code": "research", "display": "Research"}]}
    ]
    resource["provision"]["purpose"] = [
        {
            "system": "http://terminology.hl7.org/CodeSystem/v3-ActReason",
            "code": "HRESCH",
            "display": "healthcare research",
        }
    ]
    return resource


_SCOPE_SYSTEM = "http://terminology.hl7.org/CodeSystem/consentscope"
_CATEGORY_SYSTEM = "http://terminology.hl7.org/CodeSystem/consentcategorycodes"


def send_consent(sent: SendConsent, now: datetime) -> dict[str, Any]:
    """Studies sent to an organization: its systems may fetch them (and may have been
    pushed them) until the end of the period."""
    send = sent.send
    end = as_utc(send.revoked_at) if send.revoked_at else as_utc(send.expires_at)
    words = "Receive the chosen studies: fetch them, and be sent them"
    if send.sent_by:
        words += f" (sent by staff for the patient: {send.reason})"
    resource = _resource(
        consent_id=f"{SEND_PREFIX}{send.id}",
        active=send.revoked_at is None and end > now,
        patient=send.patient_fhir_id,
        created=as_utc(send.created_at),
        end=end.isoformat(timespec="seconds"),
        recipient=sent.organization,
        words=words,
        studies=list(send.studies),
    )
    resource["organization"] = [{"display": sent.organization}]
    actor = resource["provision"]["actor"][0]
    actor["reference"] = {"display": sent.organization, "type": "Organization"}
    if send.sent_by:
        resource["performer"].append({"display": f"Staff (client {send.sent_by})"})
    return resource


def consent(grant: Grant, app_name: str, patient: str, now: datetime) -> dict[str, Any]:
    """A patient's grant to an app."""
    context = grant.context or {}
    until = context.get("consent_until")
    ended = grant.revoked_at is not None or (
        bool(until) and datetime.fromisoformat(str(until)) <= now
    )
    end = as_utc(grant.revoked_at).isoformat(timespec="seconds") if grant.revoked_at else until
    chosen = context.get("studies")
    return _resource(
        consent_id=grant.id,
        active=not ended,
        patient=patient,
        created=as_utc(grant.created_at),
        end=str(end) if end else None,
        recipient=app_name,
        words="; ".join(scopes.describe(s) for s in scopes.split(grant.scope)),
        studies=chosen if isinstance(chosen, list) else None,
    )


def _resource(
    *,
    consent_id: str,
    active: bool,
    patient: str,
    created: datetime,
    end: str | None,
    recipient: str,
    words: str,
    studies: list[str] | None,
) -> dict[str, Any]:
    period: dict[str, str] = {"start": created.isoformat(timespec="seconds")}
    if end:
        period["end"] = end
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
                "reference": {"display": recipient},
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
                "text": words,
            }
        ],
    }
    if studies is not None:
        provision["data"] = [
            {"meaning": "instance", "reference": {"reference": f"ImagingStudy/{uid}"}}
            for uid in studies
        ]
    return {
        "resourceType": "Consent",
        "id": consent_id,
        "status": "active" if active else "inactive",
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
        "dateTime": created.isoformat(timespec="seconds"),
        "performer": [{"reference": f"Patient/{patient}"}],
        "policyRule": {
            "coding": [
                {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "OPTIN"}
            ]
        },
        "provision": provision,
    }
