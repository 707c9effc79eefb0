"""The services one gateway process shares between requests, built once at start.

This is the wiring: it picks the upstream implementation and builds every
service from the settings. Routes reach patient data only through
``records`` (the access-checked layer); ``database`` and ``upstream`` are here
for the lifespan, health checks and the command line.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

from gateway.audit import Auditor
from gateway.auth.service import AuthServices
from gateway.dicomweb.upstream import Upstream
from gateway.donation.delivery import DEIDENTIFY, RESEARCH
from gateway.donation.service import Donation
from gateway.errors import UpstreamError
from gateway.fhir.mapping import MappingContext
from gateway.mail import Mailer
from gateway.organizations.pushing import ORGANIZATION, OrganizationDestination, SiteTransfers
from gateway.portal.shares import ShareService
from gateway.records import Records
from gateway.records.index_feed import ChangeFollower
from gateway.records.release import Clock, ReleasePolicy, utc_now
from gateway.settings import Settings
from gateway.store.database import Database
from gateway.transfers.queue import TransferQueue
from gateway.transfers.transforms import Transforms
from gateway.transfers.worker import Destination, TransferWorker, WorkerOptions

logger = logging.getLogger(__name__)


def create_upstream(settings: Settings) -> Upstream:
    """The PACS named by ``GATEWAY_DICOMWEB_URL``, or the embedded store."""
    if settings.uses_embedded_store:
        from gateway.dicomweb.file_store import FileStoreUpstream

        return FileStoreUpstream(settings.dicom_dir)
    from gateway.dicomweb.http_upstream import HttpUpstream

    return HttpUpstream.from_settings(settings)


def create_follower(settings: Settings, records: Records) -> ChangeFollower | None:
    """The study index's change-feed follower, when ``GATEWAY_INDEX_CHANGE_FEED`` names one."""
    if settings.index_change_feed != "orthanc":
        return None
    from gateway.dicomweb.orthanc_changes import OrthancChanges

    return ChangeFollower(
        "orthanc",
        OrthancChanges.from_settings(settings),
        records.jackets.studies,
        settings.index_feed_seconds,
    )


def worker_options(settings: Settings) -> WorkerOptions:
    return WorkerOptions(
        batch=settings.transfer_batch,
        attempts=settings.transfer_attempts,
        backoff=settings.transfer_backoff_seconds,
        backoff_max=settings.transfer_backoff_max_seconds,
        poll=settings.transfer_poll_seconds,
        lease=settings.transfer_lease_seconds,
        timeout=settings.transfer_timeout,
    )


def create_worker(
    settings: Settings,
    auth: AuthServices,
    donation: Donation,
    queue: TransferQueue,
    upstream: Upstream,
    transforms: Transforms,
    audit: Auditor,
) -> TransferWorker:
    """The transfer worker, with every kind of destination this gateway pushes to:
    organizations, and research projects' archives (de-identified on the way)."""
    destinations: dict[str, Destination] = {
        ORGANIZATION: OrganizationDestination(auth.organizations, auth.sends),
        RESEARCH: donation.jobs,
    }
    return TransferWorker(
        queue,
        upstream,
        destinations,
        transforms,
        audit,
        worker_options(settings),
    )


@dataclass
class Services:
    settings: Settings
    database: Database
    upstream: Upstream
    records: Records
    mapping_context: MappingContext
    auth: AuthServices
    audit: Auditor
    shares: ShareService
    mailer: Mailer
    donation: Donation
    transfers: TransferQueue
    sites: SiteTransfers
    transforms: Transforms
    worker: TransferWorker
    follower: ChangeFollower | None = None
    started_at: datetime = field(default_factory=lambda: datetime.now(UTC))

    @classmethod
    def build(
        cls,
        settings: Settings,
        upstream: Upstream | None = None,
        clock: Clock | None = None,
    ) -> Services:
        database = Database(settings.effective_database_url)
        upstream = upstream or create_upstream(settings)
        clock = clock or utc_now
        audit = Auditor(database.sessions)
        release = ReleasePolicy(settings, database.sessions, clock)
        records = Records.build(settings, upstream, database.sessions, release, audit)
        transfers = TransferQueue(database.sessions)
        donation = Donation(
            database.sessions,
            upstream,
            records.jackets,
            audit,
            transfers,
            sweep_seconds=settings.research_sweep_seconds,
        )
        records.studies.stored_listeners.append(donation.new_studies)
        auth = AuthServices.build(settings, database.sessions)
        transforms = Transforms()
        transforms.register(DEIDENTIFY, donation.jobs.transform)
        return cls(
            settings=settings,
            database=database,
            upstream=upstream,
            records=records,
            mapping_context=MappingContext(
                dicomweb_url=settings.dicomweb_base_url,
                local_zone=ZoneInfo(settings.local_timezone) if settings.local_timezone else None,
            ),
            auth=auth,
            audit=audit,
            shares=ShareService(
                database.sessions,
                public_url=settings.public_url,
                default_days=settings.share_days,
                max_days=settings.share_max_days,
                clock=clock,
            ),
            mailer=Mailer(settings),
            donation=donation,
            transfers=transfers,
            sites=SiteTransfers(auth.organizations, auth.sends, transfers, audit),
            transforms=transforms,
            worker=create_worker(settings, auth, donation, transfers, upstream, transforms, audit),
            follower=create_follower(settings, records),
        )

    def start(self) -> None:
        """Start the background work of a serving process: the change feed (if any) and
        the transfer worker (unless ``GATEWAY_TRANSFER_WORKER`` is off)."""
        if self.follower is not None:
            self.follower.start()
        self.donation.start()
        if self.settings.transfer_worker:
            self.worker.start()

    @property
    def clock(self) -> Clock:
        return self.records.jackets.clock

    async def readiness(self) -> dict[str, str]:
        """Whether the database and the archive answer: "ok", or why not."""
        checks: dict[str, str] = {}
        try:
            await self.database.ping()
            checks["database"] = "ok"
        except Exception as exc:  # any driver error means "not ready"
            logger.warning("readiness: database check failed: %s", exc)
            checks["database"] = "unavailable"
        try:
            await self.upstream.check()
            checks["archive"] = "ok"
        except UpstreamError as exc:
            checks["archive"] = exc.message
        return checks

    @property
    def store_name(self) -> str:
        return self.upstream.name

    async def aclose(self) -> None:
        await self.worker.aclose()
        if self.follower is not None:
            await self.follower.aclose()
        await self.donation.aclose()
        await self.auth.aclose()
        await self.upstream.aclose()
        await self.database.dispose()
