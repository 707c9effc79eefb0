"""``Donation``: research projects, donations and deliveries, as routes and the CLI use them."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from gateway.audit import AuditEntry, Auditor
from gateway.dicomweb.upstream import Upstream
from gateway.donation import package as packaging
from gateway.donation.consents import ALL, Consents, Donor
from gateway.donation.deliveries import Delivered, Deliveries
from gateway.donation.delivery import (
    RESEARCH,
    DeliveryPlanner,
    Donated,
    ResearchJobs,
    planned,
)
from gateway.donation.projects import Project, Projects
from gateway.donation.pull import Pull
from gateway.errors import BadRequest, NotFound
from gateway.records.jacket import Jackets
from gateway.store.models import ResearchConsent
from gateway.transfers.queue import TransferQueue


@dataclass(frozen=True)
class PatientDonations:
    """What the portal shows a patient: the projects, their donations and deliveries."""

    projects: list[Project]
    consents: list[ResearchConsent]
    deliveries: list[Delivered]


class Donation:
    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        upstream: Upstream,
        jackets: Jackets,
        audit: Auditor,
        queue: TransferQueue,
        *,
        sweep_seconds: float,
    ) -> None:
        self.upstream = upstream
        self.jackets = jackets
        self.audit = audit
        self.queue = queue
        self.projects = Projects(sessions)
        self.consents = Consents(sessions)
        self.deliveries = Deliveries(sessions)
        self.pull = Pull(upstream)
        # The transfer worker's destination and transform for research jobs.
        self.jobs = ResearchJobs(self.projects, self.consents, self.deliveries)
        self.planner = DeliveryPlanner(
            projects=self.projects,
            deliveries=self.deliveries,
            donated=self.donated,
            queue=queue,
            sweep_seconds=sweep_seconds,
        )

    # -- what is donated -------------------------------------------------------

    async def donated(
        self, project: Project, patients: frozenset[str] | None = None
    ) -> list[Donated]:
        """The project's donated studies now: each active consent's study, or all the
        patient's studies; only studies released to the patient, of the donor's key."""
        found: dict[str, Donated] = {}
        for consent in await self.consents.active(project.id):
            if patients is not None and consent.patient_fhir_id not in patients:
                continue
            jacket = await self.jackets.of(consent.patient_fhir_id)
            key = (consent.issuer or "", consent.patient_id)
            if jacket.key != key:
                continue
            released = jacket.released
            uids = sorted(released) if consent.study_uid == ALL else [consent.study_uid]
            for uid in uids:
                if uid in released and uid not in found:
                    found[uid] = Donated(consent.id, consent.patient_fhir_id, key, uid)
        return list(found.values())

    # -- the patient's side ------------------------------------------------------

    async def of_patient(self, patient: str) -> PatientDonations:
        return PatientDonations(
            await self.projects.all(),
            await self.consents.of_patient(patient),
            await self.deliveries.of_patient(patient),
        )

    async def donate(
        self, project_id: str, patient: str, studies: Iterable[str], *, by: str
    ) -> list[str]:
        """A patient's donation (``ALL`` among ``studies``: all, future ones included) of
        studies released to them; recorded in their Activity, then delivered."""
        project = await self.projects.get(project_id)
        if project is None:
            raise NotFound("No such research project.")
        jacket = await self.jackets.of(patient)
        if jacket.key is None:
            raise NotFound("The patient is not known here.")
        wanted = list(dict.fromkeys(studies))
        if not wanted:
            raise BadRequest("Choose the studies to donate, or all of them.")
        if any(uid != ALL and uid not in jacket.released for uid in wanted):
            raise BadRequest("One of the chosen studies cannot be donated.")
        donor = Donor(patient, jacket.key[0], jacket.key[1])
        made = await self.consents.donate(project.id, donor, wanted)
        await self.audit.record(
            *(
                AuditEntry(
                    category="research",
                    action="donate",
                    outcome=200,
                    user=by,
                    patient=patient,
                    study=None if uid == ALL else uid,
                    detail=f"{project.name}: "
                    + ("all studies, future ones included" if uid == ALL else "one study"),
                )
                for uid in wanted
            )
        )
        self.planner.kick(frozenset({patient}))
        return made

    async def withdraw(self, consent_id: str, patient: str | None, *, by: str) -> bool:
        """Withdraw a donation (the patient's own, when ``patient`` is given): its queued
        deliveries are cancelled, a running one stops before its next batch."""
        row = await self.consents.withdraw(consent_id, patient, by)
        if row is None:
            return False
        await self.queue.cancel_for_send(row.id)
        project = await self.projects.get(row.project_id)
        await self.audit.record(
            AuditEntry(
                category="research",
                action="withdraw",
                outcome=200,
                user=by,
                patient=row.patient_fhir_id,
                study=row.study_uid or None,
                detail=f"{project.name if project else row.project_id}: donation withdrawn",
            )
        )
        return True

    async def remove_project(self, project_id: str) -> bool:
        """End a project: no more donations or deliveries (its unfinished ones are
        cancelled); its records stay."""
        if not await self.projects.remove(project_id):
            return False
        await self.queue.cancel_for_target(RESEARCH, project_id[:64], "the project was removed")
        return True

    # -- delivery ----------------------------------------------------------------

    def new_studies(self, keys: frozenset[tuple[str, str]]) -> None:
        """The gateway stored studies of these patients: deliver what "all, future
        included" donations now cover (the study index's STOW hook)."""
        if keys:
            self.planner.kick(None)

    async def deliver(self) -> int:
        """One pass now: queue the deliveries not yet queued (the transfer worker sends
        them); answers how many."""
        return await self.planner.run_once()

    async def package(self, project: Project) -> AsyncIterator[bytes]:
        """The project's donated studies, de-identified, as one streamed ZIP; each study
        packaged is recorded as delivered."""
        donated = await self.donated(project)

        async def recorded(study: Donated, sent: int, excluded: int) -> None:
            if await self.deliveries.packaged(
                planned(project, study), sent=sent, excluded=excluded
            ):
                await self.audit.record(
                    AuditEntry(
                        category="research",
                        action="deliver",
                        outcome=200,
                        user=f"research/{project.id}",
                        patient=study.patient,
                        study=study.study_uid,
                        detail=f"{project.name}: in a download package, {sent} instances",
                    )
                )

        return packaging.package(self.upstream, project, donated, recorded)

    def start(self) -> None:
        self.planner.start()

    async def aclose(self) -> None:
        await self.planner.aclose()
