"""Studies within a caller's access: search, read, and the detail a mapping needs.

A search costs a bounded number of upstream calls whatever the page holds:
one study-level QIDO with the narrowest filter the PACS can apply (none at
all for a caller confined to one patient, or a search naming its patients:
the study index lists every study of each), then one instance-level QIDO for
the page's studies that the detail cache cannot answer; the series come from the same answer, since
instance-level QIDO returns the series attributes too. The caller's
visibility narrows every query and re-checks every result; ``accepts``
re-checks every criterion exactly, because PACSes differ in how loosely they
match.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

from gateway.dicomweb import dicomjson as dj
from gateway.dicomweb.dicomjson import (
    INSTANCE_FIELDS,
    SERIES_FIELDS,
    STUDY_FIELDS,
    DicomJson,
    is_uid,
)
from gateway.dicomweb.upstream import Upstream
from gateway.errors import Forbidden, Held, NotFound
from gateway.records.access import Access, PatientKey, only_own_patients
from gateway.records.jacket import Jacket, Jackets
from gateway.records.study_cache import StudyDetailCache
from gateway.records.summaries import StudySummary, summarize
from gateway.store.patients import PatientIndex

UID_CHUNK = 50
DETAIL_FIELDS = tuple(dict.fromkeys((*SERIES_FIELDS, *INSTANCE_FIELDS)))
_FLOOR = datetime.min.replace(tzinfo=UTC)


def _anything(summary: StudySummary) -> bool:
    return True


@dataclass(frozen=True)
class StudyQuery:
    """A study search: what narrows the PACS query, and ``accepts``, which decides exactly."""

    study_uids: frozenset[str] | None = None
    # One set per ``series`` / ``patient`` parameter: alternatives inside, all sets ANDed.
    series_groups: tuple[frozenset[str], ...] = ()
    patient_groups: tuple[frozenset[str], ...] = ()  # FHIR Patient ids
    # Filters the PACS may apply loosely (every one is checked again by ``accepts``).
    accession: str | None = None
    modality: str | None = None
    date_range: str | None = None
    accepts: Callable[[StudySummary], bool] = _anything
    newest_first: bool = True
    # Does ``accepts`` read ``last_updated``? Then studies found by asking the PACS learn
    # it from the index before they are checked.
    uses_updated: bool = False


@dataclass(frozen=True)
class StudyDetail:
    summary: StudySummary
    series: list[DicomJson]
    instances: list[DicomJson]


@dataclass
class StudyPage:
    total: int
    studies: list[StudyDetail]
    patient_ids: dict[PatientKey, str]
    # The PACS returned as many studies as the gateway may ask for: more may match.
    truncated: bool = False


def unseen(access: Access, uid: str) -> Exception:
    """What a caller is told of a study it may not see: "not yet" only when it would."""
    until = access.held.get(uid)
    return Held(until) if until is not None else NotFound(f"ImagingStudy/{uid} is not known.")


class StudyRecords:
    def __init__(
        self,
        upstream: Upstream,
        index: PatientIndex,
        jackets: Jackets,
        local_zone: ZoneInfo | None,
        max_candidates: int,
        cache: StudyDetailCache,
    ) -> None:
        self.upstream = upstream
        self.index = index
        self.jackets = jackets
        self.local_zone = local_zone
        self.max_candidates = max_candidates
        self.cache = cache
        # Told of the patients whose studies the gateway stored (research donation's
        # "future studies included" is one): called after the index is marked stale.
        self.stored_listeners: list[Callable[[frozenset[PatientKey]], None]] = []

    # -- the patient's own ----------------------------------------------------

    async def of_patient_for_staff(self, fhir_id: str) -> tuple[PatientKey | None, frozenset[str]]:
        """A patient's key and every study of their jacket, released or held: for staff
        whose admin scope lets them act on any patient's behalf (``admin/transfers``),
        who are not held back by the release delay."""
        jacket = await self.jackets.of(fhir_id)
        return jacket.key, frozenset(jacket.released | set(jacket.held))

    async def jacket(self, access: Access) -> Jacket:
        """The jacket of the one patient the caller is confined to: the studies it may see,
        and those it would see once the release delay lets them through."""
        jacket = await self._jacket(access)
        if jacket is None:
            raise Forbidden("Only a patient's own access shows their jacket.")
        shown = tuple(
            s for s in jacket.studies if access.visibility.permits(s.source) or s.uid in access.held
        )
        return replace(jacket, studies=shown)

    async def waive_delay(self, access: Access) -> bool:
        """The patient chooses to see new results at once (where the policy allows it)."""
        jacket = await self.jacket(access)
        return await self.jackets.waive(jacket.patient)

    async def stored(self, keys: Iterable[PatientKey]) -> None:
        """The gateway stored studies of these patients: their next request sees them."""
        keys = frozenset(keys)
        await self.jackets.studies.stale(keys)
        for listener in self.stored_listeners:
            listener(keys)

    # -- one study ---------------------------------------------------------

    async def summary(self, access: Access, uid: str) -> StudySummary:
        """The study, if the caller may see it; else Held or NotFound."""
        found = await self._visible(access, uid)
        await self._note_patients(access, [found])
        return found

    async def _visible(self, access: Access, uid: str) -> StudySummary:
        if not is_uid(uid):
            raise NotFound(f"ImagingStudy/{uid} is not known.")
        jacket = await self._jacket(access)
        if jacket is not None:
            found = jacket.study(uid)
        else:
            found = None
            for filters in access.visibility.narrow({"StudyInstanceUID": uid}):
                for study in await self.upstream.search_studies(filters, STUDY_FIELDS, limit=2):
                    summary = summarize(study, self.local_zone)
                    if summary and summary.uid == uid:
                        found = summary
        if found is None or not access.visibility.permits(found.source):
            raise unseen(access, uid)
        access.seen.study = uid
        return found

    async def read(self, access: Access, uid: str) -> StudyPage:
        """One study with its series and instances."""
        page = await self._page([await self._visible(access, uid)], 1, False)
        access.seen.patients.update(page.patient_ids.values())
        return page

    async def details(self, access: Access, summaries: Sequence[StudySummary]) -> list[StudyDetail]:
        """Series and instances of studies the caller may see (others are left out)."""
        visible = [s for s in summaries if access.visibility.permits(s.source)]
        return await self._expand(visible)

    # -- search ------------------------------------------------------------

    async def search(self, access: Access, query: StudyQuery, offset: int, count: int) -> StudyPage:
        only_own_patients(access, query.patient_groups)
        candidates, truncated = await self._candidates(access, query)
        if query.uses_updated:
            candidates = await self._with_updated(candidates)
        matching = [s for s in candidates if query.accepts(s)]
        matching.sort(key=lambda s: (s.started or _FLOOR, s.uid), reverse=query.newest_first)
        page = matching[offset : offset + count] if count else []
        found = await self._page(page, len(matching), truncated)
        access.seen.patients.update(found.patient_ids.values())
        return found

    async def of_series(self, access: Access, series_uids: Iterable[str]) -> set[str]:
        """The studies the caller may see that hold any of these series."""
        valid = sorted({uid for uid in series_uids if is_uid(uid)})
        if not valid:
            return set()
        wanted = set(valid)
        queries = access.visibility.narrow({"SeriesInstanceUID": ",".join(valid)})
        batches = await asyncio.gather(
            *(
                self.upstream.search_series(
                    q, ("StudyInstanceUID", "PatientID", "IssuerOfPatientID")
                )
                for q in queries
            )
        )
        return {
            uid
            for series in (s for batch in batches for s in batch)
            if dj.text(series, "SeriesInstanceUID") in wanted
            and access.visibility.permits(series)
            and (uid := dj.text(series, "StudyInstanceUID"))
        }

    async def _candidates(
        self, access: Access, query: StudyQuery
    ) -> tuple[list[StudySummary], bool]:
        uids: set[str] | frozenset[str] | None = query.study_uids
        for group in query.series_groups:
            found = await self.of_series(access, group)
            uids = found if uids is None else uids & found
        keys: set[PatientKey] | None = None
        for group in query.patient_groups:
            resolved = set((await self.index.keys_for(sorted(group))).values())
            keys = resolved if keys is None else keys & resolved
        if (uids is not None and not uids) or (keys is not None and not keys):
            return [], False

        def wanted(summary: StudySummary) -> bool:
            return (
                (uids is None or summary.uid in uids)
                and (keys is None or summary.patient in keys)
                and access.visibility.permits(summary.source)
            )

        jacket = await self._jacket(access)
        if jacket is not None:
            return [s for s in jacket.studies if wanted(s)], False
        if keys is not None:
            # Named patients: the study index lists every study of each, exactly.
            indexed = [s for key in sorted(keys) for s in await self.jackets.summaries(key)]
            return [s for s in indexed if wanted(s)], False
        queries = self._queries(access, query, uids, keys)
        batches = await asyncio.gather(
            *(
                self.upstream.search_studies(q, STUDY_FIELDS, limit=self.max_candidates)
                for q in queries
            )
        )
        seen: dict[str, StudySummary] = {}
        for study in (s for batch in batches for s in batch):
            summary = summarize(study, self.local_zone)
            if summary and summary.uid not in seen and wanted(summary):
                seen[summary.uid] = summary
        truncated = any(len(batch) >= self.max_candidates for batch in batches)
        return list(seen.values()), truncated

    def _queries(
        self,
        access: Access,
        query: StudyQuery,
        uids: set[str] | frozenset[str] | None,
        keys: set[PatientKey] | None,
    ) -> list[dict[str, str]]:
        """The narrowest study-level QIDO queries, within the caller's visibility."""
        base: dict[str, str] = {}
        if query.accession:
            base["AccessionNumber"] = query.accession
        if query.modality:
            base["ModalitiesInStudy"] = query.modality
        if query.date_range:
            base["StudyDate"] = query.date_range
        if uids is not None:
            wanted = sorted(uids)
            scopes = [
                {"StudyInstanceUID": ",".join(wanted[i : i + UID_CHUNK])}
                for i in range(0, len(wanted), UID_CHUNK)
            ]
        elif keys is not None:
            scopes = [{**base, "PatientID": pid} for pid in sorted({p for _, p in keys})]
        else:
            scopes = [base]
        return [
            chunk
            for scope in scopes
            for narrowed in access.visibility.narrow(scope)
            for chunk in _chunked(narrowed)
        ]

    async def _jacket(self, access: Access) -> Jacket | None:
        """The one patient a confined caller sees, whose jacket lists all their studies."""
        if access.patients is None or len(access.patients) != 1:
            return None
        patient = next(iter(access.patients))
        decided = access.jacket
        if isinstance(decided, Jacket) and decided.patient == patient:
            return decided
        return await self.jackets.of(patient)

    # -- expansion ---------------------------------------------------------

    async def _page(self, page: list[StudySummary], total: int, truncated: bool) -> StudyPage:
        page = await self._with_updated(page)
        keys = [s.patient for s in page if s.patient]
        details, patient_ids = await asyncio.gather(self._expand(page), self.index.ids_for(keys))
        return StudyPage(total, details, patient_ids, truncated)

    async def _with_updated(self, page: Sequence[StudySummary]) -> list[StudySummary]:
        """Studies found by asking the PACS carry when the index last saw them change
        too, so a study's ``meta.lastUpdated`` is the same whichever way it is reached."""
        missing = [s.uid for s in page if s.updated is None]
        if not missing:
            return list(page)
        known = await self.jackets.studies.indexed_at(missing)
        return [
            replace(s, updated=known.get((s.patient, s.uid)))
            if s.updated is None and s.patient
            else s
            for s in page
        ]

    async def _expand(self, studies: Sequence[StudySummary]) -> list[StudyDetail]:
        """Series and instances for all studies at once (the cache's misses)."""
        cached = await self.cache.get_many([s.source for s in studies])
        missing = [s.uid for s in studies if s.uid not in cached]
        chunks = [missing[i : i + UID_CHUNK] for i in range(0, len(missing), UID_CHUNK)]
        batches = await asyncio.gather(
            *(
                self.upstream.search_instances({"StudyInstanceUID": ",".join(c)}, DETAIL_FIELDS)
                for c in chunks
            )
        )
        wanted = set(missing)
        instances_by_study: dict[str, list[DicomJson]] = {}
        for item in (x for batch in batches for x in batch):
            uid = dj.text(item, "StudyInstanceUID")
            # A PACS that ignores UID list matching must not leak other studies in.
            if uid in wanted:
                instances_by_study.setdefault(uid, []).append(item)
        details = []
        fetched = []
        for study in studies:
            entry = cached.get(study.uid)
            if entry is not None:
                instances = entry.instances
            else:
                instances = instances_by_study.get(study.uid, [])
                fetched.append((study.source, instances))
            details.append(StudyDetail(study, series_of(instances), instances))
        if fetched:
            await self.cache.put_many(fetched)
        return details

    async def _note_patients(self, access: Access, studies: Iterable[StudySummary]) -> None:
        keys = {s.patient for s in studies if s.patient}
        if keys:
            access.seen.patients.update((await self.index.ids_for(sorted(keys))).values())


def series_of(instances: Sequence[DicomJson]) -> list[DicomJson]:
    """Series records built from instance-level QIDO answers (which carry the series
    attributes), with the number of instances counted."""
    series: dict[str, DicomJson] = {}
    counts: dict[str, int] = {}
    for instance in instances:
        uid = dj.text(instance, "SeriesInstanceUID")
        if not uid:
            continue
        if uid not in series:
            series[uid] = {
                key: value
                for name in SERIES_FIELDS
                if (value := instance.get(key := dj.tag(name))) is not None
            }
        counts[uid] = counts.get(uid, 0) + 1
    for uid, record in series.items():
        record[dj.tag("NumberOfSeriesRelatedInstances")] = dj.element("IS", counts[uid])
    return list(series.values())


def _chunked(query: dict[str, str]) -> list[dict[str, str]]:
    """Split a long StudyInstanceUID list, so no query string grows without bound."""
    uids = query.get("StudyInstanceUID", "").split(",")
    if len(uids) <= UID_CHUNK:
        return [query]
    return [
        {**query, "StudyInstanceUID": ",".join(uids[i : i + UID_CHUNK])}
        for i in range(0, len(uids), UID_CHUNK)
    ]
