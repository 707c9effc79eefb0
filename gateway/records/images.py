"""DICOMweb within a caller's access: QIDO, WADO retrieval, metadata, frames and bulk data,
rendering, STOW and the ZIP of whole studies.

Every operation starts from the caller's ``Access``:

- searches are narrowed and re-checked by its visibility;
- anything about one study first finds that study within the visibility
  (Held or 404 otherwise), so a retrieval never reaches the PACS for a study
  the caller may not see;
- report content (SR, PDF, KOS: their metadata, bytes, rendering, bulk data)
  needs a DocumentReference permission; a study or series that holds reports
  is refused whole to a caller without it, never answered in part;
- a stored instance must belong to a patient the caller may see, and may not
  join a study the caller may not see;
- a document is served only as a type the gateway allows (PDF); anything else
  it carries goes out as an attachment that no browser runs.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import IO

import anyio
from pydicom import Dataset, dcmread
from pydicom.errors import InvalidDicomError
from pydicom.uid import DeflatedExplicitVRLittleEndian

from gateway.dicomweb import bulkdata, instances, qido, rendering, reports, stow
from gateway.dicomweb import dicomjson as dj
from gateway.dicomweb.dicomjson import DicomJson
from gateway.dicomweb.matching import matches, vr_of
from gateway.dicomweb.offload import Offloaded as Offloaded  # what routes hand to nginx
from gateway.dicomweb.offload import Offloader
from gateway.dicomweb.upstream import Retrieved as Retrieved  # what routes stream out
from gateway.dicomweb.upstream import StoreResult, Upstream
from gateway.errors import BadRequest, Forbidden, NotAcceptable, NotFound, UpstreamBadResponse
from gateway.records import full_study, study_qido
from gateway.records.access import CHECK_FIELDS, Access, PatientKey, patient_key
from gateway.records.archive import study_archive
from gateway.records.documents import require_reports
from gateway.records.jacket import Jacket
from gateway.records.studies import StudyRecords
from gateway.store.patients import PatientIndex

LEVEL_KEYS = {
    "study": "StudyInstanceUID",
    "series": "SeriesInstanceUID",
    "instance": "SOPInstanceUID",
}
DOCUMENT_CLASS_LIST = ",".join(sorted(reports.CONTENT_CLASSES))
# A report's text lives here; a caller who may not read reports never gets it from QIDO.
REPORT_CONTENT = frozenset({dj.tag("ContentSequence")})
# Documents the gateway serves as what they are; anything else is an attachment.
SERVED_DOCUMENT_TYPES = ("application/pdf",)
ATTACHMENT_HEADERS = {
    "Content-Disposition": 'attachment; filename="document.bin"',
    "Content-Security-Policy": "sandbox",
    "X-Content-Type-Options": "nosniff",
}
NOT_AUTHORIZED = 0x0124  # PS3.4 C.4.2.1.4: Refused, not authorized
HEADER_BYTES = 64 << 10


@dataclass(frozen=True)
class Target:
    """A study, a series in it, or an instance in that (UIDs already checked)."""

    study: str
    series: str | None = None
    instance: str | None = None

    @property
    def path(self) -> str:
        parts = ["studies", self.study]
        if self.series:
            parts += ["series", self.series]
        if self.instance:
            parts += ["instances", self.instance]
        return "/".join(parts)


@dataclass(frozen=True)
class RenderRequest:
    accept: str
    frame: int = 1
    window: rendering.Window | None = None
    quality: int = 90
    thumbnail: bool = False
    whole_instance: bool = False  # ``/rendered`` of an instance: a report renders as a document


@dataclass(frozen=True)
class Rendered:
    content: bytes
    media_type: str
    headers: Mapping[str, str] = field(default_factory=dict)


class ImageRecords:
    def __init__(
        self,
        upstream: Upstream,
        index: PatientIndex,
        studies: StudyRecords,
        dicomweb_url: str,
        render_max_bytes: int = instances.MAX_INSTANCE_BYTES,
        offloader: Offloader | None = None,
    ) -> None:
        self.upstream = upstream
        self.index = index
        self.studies = studies
        self.dicomweb_url = dicomweb_url
        self.render_max_bytes = render_max_bytes
        self.offloader = offloader

    # -- QIDO --------------------------------------------------------------

    async def search(self, access: Access, level: str, query: qido.Query) -> list[DicomJson]:
        """Run ``query`` at ``level``: narrowed, merged, re-checked, paged."""
        if level == "study":
            indexed = self._from_jacket(access, query)
            if indexed is not None:
                return indexed
        visibility = access.visibility
        # Fuzzy person-name keys are matched here, not by the PACS: support for
        # fuzzymatching differs between archives (Orthanc ignores it).
        held = {
            name: value
            for name, value in query.filters.items()
            if query.fuzzy and vr_of(name) == "PN" and not any(c in value for c in "*?")
        }
        forwarded = {k: v for k, v in query.filters.items() if k not in held}
        queries = visibility.narrow(forwarded)
        if not queries:
            return []
        await self._refuse_ambiguous_patient_id(access, forwarded)
        fields = [*query.fields, *held, *CHECK_FIELDS]
        wanted = None if query.limit is None or held else query.offset + query.limit
        run = {
            "study": self.upstream.search_studies,
            "series": self.upstream.search_series,
            "instance": self.upstream.search_instances,
        }[level]
        batches = await asyncio.gather(*(run(q, fields, limit=wanted) for q in queries))
        issuer = forwarded.get("IssuerOfPatientID")
        seen: set[str] = set()
        results = []
        for item in (i for batch in batches for i in batch):
            key = dj.text(item, LEVEL_KEYS[level]) or ""
            if key in seen or not visibility.permits(item):
                continue
            if held and not matches(item, held, fuzzy=True):
                continue
            if issuer is not None and (dj.text(item, "IssuerOfPatientID") or "") != issuer:
                continue
            seen.add(key)
            results.append(item)
        end = None if query.limit is None else query.offset + query.limit
        page = results[query.offset : end]
        await self._note_patients(access, page)
        if not access.may("DocumentReference", "r"):
            page = [{k: v for k, v in item.items() if k not in REPORT_CONTENT} for item in page]
        return page

    def _from_jacket(self, access: Access, query: qido.Query) -> list[DicomJson] | None:
        """A patient-confined caller's study search from the jacket its access was decided
        from (read within the freshness bound), when the index can match every key
        exactly (:mod:`gateway.records.study_qido`); None: ask the PACS."""
        jacket = access.jacket
        if (
            not isinstance(jacket, Jacket)
            or jacket.key is None
            or access.patients != frozenset({jacket.patient})
            or not study_qido.answerable(query)
        ):
            return None
        visible = [s for s in jacket.studies if access.visibility.permits(s.source)]
        page = study_qido.answer(visible, query)
        if page:
            access.seen.patients.add(jacket.patient)
        if not access.may("DocumentReference", "r"):
            page = [{k: v for k, v in item.items() if k not in REPORT_CONTENT} for item in page]
        return page

    async def _refuse_ambiguous_patient_id(
        self, access: Access, filters: Mapping[str, str]
    ) -> None:
        """A PatientID that two issuers gave to two people names nobody: the caller must
        say which issuer (IssuerOfPatientID), or studies of both would come back as one
        patient's (a viewer's "other studies of this patient"). A wildcard is a search
        across patients, whose answers carry their issuers, and is left alone."""
        patient_id = filters.get("PatientID")
        if not patient_id or "IssuerOfPatientID" in filters or any(c in patient_id for c in "*?"):
            return
        patients = access.visibility.every_patient
        if patients is not None and len(patients) <= 1:
            return  # the caller sees one patient at most: nothing to mix up
        queries = access.visibility.narrow({"PatientID": patient_id})
        batches = await asyncio.gather(
            *(self.upstream.search_studies(q, CHECK_FIELDS) for q in queries)
        )
        keys: dict[str, set[str]] = {}
        for study in (s for batch in batches for s in batch):
            key = patient_key(study)
            if key and access.visibility.permits(study):
                keys.setdefault(key[1], set()).add(key[0])
        for found_id, issuers in sorted(keys.items()):
            if len(issuers) > 1:
                named = ", ".join(sorted(i or "(none)" for i in issuers))
                raise BadRequest(
                    f"PatientID '{found_id}' belongs to different patients at different "
                    f"issuers ({named}): add IssuerOfPatientID to say which one."
                )

    # -- WADO: retrieval, metadata, frames and bulk data -------------------

    async def retrieve(self, access: Access, target: Target, accept: str) -> Retrieved | Offloaded:
        await self._check(access, target)
        if full_study.is_full_study_request(target.series):
            # All or nothing, images first, each part's transfer syntax named: assembled
            # here, also with offload on (records/full_study.py).
            listed = await full_study.listing(self.upstream, target.study, access.visibility)
            return await full_study.ordered_study(self.upstream, target.study, listed, accept)
        return await self._transfer(target.path, accept)

    async def metadata(self, access: Access, target: Target) -> Retrieved:
        await self._check(access, target)
        retrieved = await self.upstream.retrieve(f"{target.path}/metadata", instances.DICOM_JSON)
        return Retrieved(
            retrieved.media_type,
            bulkdata.rewrite_bulk_uris(retrieved.chunks, self.dicomweb_url),
            retrieved.close,
        )

    async def pixels(
        self, access: Access, target: Target, resource: str, tail: str, accept: str
    ) -> Retrieved | Offloaded:
        """``frames/{list}`` or ``bulk/{tag path}`` of one instance."""
        await self._check(access, target)
        return await self._transfer(f"{target.path}/{resource}/{tail}", accept)

    async def _transfer(self, path: str, accept: str) -> Retrieved | Offloaded:
        """The bytes of an answer ``_check`` found wholly the caller's: handed to nginx
        when offload is on (the PACS's answer is exactly what would be relayed here,
        so nothing more goes out), else relayed by the gateway."""
        if self.offloader is not None:
            return self.offloader.hand_over(path, accept)
        return await self.upstream.retrieve(path, accept)

    async def _check(self, access: Access, target: Target) -> None:
        """The study is the caller's to see; and reports in what is asked need their permission."""
        await self.studies.summary(access, target.study)
        if access.may("DocumentReference", "r"):
            return
        filters = {"StudyInstanceUID": target.study, "SOPClassUID": DOCUMENT_CLASS_LIST}
        if target.series:
            filters["SeriesInstanceUID"] = target.series
        if target.instance:
            filters["SOPInstanceUID"] = target.instance
        found = await self.upstream.search_instances(filters, ("SOPClassUID",), limit=1)
        if any(dj.text(item, "SOPClassUID") in reports.CONTENT_CLASSES for item in found):
            if target.instance:
                require_reports(access)
            raise Forbidden(
                f"This {'series' if target.series else 'study'} holds reports, which the access "
                "granted does not include (DocumentReference); ask for its image series or "
                "instances one by one.",
                headers={"WWW-Authenticate": 'Bearer realm="gateway", error="insufficient_scope"'},
            )

    # -- rendering ---------------------------------------------------------

    async def render(self, access: Access, target: Target, asked: RenderRequest) -> Rendered:
        """A frame as JPEG or PNG; or, for ``/rendered`` of a report, the report itself."""
        await self.studies.summary(access, target.study)
        wants_text = any(t in asked.accept.lower() for t in ("text/html", "text/plain"))
        if asked.whole_instance and wants_text:
            return await self._report(access, target, asked.accept)
        async with instances.spooled(
            self.upstream,
            target.study,
            target.series or "",
            target.instance or "",
            self.render_max_bytes,
        ) as source:
            dataset = await _header(source)
            sop_class = str(dataset.get("SOPClassUID", ""))
            if sop_class in reports.CONTENT_CLASSES or "EncapsulatedDocument" in dataset:
                require_reports(access)
            if asked.whole_instance and "PixelData" not in dataset:
                if sop_class in reports.STRUCTURED_REPORTS:
                    return await self._report(access, target, asked.accept)
                if "EncapsulatedDocument" in dataset:
                    return await anyio.to_thread.run_sync(
                        encapsulated_document, dataset, asked.accept
                    )
            media_type = rendering.choose_media_type(asked.accept)
            image = await anyio.to_thread.run_sync(
                lambda: rendering.render(
                    source,
                    dataset,
                    asked.frame,
                    media_type,
                    asked.window,
                    rendering.THUMBNAIL_EDGE if asked.thumbnail else None,
                    asked.quality,
                    self.render_max_bytes,
                )
            )
        return Rendered(image, media_type)

    async def _report(self, access: Access, target: Target, accept: str) -> Rendered:
        """A structured report as HTML or text, from its metadata (as the FHIR size is)."""
        media_type = rendering.choose(accept, ("text/html", "text/plain"))
        found = await instances.metadata(self.upstream, target.path)
        if not found or reports.kind_of(found[0]) != "sr":
            raise NotAcceptable("Only structured reports are rendered as text/html or text/plain.")
        require_reports(access)
        if media_type == "text/html":
            return Rendered(reports.render_html(found[0]).encode(), "text/html; charset=utf-8")
        return Rendered(reports.render_text(found[0]).encode(), "text/plain; charset=utf-8")

    # -- STOW ----------------------------------------------------------------

    async def store(
        self, access: Access, body: IO[bytes], boundary: str, study: str | None
    ) -> stow.Outcome:
        """Store the parts of a spooled multipart body; ``study`` is the one the URL names.

        PS3.18 10.5.3: each part is stored or fails with a reason; a part for a
        patient outside the caller's visibility fails (0x0124) and is never sent on.
        """
        outcome = stow.Outcome()
        ranges = await anyio.to_thread.run_sync(stow.part_ranges, body, boundary)
        # Groups go to the archive while the next one is read and checked, up to
        # stow.UPLOADS_IN_FLIGHT at once; their outcomes join in the order sent.
        uploads: deque[asyncio.Task[stow.Outcome]] = deque()
        try:
            while ranges:
                parts, taken = await anyio.to_thread.run_sync(stow.read_group, body, ranges)
                ranges = ranges[taken:]
                group = await self._checked(access, parts, study)
                if len(uploads) >= stow.UPLOADS_IN_FLIGHT:
                    outcome.join(await uploads.popleft())
                uploads.append(asyncio.ensure_future(self._flush(*group)))
            while uploads:
                outcome.join(await uploads.popleft())
        finally:
            for upload in uploads:
                upload.cancel()
            await asyncio.gather(*uploads, return_exceptions=True)
        keys = {k for k in (_key_of(ds) for ds in outcome.stored) if k}
        if keys:
            await self.studies.stored(keys)
            access.seen.patients.update((await self.index.ids_for(sorted(keys))).values())
        return outcome

    async def _foreign_studies(self, access: Access, datasets: Sequence[Dataset]) -> set[str]:
        """Studies already in the archive that the caller may not see: nothing joins them."""
        if access.visibility.unrestricted:
            return set()
        uids = sorted({str(ds.get("StudyInstanceUID", "")) for ds in datasets} - {""})
        if not uids:
            return set()
        found = await self.upstream.search_studies(
            {"StudyInstanceUID": ",".join(uids)}, CHECK_FIELDS
        )
        return {
            uid
            for study in found
            if (uid := dj.text(study, "StudyInstanceUID")) in uids
            and not access.visibility.permits(study)
        }

    async def _checked(
        self, access: Access, parts: Sequence[stow.Part], study: str | None
    ) -> tuple[list[tuple[Dataset, bytes]], stow.Outcome]:
        """The parts of a group that may go to the archive, and the failures of the rest."""
        outcome = stow.Outcome()
        batch: list[tuple[Dataset, bytes]] = []
        refused = await self._foreign_studies(access, [p.dataset for p in parts if p.dataset])
        for part in parts:
            dataset = part.dataset
            if dataset is None:
                outcome.failed.append(("", "", stow.CANNOT_UNDERSTAND))
                continue
            ids = (str(dataset.SOPClassUID), str(dataset.SOPInstanceUID))
            instance_study = str(dataset.get("StudyInstanceUID", ""))
            if study and instance_study != study:
                outcome.failed.append((*ids, stow.WRONG_STUDY))
            elif not access.visibility.permits_patient(_key_of(dataset)) or (
                instance_study in refused
            ):
                outcome.failed.append((*ids, NOT_AUTHORIZED))
            else:
                batch.append((dataset, part.content))
        return batch, outcome

    async def _flush(
        self, batch: list[tuple[Dataset, bytes]], outcome: stow.Outcome
    ) -> stow.Outcome:
        if not batch:
            return outcome
        try:
            result = await self.upstream.store_encoded([raw for _, raw in batch])
        except UpstreamBadResponse:
            result = StoreResult(failed={str(ds.SOPInstanceUID): "refused" for ds, _ in batch})
        # Stored means listed as stored; only an archive that names nothing at all
        # (a bare 200) is taken at its word for the whole batch.
        named = bool(result.stored or result.failed)
        stored = set(result.stored)
        for dataset, _ in batch:
            uid = str(dataset.SOPInstanceUID)
            if named and uid not in stored:
                outcome.failed.append((str(dataset.SOPClassUID), uid, stow.PROCESSING_FAILURE))
            else:
                outcome.stored.append(dataset)
        return outcome

    # -- whole studies -------------------------------------------------------

    async def archive(self, access: Access, study_uids: Sequence[str]) -> AsyncIterator[bytes]:
        """The studies as one streamed ZIP of Part 10 files. Each is checked first; of
        several, those no longer in the archive are left out (NotFound when none is left)."""
        require_reports(access)  # a study's ZIP holds its reports
        found = []
        for uid in study_uids:
            try:
                found.append((await self.studies.summary(access, uid)).uid)
            except NotFound:
                if len(study_uids) == 1:
                    raise
        if not found:
            raise NotFound("None of these studies is in the archive.")
        if len(found) != 1:
            access.seen.study = None
        return study_archive(self.upstream, found, access.visibility)

    async def _note_patients(self, access: Access, items: Sequence[DicomJson]) -> None:
        keys = {k for k in (patient_key(i) for i in items) if k}
        if keys:
            access.seen.patients.update((await self.index.ids_for(sorted(keys))).values())


async def _header(source: IO[bytes]) -> Dataset:
    """The instance's elements; large values (pixels, documents) are read from
    ``source`` only when used, except in a deflated file, which has no offsets to
    read them at (it is read whole)."""

    def read() -> Dataset:
        dataset = dcmread(source, defer_size=HEADER_BYTES)
        if dataset.file_meta.get("TransferSyntaxUID") == DeflatedExplicitVRLittleEndian:
            source.seek(0)
            dataset = dcmread(source)
        return dataset

    try:
        return await anyio.to_thread.run_sync(read)
    except (InvalidDicomError, ValueError, EOFError, KeyError):
        raise UpstreamBadResponse("The archive sent an instance that cannot be read.") from None


def encapsulated_document(dataset: Dataset, accept: str) -> Rendered:
    """An Encapsulated Document as what it carries, if that is a type the gateway serves
    (PDF); anything else (HTML, SVG, XML ...) as an attachment a browser will not run."""
    declared = str(dataset.get("MIMETypeOfEncapsulatedDocument", "") or "application/pdf")
    mime = declared.split(";")[0].strip().lower()
    document = bytes(dataset.EncapsulatedDocument)
    length = dataset.get("EncapsulatedDocumentLength")
    if length and int(length) <= len(document):
        document = document[: int(length)]  # drop the even-length padding
    if mime in SERVED_DOCUMENT_TYPES:
        return Rendered(document, rendering.choose(accept, (mime,)))
    return Rendered(
        document,
        rendering.choose(accept, ("application/octet-stream",)),
        ATTACHMENT_HEADERS,
    )


def _key_of(dataset: Dataset) -> PatientKey | None:
    patient_id = str(dataset.get("PatientID", "") or "").strip()
    if not patient_id:
        return None
    return (str(dataset.get("IssuerOfPatientID", "") or "").strip(), patient_id)
