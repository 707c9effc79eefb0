"""The services one gateway process shares between requests, built once at start."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

from gateway.access import AccessPolicy, AllowEverything
from gateway.audit import Auditor
from gateway.auth.enforcement import SmartPolicy
from gateway.auth.service import AuthServices
from gateway.dicomweb.upstream import Upstream, create_upstream
from gateway.fhir.documents import DocumentReferenceService
from gateway.fhir.mapping import MappingContext
from gateway.fhir.patients import PatientService
from gateway.fhir.studies import ImagingStudyService
from gateway.fhir.study_cache import StudyDetailCache
from gateway.mail import Mailer
from gateway.portal.shares import ShareService
from gateway.release import Clock, ReleasePolicy, utc_now
from gateway.settings import Settings
from gateway.store.database import Database
from gateway.store.patients import PatientIndex


@dataclass
class Services:
    settings: Settings
    database: Database
    upstream: Upstream
    patient_index: PatientIndex
    mapping_context: MappingContext
    studies: ImagingStudyService
    patients: PatientService
    documents: DocumentReferenceService
    auth: AuthServices
    audit: Auditor
    release: ReleasePolicy
    shares: ShareService
    mailer: Mailer
    policy: AccessPolicy = field(default_factory=AllowEverything)
    started_at: datetime = field(default_factory=lambda: datetime.now(UTC))

    @classmethod
    def build(
        cls,
        settings: Settings,
        upstream: Upstream | None = None,
        policy: AccessPolicy | None = None,
        clock: Clock | None = None,
    ) -> Services:
        database = Database(settings.effective_database_url)
        upstream = upstream or create_upstream(settings)
        clock = clock or utc_now
        index = PatientIndex(database.sessions)
        context = MappingContext(
            dicomweb_url=settings.dicomweb_base_url,
            local_zone=ZoneInfo(settings.local_timezone) if settings.local_timezone else None,
        )
        return cls(
            settings=settings,
            database=database,
            upstream=upstream,
            patient_index=index,
            mapping_context=context,
            studies=ImagingStudyService(
                upstream,
                index,
                context,
                settings.fhir_base_url,
                max_candidates=settings.max_search_candidates,
                cache=StudyDetailCache(settings.study_cache_seconds, settings.study_cache_size),
            ),
            patients=PatientService(upstream, index, settings.max_search_candidates),
            documents=DocumentReferenceService(
                upstream,
                index,
                context,
                settings.fhir_base_url,
                max_candidates=settings.max_search_candidates,
            ),
            auth=AuthServices.build(settings, database.sessions),
            audit=Auditor(database.sessions),
            release=ReleasePolicy(settings, database.sessions, clock),
            shares=ShareService(
                database.sessions,
                public_url=settings.public_url,
                default_days=settings.share_days,
                max_days=settings.share_max_days,
                clock=clock,
            ),
            mailer=Mailer(settings),
            policy=policy or (SmartPolicy() if settings.auth_required else AllowEverything()),
        )

    async def aclose(self) -> None:
        await self.auth.aclose()
        await self.upstream.aclose()
        await self.database.dispose()
