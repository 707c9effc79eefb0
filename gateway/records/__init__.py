"""The records layer: patient data, only ever within a caller's access.

Routes of every protocol (FHIR, DICOMweb, the portal, share links, admin) are
thin adapters over this layer; none of them reaches the PACS or the database
around it (``tests/test_layering.py`` keeps it so). Each operation takes the
caller's :class:`~gateway.records.access.Access` first and refuses outside
it:

- ``studies``: typed study summaries, search, read, series and instances;
- ``documents``: reports and manifests (SR, PDF, KOS);
- ``patients``: who the studies are about;
- ``images``: DICOMweb QIDO, retrieval, metadata, frames, bulk data,
  rendering, STOW, and whole studies as a ZIP;
- ``jackets``: each patient's studies with the moment each reaches them
  (the release delay), from the study index in the database;
- ``trail``: the audit trail and the consents patients gave.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from zoneinfo import ZoneInfo

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from gateway.audit import Auditor
from gateway.dicomweb.offload import Offloader
from gateway.dicomweb.upstream import Upstream
from gateway.records.access import Access, Visibility
from gateway.records.capabilities import CapabilityRecords
from gateway.records.documents import DocumentRecords
from gateway.records.images import ImageRecords
from gateway.records.jacket import Jackets
from gateway.records.patients import PatientRecords
from gateway.records.release import ReleasePolicy
from gateway.records.studies import StudyRecords
from gateway.records.study_cache import StudyDetailCache
from gateway.records.trail import TrailRecords
from gateway.settings import Offload, Settings
from gateway.store.capabilities import CapabilityStore
from gateway.store.patients import PatientIndex
from gateway.store.study_index import StudyIndex

__all__ = ["Access", "Records", "Visibility"]


@dataclass
class Records:
    jackets: Jackets
    studies: StudyRecords
    documents: DocumentRecords
    patients: PatientRecords
    images: ImageRecords
    trail: TrailRecords
    capabilities: CapabilityRecords

    @classmethod
    def build(
        cls,
        settings: Settings,
        upstream: Upstream,
        sessions: async_sessionmaker[AsyncSession],
        release: ReleasePolicy,
        auditor: Auditor,
    ) -> Records:
        index = PatientIndex(sessions)
        study_index = StudyIndex(sessions)
        zone = ZoneInfo(settings.local_timezone) if settings.local_timezone else None
        jackets = Jackets(
            upstream, index, study_index, release, zone, settings.index_freshness_seconds
        )
        cache = StudyDetailCache(
            study_index, settings.study_cache_seconds, settings.study_cache_size, release.clock
        )
        studies = StudyRecords(
            upstream, index, jackets, zone, settings.max_search_candidates, cache
        )
        return cls(
            jackets=jackets,
            studies=studies,
            documents=DocumentRecords(upstream, index, settings.max_search_candidates),
            patients=PatientRecords(upstream, index, jackets, settings.max_search_candidates),
            images=ImageRecords(
                upstream,
                index,
                studies,
                settings.dicomweb_base_url,
                settings.render_max_bytes,
                Offloader(settings.offload_prefix) if settings.offload is Offload.nginx else None,
            ),
            trail=TrailRecords(auditor, sessions),
            capabilities=CapabilityRecords(
                CapabilityStore(sessions),
                index,
                release.clock,
                timedelta(seconds=settings.capability_lifetime_seconds),
                settings.dicomweb_base_url,
            ),
        )
