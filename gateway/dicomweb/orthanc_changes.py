"""Orthanc's change feed (``GET /changes?since=``), read for the study index.

Orthanc numbers every change to its store (a new study, a series that became
stable, ...) and lists them after a sequence number. This client only reads
that list and says which studies and PatientIDs the changes touched; the
records layer decides what to do with them. It speaks Orthanc's own REST API,
not DICOMweb, so it exists only for Orthanc.

Orthanc names resources by its own ids, so each changed study (or series) is
looked up once per poll; a resource deleted meanwhile answers 404 and is
skipped (deletions reach the index at its freshness bound).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import httpx

from gateway.errors import UpstreamUnavailable
from gateway.settings import Settings, UpstreamAuth

# The changes that may add to, or change, a patient's list of studies.
STUDY_CHANGES = frozenset({"NewStudy", "StableStudy", "ModifiedStudy", "UpdatedAttachment"})
SERIES_CHANGES = frozenset({"NewSeries", "StableSeries"})


@dataclass
class Touched:
    """What one page of changes touched, and where the next page starts."""

    patient_ids: set[str] = field(default_factory=set)
    study_uids: set[str] = field(default_factory=set)
    last: int = 0
    done: bool = True


def rest_root(settings: Settings) -> str:
    """``GATEWAY_ORTHANC_URL``, else the DICOMweb base without its last segment."""
    if settings.orthanc_url:
        return settings.orthanc_url.rstrip("/")
    assert settings.dicomweb_url is not None
    return settings.dicomweb_url.rstrip("/").rsplit("/", 1)[0]


class OrthancChanges:
    def __init__(self, root: str, client: httpx.AsyncClient) -> None:
        self.root = root
        self._http = client

    @classmethod
    def from_settings(cls, settings: Settings) -> OrthancChanges:
        auth: httpx.Auth | None = None
        headers = {}
        if settings.upstream_auth is UpstreamAuth.basic:
            assert settings.upstream_username and settings.upstream_password
            auth = httpx.BasicAuth(
                settings.upstream_username, settings.upstream_password.get_secret_value()
            )
        elif settings.upstream_auth is UpstreamAuth.bearer:
            assert settings.upstream_token
            headers["Authorization"] = f"Bearer {settings.upstream_token.get_secret_value()}"
        client = httpx.AsyncClient(
            timeout=httpx.Timeout(
                settings.upstream_read_timeout, connect=settings.upstream_connect_timeout
            ),
            auth=auth,
            headers=headers,
        )
        return cls(rest_root(settings), client)

    async def last(self) -> int:
        """The newest change's number: where a new follower starts."""
        answer = await self._get("/changes", {"last": ""})
        return int(answer.get("Last", 0)) if isinstance(answer, dict) else 0

    async def since(self, cursor: int, limit: int = 100) -> Touched:
        answer = await self._get("/changes", {"since": str(cursor), "limit": str(limit)})
        if not isinstance(answer, dict):
            return Touched(last=cursor)
        touched = Touched(last=int(answer.get("Last", cursor)), done=bool(answer.get("Done", True)))
        studies: set[str] = set()
        for change in answer.get("Changes", []):
            kind, level, ident = (
                change.get("ChangeType"),
                change.get("ResourceType"),
                change.get("ID"),
            )
            if not isinstance(ident, str) or not ident:
                continue
            if level == "Study" and kind in STUDY_CHANGES:
                studies.add(f"/studies/{ident}")
            elif level == "Series" and kind in SERIES_CHANGES:
                studies.add(f"/series/{ident}/study")
        for path in sorted(studies):
            study = await self._get(path, missing_ok=True)
            if not isinstance(study, dict):
                continue
            uid = study.get("MainDicomTags", {}).get("StudyInstanceUID")
            patient = study.get("PatientMainDicomTags", {}).get("PatientID")
            if uid:
                touched.study_uids.add(str(uid))
            if patient:
                touched.patient_ids.add(str(patient))
        return touched

    async def _get(
        self, path: str, params: dict[str, str] | None = None, missing_ok: bool = False
    ) -> Any:
        try:
            answer = await self._http.get(self.root + path, params=params)
        except httpx.HTTPError as exc:
            raise UpstreamUnavailable(f"Orthanc's change feed did not answer: {exc}") from None
        if answer.status_code == 404 and missing_ok:
            return None
        if answer.status_code != 200:
            raise UpstreamUnavailable(f"Orthanc's change feed answered {answer.status_code}.")
        return answer.json()

    async def aclose(self) -> None:
        await self._http.aclose()
