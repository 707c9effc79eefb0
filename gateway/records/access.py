"""What one caller may do: the ``Access`` every records operation takes first.

An ``Access`` is decided once per request, where the route declares what it
needs (:mod:`gateway.authorization`), and carries:

- the ``Visibility``: which patients and studies the caller may see. Every
  query to the PACS is narrowed by it (``narrow``: the patient's PatientID is
  injected and study UID lists are intersected, whatever the client sent,
  wildcards, fuzzy matching and empty values included), and every result is
  re-checked (``permits``), so a PACS that matches loosely can never widen
  what a caller sees;
- the permissions (``may``): which resource types and actions the caller
  holds, so an operation that finds a report inside a study can ask whether
  the caller may read reports;
- the studies held back by the release delay that this caller would
  otherwise see (``held``), so only they are told "available from";
- the actor and the purpose of use the audit trail names, and what the
  operations touched (``seen``), so the trail records the patient of every
  access.

Reads of something not visible answer 404, never 403: a refusal must not
confirm that a study exists.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime

from gateway.audit import Actor
from gateway.dicomweb import dicomjson as dj
from gateway.dicomweb.dicomjson import DicomJson, PatientKey, patient_key
from gateway.dicomweb.matching import matches
from gateway.errors import Forbidden

__all__ = [
    "CHECK_FIELDS",
    "Access",
    "PatientKey",
    "Seen",
    "Visibility",
    "only_own_patients",
    "patient_key",
]
# What narrowed queries must return so that ``permits`` can check each result.
CHECK_FIELDS = ("StudyInstanceUID", "PatientID", "IssuerOfPatientID")


@dataclass(frozen=True)
class Visibility:
    """What one request may see; ``None`` leaves that axis unrestricted.

    ``also`` adds more that is visible besides (a union): a backend client given whole
    patients and, besides them, single studies of other patients sees both.
    """

    patients: frozenset[PatientKey] | None = None
    studies: frozenset[str] | None = None
    also: tuple[Visibility, ...] = ()

    @property
    def unrestricted(self) -> bool:
        return self.patients is None and self.studies is None

    @property
    def every_patient(self) -> frozenset[PatientKey] | None:
        """Every patient some part of this visibility names (None: not confined)."""
        parts = (self, *self.also)
        if any(part.patients is None for part in parts):
            return None
        return frozenset(key for part in parts for key in part.patients or ())

    def permits_patient(self, key: PatientKey | None) -> bool:
        if self.patients is None or (key is not None and key in self.patients):
            return True
        return any(part.permits_patient(key) for part in self.also)

    def permits(self, item: DicomJson) -> bool:
        """May the request see this study, series or instance (DICOM JSON)?"""
        return self._permits_here(item) or any(part.permits(item) for part in self.also)

    def _permits_here(self, item: DicomJson) -> bool:
        if self.unrestricted:
            return True
        if self.studies is not None and dj.text(item, "StudyInstanceUID") not in self.studies:
            return False
        if self.patients is not None:
            return self._patient_here(patient_key(item))
        return True

    def _patient_here(self, key: PatientKey | None) -> bool:
        return self.patients is None or (key is not None and key in self.patients)

    def narrow(self, filters: Mapping[str, str]) -> list[dict[str, str]]:
        """The QIDO queries that answer ``filters`` within this visibility (maybe none)."""
        queries = self._narrow_here(filters)
        for part in self.also:
            queries.extend(q for q in part.narrow(filters) if q not in queries)
        return queries

    def _narrow_here(self, filters: Mapping[str, str]) -> list[dict[str, str]]:
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
        for patient_id in sorted({patient_id for _, patient_id in self.patients}):
            if requested_id and not matches(_patient_item(patient_id), {"PatientID": requested_id}):
                continue
            queries.append({**narrowed, "PatientID": patient_id})
        return queries


EVERYTHING = Visibility()
NOTHING = Visibility(patients=frozenset(), studies=frozenset())


# Purposes of use (HL7 v3 ActReason): a patient's own access, or one they gave through a
# share link; a provider's; a backend system's.
PATIENT_REQUEST = "PATRQT"
TREATMENT = "TREAT"
OPERATIONS = "HOPERAT"


@dataclass
class Seen:
    """What the operations of one request touched, for its audit record."""

    patients: set[str] = field(default_factory=set)  # FHIR Patient ids
    study: str | None = None  # the one study a read or retrieval was about


def _allow_all(resource_type: str, action: str) -> bool:
    return True


@dataclass(frozen=True)
class Access:
    """One caller's access, decided once per request (see the module docstring)."""

    visibility: Visibility
    actor: Actor = field(default_factory=Actor)
    # (resource type, action) -> allowed? Actions are SMART's c, r, u, d, s.
    permits: Callable[[str, str], bool] = _allow_all
    held: Mapping[str, datetime] = field(default_factory=dict)
    # The FHIR ids of the patients the caller is confined to (None: not confined).
    patients: frozenset[str] | None = None
    # Why the caller asks, as the audit trail names it (HL7 v3 ActReason).
    purpose: str | None = None
    seen: Seen = field(default_factory=Seen, compare=False)
    # The confined patient's jacket this Access was decided from (records.jacket.Jacket),
    # so the request's operations read the study index once, not again.
    jacket: object | None = field(default=None, compare=False, repr=False)

    def may(self, resource_type: str, action: str) -> bool:
        return self.permits(resource_type, action)


def only_own_patients(access: Access, patient_groups: Iterable[Iterable[str]]) -> None:
    """A search naming patients (``patient=``, ``subject=``) by a caller confined to
    patients (a patient token): every patient named must be one of the caller's, or
    the search is refused with 403 (SMART Imaging Access: "a mismatch receives 403
    Forbidden, not an empty Bundle"). Reads of one study still answer 404."""
    if access.patients is None:
        return
    for group in patient_groups:
        strangers = set(group) - access.patients
        if strangers:
            raise Forbidden("This access covers only its own patient; another patient was named.")


def _uid_item(uid: str) -> DicomJson:
    return {dj.tag("StudyInstanceUID"): dj.element("UI", uid)}


def _patient_item(patient_id: str) -> DicomJson:
    return {dj.tag("PatientID"): dj.element("LO", patient_id)}
