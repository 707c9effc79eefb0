"""The one place that decides what a request may see.

Every FHIR and DICOMweb route asks the configured :class:`AccessPolicy` for
the request's :class:`Visibility`, then:

- narrows each QIDO query with it (``narrow``): the patient's PatientID is
  injected and study UID lists are intersected, whatever the client sent,
  wildcards, fuzzy matching and empty values included;
- re-checks every study, series or instance the PACS returns (``permits``),
  so a PACS that matches loosely can never widen what a request sees.

A gate in front of the routes (the bearer token, a portal session, an opened
share link) puts the visibility it decided in the request state; every policy
honours it, so a share link confines its recipient even on a gateway that
requires no tokens. Reads of something not visible answer 404, never 403: a
refusal must not confirm that a study exists.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

from starlette.requests import Request

from gateway.dicomweb import dicomjson as dj
from gateway.dicomweb.dicomjson import DicomJson
from gateway.dicomweb.matching import matches

PatientKey = tuple[str, str]  # (issuer of patient id, PatientID)
# What narrowed queries must return so that ``permits`` can check each result.
CHECK_FIELDS = ("StudyInstanceUID", "PatientID", "IssuerOfPatientID")


@dataclass(frozen=True)
class Visibility:
    """What one request may see; ``None`` leaves that axis unrestricted."""

    patients: frozenset[PatientKey] | None = None
    studies: frozenset[str] | None = None

    @property
    def unrestricted(self) -> bool:
        return self.patients is None and self.studies is None

    def permits_patient(self, key: PatientKey | None) -> bool:
        return self.patients is None or (key is not None and key in self.patients)

    def permits(self, item: DicomJson) -> bool:
        """May the request see this study, series or instance (DICOM JSON)?"""
        if self.unrestricted:
            return True
        if self.studies is not None and dj.text(item, "StudyInstanceUID") not in self.studies:
            return False
        if self.patients is not None:
            patient_id = dj.text(item, "PatientID")
            key = (dj.text(item, "IssuerOfPatientID") or "", patient_id) if patient_id else None
            return self.permits_patient(key)
        return True

    def narrow(self, filters: Mapping[str, str]) -> list[dict[str, str]]:
        """The QIDO queries that answer ``filters`` within this visibility (maybe none)."""
        if self.unrestricted:
            return [dict(filters)]
        narrowed = dict(filters)
        if self.studies is not None:
            requested = filters.get("StudyInstanceUID", "")
            allowed = sorted(
                uid
                for uid in self.studies
                if not requested or matches(_uid_item(uid), {"StudyInstanceUID": requested})
            )
            if not allowed:
                return []
            narrowed["StudyInstanceUID"] = ",".join(allowed)
        if self.patients is None:
            return [narrowed]
        queries = []
        requested_id = filters.get("PatientID", "")
        for _, patient_id in sorted(self.patients):
            if requested_id and not matches(_patient_item(patient_id), {"PatientID": requested_id}):
                continue
            queries.append({**narrowed, "PatientID": patient_id})
        return queries


EVERYTHING = Visibility()
NOTHING = Visibility(patients=frozenset(), studies=frozenset())


class AccessPolicy(Protocol):
    async def visibility(self, request: Request) -> Visibility: ...


def decided(request: Request) -> Visibility | None:
    """The visibility a gate in front of the route decided for this request, if any."""
    found = request.scope.get("state", {}).get("visibility")
    return found if isinstance(found, Visibility) else None


class AllowEverything:
    """For a gateway behind another authorization layer (``GATEWAY_AUTH_REQUIRED=false``):
    what no gate confined, every request sees."""

    async def visibility(self, request: Request) -> Visibility:
        return decided(request) or EVERYTHING


def _uid_item(uid: str) -> DicomJson:
    return {dj.tag("StudyInstanceUID"): dj.element("UI", uid)}


def _patient_item(patient_id: str) -> DicomJson:
    return {dj.tag("PatientID"): dj.element("LO", patient_id)}
