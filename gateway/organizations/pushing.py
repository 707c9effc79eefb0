"""Organizations as destinations of the transfer worker, and the act of sending to one.

``SiteTransfers.send`` is what the portal (the patient) and the admin API (staff, with
a reason) call: it records the consent, queues a push when the organization has a
STOW-RS endpoint, and writes the act to the patient's audit trail.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from gateway.audit import AuditEntry, Auditor
from gateway.organizations.registry import Organizations
from gateway.organizations.sending import Sends, SendState, state_of
from gateway.store.models import Organization, OrganizationSend, TransferJob, as_utc
from gateway.transfers.queue import TransferQueue
from gateway.transfers.stow import StowTarget
from gateway.transfers.worker import push_entry

ORGANIZATION = "organization"


class OrganizationDestination:
    """The worker's view of an organization: its STOW-RS target, and whether the
    consent behind a push still holds."""

    def __init__(self, organizations: Organizations, sends: Sends) -> None:
        self.organizations = organizations
        self.sends = sends

    async def target(self, job: TransferJob) -> StowTarget | None:
        organization = await self.organizations.get(job.target_id)
        return self.organizations.stow_target(organization) if organization else None

    async def wanted(self, job: TransferJob) -> bool:
        if job.send_id is None:
            return True
        send = await self.sends.get(job.send_id)
        return send is not None and state_of(send, self.sends.clock()) is SendState.active

    async def ended(self, job: TransferJob, status: str, detail: str) -> AuditEntry:
        return push_entry(job, status, detail)


@dataclass(frozen=True)
class Sent:
    send: OrganizationSend
    organization: Organization
    job: TransferJob | None


class SiteTransfers:
    def __init__(
        self,
        organizations: Organizations,
        sends: Sends,
        queue: TransferQueue,
        audit: Auditor,
    ) -> None:
        self.organizations = organizations
        self.sends = sends
        self.queue = queue
        self.audit = audit

    async def send(
        self,
        *,
        organization: Organization,
        patient_fhir_id: str,
        patient_key: tuple[str, str],
        studies: Sequence[str],
        days: int,
        account_id: str | None = None,
        staff_client: str | None = None,
        reason: str = "",
    ) -> Sent:
        """Consent, push and audit record; raises SendError when it cannot be made."""
        send = await self.sends.create(
            organization_id=organization.id,
            patient_fhir_id=patient_fhir_id,
            patient_key=patient_key,
            studies=studies,
            days=days,
            account_id=account_id,
            sent_by=staff_client or "",
            reason=reason,
        )
        job = None
        if organization.stow_url:
            job = await self.queue.enqueue(
                target_kind=ORGANIZATION,
                target_id=organization.id,
                studies=send.studies,
                send_id=send.id,
                patient=patient_fhir_id,
            )
        until = as_utc(send.expires_at).strftime("%Y-%m-%d %H:%M UTC")
        how = (
            "pushed by STOW-RS and open to its backend client"
            if job
            else "open to its backend client"
        )
        await self.audit.record(
            AuditEntry(
                category="transfer",
                action="send",
                outcome=201,
                client_id=staff_client,
                user=account_id,
                patient=patient_fhir_id,
                detail=f"send {send.id} to {organization.name}: {len(send.studies)} studies, "
                f"{how}, until {until}" + (f"; reason: {send.reason}" if send.reason else ""),
            )
        )
        return Sent(send, organization, job)

    async def revoke(
        self,
        send_id: str,
        *,
        patient_fhir_id: str | None = None,
        account_id: str | None = None,
        staff_client: str | None = None,
    ) -> bool:
        """Withdraw a send: pulls are refused at the next request, pushes stop."""
        send = await self.sends.get(send_id)
        revoked = await self.sends.revoke(send_id, patient_fhir_id=patient_fhir_id)
        if revoked:
            await self.queue.cancel_for_send(send_id)
        owner = send.patient_fhir_id if send is not None else patient_fhir_id
        if send is not None and patient_fhir_id is not None and owner != patient_fhir_id:
            owner = patient_fhir_id  # not theirs: the refusal goes to the asker's own trail
        await self.audit.record(
            AuditEntry(
                category="transfer",
                action="revoke",
                outcome=200 if revoked else 404,
                client_id=staff_client,
                user=account_id,
                patient=owner,
                detail=f"send {send_id[:64]}",
            )
        )
        return revoked

    async def remove_organization(self, org_id: str) -> int | None:
        """Remove an organization: its sends are withdrawn (each in its patient's trail),
        its unfinished pushes cancelled, then the record and its backend clients go.
        Answers how many sends were withdrawn; None when there is no such organization."""
        organization = await self.organizations.get(org_id)
        if organization is None:
            return None
        revoked = await self.sends.revoke_organization(organization.id)
        await self.queue.cancel_for_target(
            ORGANIZATION, organization.id, "the organization was removed"
        )
        if revoked:
            await self.audit.record(
                *(
                    AuditEntry(
                        category="transfer",
                        action="revoke",
                        outcome=200,
                        patient=send.patient_fhir_id,
                        detail=f"send {send.id}: {organization.name} was removed from here",
                    )
                    for send in revoked
                )
            )
        await self.organizations.remove(organization.id)
        return len(revoked)
