"""Reports and manifests (SR, PDF, KOS) within a caller's access.

A search costs one series-level QIDO per document modality (SR, DOC, KO),
narrowed by patient, study and the caller's visibility, then the metadata of
each candidate series; series metadata is cached while the series' instance
count is unchanged, since reports are rarely rewritten. Every document is
re-checked against the visibility. A caller without the right to read
DocumentReference gets none of them, whichever way it asks.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from gateway.dicomweb import dicomjson as dj
from gateway.dicomweb import instances, reports
from gateway.dicomweb.dicomjson import SERIES_FIELDS, DicomJson, is_uid
from gateway.dicomweb.upstream import Upstream
from gateway.errors import Forbidden, NotFound
from gateway.records.access import (
    CHECK_FIELDS,
    Access,
    PatientKey,
    only_own_patients,
    patient_key,
)
from gateway.store.patients import PatientIndex

UID_CHUNK = 50
SERIES_CACHE_ENTRIES = 4096
METADATA_CONCURRENCY = 8


@dataclass(frozen=True)
class DocumentQuery:
    """What narrows the PACS query; the FHIR layer checks every criterion on the mapping."""

    sop_uids: frozenset[str] | None = None
    study_uids: frozenset[str] | None = None
    patient_groups: tuple[frozenset[str], ...] = ()  # FHIR Patient ids, one set per parameter
    accession: str | None = None


@dataclass
class DocumentSet:
    documents: list[DicomJson]  # instance metadata of each document
    patient_ids: dict[PatientKey, str]
    truncated: bool = False


def require_reports(access: Access, *actions: str) -> None:
    """Reports need a DocumentReference permission (``r`` unless other actions are named),
    on every way in: FHIR, and DICOMweb retrieval, metadata, rendering and bulk data."""
    if not any(access.may("DocumentReference", action) for action in actions or ("r",)):
        raise Forbidden(
            "This is a report: the access granted does not include reading reports "
            "(DocumentReference).",
            headers={"WWW-Authenticate": 'Bearer realm="gateway", error="insufficient_scope"'},
        )


class DocumentRecords:
    def __init__(self, upstream: Upstream, index: PatientIndex, max_candidates: int) -> None:
        self.upstream = upstream
        self.index = index
        self.max_candidates = max_candidates
        self._series_cache: OrderedDict[str, tuple[str, list[DicomJson]]] = OrderedDict()
        self._metadata_slots = asyncio.Semaphore(METADATA_CONCURRENCY)

    # -- one document ------------------------------------------------------

    async def locate(self, access: Access, sop_uid: str) -> DicomJson:
        """The instance-level QIDO record of a document the caller may see, or NotFound."""
        require_reports(access)
        unknown = NotFound(f"DocumentReference/{sop_uid} is not known.")
        if not is_uid(sop_uid):
            raise unknown
        fields = ("StudyInstanceUID", "SeriesInstanceUID", "SOPClassUID", *CHECK_FIELDS)
        for filters in access.visibility.narrow({"SOPInstanceUID": sop_uid}):
            for found in await self.upstream.search_instances(filters, fields, limit=2):
                if (
                    dj.text(found, "SOPInstanceUID") == sop_uid
                    and dj.text(found, "SOPClassUID") in reports.DOCUMENT_CLASSES
                    and access.visibility.permits(found)
                ):
                    access.seen.study = dj.text(found, "StudyInstanceUID")
                    await self._note_patients(access, [found])
                    return found
        raise unknown

    async def read(self, access: Access, sop_uid: str) -> DocumentSet:
        """The document's metadata (one DICOM JSON instance)."""
        found = await self.locate(access, sop_uid)
        path = "/".join(
            (
                "studies",
                dj.text(found, "StudyInstanceUID") or "",
                "series",
                dj.text(found, "SeriesInstanceUID") or "",
                "instances",
                sop_uid,
            )
        )
        documents = [
            d for d in await instances.metadata(self.upstream, path) if _is_document(d, access)
        ]
        if not documents:
            raise NotFound(f"DocumentReference/{sop_uid} is not known.")
        return DocumentSet(documents[:1], await self._patient_ids(documents[:1]))

    async def part10(self, access: Access, sop_uid: str) -> bytes:
        """The document's DICOM object, whole (a manifest is small)."""
        found = await self.locate(access, sop_uid)
        return await instances.part10(
            self.upstream,
            dj.text(found, "StudyInstanceUID") or "",
            dj.text(found, "SeriesInstanceUID") or "",
            sop_uid,
        )

    # -- search ------------------------------------------------------------

    async def find(self, access: Access, query: DocumentQuery) -> DocumentSet:
        require_reports(access, "s", "r")
        only_own_patients(access, query.patient_groups)
        keys: set[PatientKey] | None = None
        for group in query.patient_groups:
            resolved = set((await self.index.keys_for(sorted(group))).values())
            keys = resolved if keys is None else keys & resolved
        if any(v is not None and not v for v in (query.sop_uids, query.study_uids, keys)):
            return DocumentSet([], {})
        series, truncated = await self._candidate_series(access, query, keys)
        documents = await self._documents_of(series, access)
        if query.sop_uids is not None:
            documents = [d for d in documents if dj.text(d, "SOPInstanceUID") in query.sop_uids]
        if keys is not None:
            documents = [d for d in documents if patient_key(d) in keys]
        await self._note_patients(access, documents)
        return DocumentSet(documents, await self._patient_ids(documents), truncated)

    async def _candidate_series(
        self, access: Access, query: DocumentQuery, keys: set[PatientKey] | None
    ) -> tuple[list[DicomJson], bool]:
        scopes: list[dict[str, str]]
        if query.sop_uids is not None:
            series_uids = await self._series_of(sorted(query.sop_uids))
            if not series_uids:
                return [], False
            scopes = [
                {"SeriesInstanceUID": ",".join(series_uids[i : i + UID_CHUNK])}
                for i in range(0, len(series_uids), UID_CHUNK)
            ]
        elif query.study_uids is not None:
            wanted = sorted(query.study_uids)
            scopes = [
                {"StudyInstanceUID": ",".join(wanted[i : i + UID_CHUNK])}
                for i in range(0, len(wanted), UID_CHUNK)
            ]
        elif keys is not None:
            scopes = [{"PatientID": pid} for pid in sorted({p for _, p in keys})]
        else:
            scopes = [{}]
        if query.accession:
            scopes = [{**scope, "AccessionNumber": query.accession} for scope in scopes]
        queries = [
            narrowed
            for scope in scopes
            for modality in reports.DOCUMENT_MODALITIES
            for narrowed in access.visibility.narrow({**scope, "Modality": modality})
        ]
        fields = (*SERIES_FIELDS, *CHECK_FIELDS, "AccessionNumber")
        batches = await asyncio.gather(
            *(self.upstream.search_series(q, fields, limit=self.max_candidates) for q in queries)
        )
        seen: dict[str, DicomJson] = {}
        for item in (s for batch in batches for s in batch):
            uid = dj.text(item, "SeriesInstanceUID")
            modality = (dj.text(item, "Modality") or "").upper()
            if uid and modality in reports.DOCUMENT_MODALITIES and access.visibility.permits(item):
                seen.setdefault(uid, item)
        if query.study_uids is not None:
            seen = {
                k: v for k, v in seen.items() if dj.text(v, "StudyInstanceUID") in query.study_uids
            }
        truncated = any(len(batch) >= self.max_candidates for batch in batches)
        return list(seen.values()), truncated

    async def _series_of(self, sop_uids: Sequence[str]) -> list[str]:
        found = await asyncio.gather(
            *(
                self.upstream.search_instances(
                    {"SOPInstanceUID": ",".join(sop_uids[i : i + UID_CHUNK])},
                    ("SeriesInstanceUID",),
                )
                for i in range(0, len(sop_uids), UID_CHUNK)
            )
        )
        wanted = set(sop_uids)
        return sorted(
            {
                uid
                for batch in found
                for item in batch
                if dj.text(item, "SOPInstanceUID") in wanted
                and (uid := dj.text(item, "SeriesInstanceUID"))
            }
        )

    async def _documents_of(self, series: Iterable[DicomJson], access: Access) -> list[DicomJson]:
        found = await asyncio.gather(*(self._series_metadata(s) for s in series))
        return [d for batch in found for d in batch if _is_document(d, access)]

    async def _series_metadata(self, series: DicomJson) -> list[DicomJson]:
        uid = dj.text(series, "SeriesInstanceUID") or ""
        version = dj.text(series, "NumberOfSeriesRelatedInstances") or ""
        cached = self._series_cache.get(uid)
        if cached and cached[0] == version and version:
            self._series_cache.move_to_end(uid)
            return cached[1]
        study = dj.text(series, "StudyInstanceUID") or ""
        async with self._metadata_slots:
            found = await instances.metadata(self.upstream, f"studies/{study}/series/{uid}")
        # Bulk data references and pixel-free content only: small enough to keep.
        self._series_cache[uid] = (version, found)
        while len(self._series_cache) > SERIES_CACHE_ENTRIES:
            self._series_cache.popitem(last=False)
        return found

    async def _patient_ids(self, documents: Sequence[DicomJson]) -> dict[PatientKey, str]:
        keys = [k for k in (patient_key(d) for d in documents) if k]
        return await self.index.ids_for(keys)

    async def _note_patients(self, access: Access, items: Sequence[DicomJson]) -> None:
        ids = await self._patient_ids(items)
        access.seen.patients.update(ids.values())


def _is_document(item: DicomJson, access: Access) -> bool:
    return reports.kind_of(item) is not None and access.visibility.permits(item)
