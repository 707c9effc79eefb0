"""A request that names a patient outside the caller's access is refused (403), not narrowed.

SMART Imaging Access, Backend Services mode: a search for a patient outside the
client's pre-authorized access answers 403 Forbidden, where a search without a
patient returns only what is pre-authorized. What a request names: the FHIR
``patient`` / ``subject`` search parameters (ids, ``Patient/id`` or absolute
references; several values are alternatives, and every one must be inside), a
``Patient/{id}`` read, and a DICOMweb ``PatientID`` without wildcards (with its
``IssuerOfPatientID`` when given). A study outside the access is still not found
(404): a refusal by study must not confirm that the study exists, while a patient
id that the caller names is refused whether or not it exists.
"""

from __future__ import annotations

from urllib.parse import parse_qsl

from starlette.requests import Request

from gateway.errors import Forbidden
from gateway.records.access import Access

_REFERENCE_PARAMETERS = ("patient", "subject", "patient:Patient", "subject:Patient")
_PATIENT_ID = ("PatientID", "00100020")
_ISSUER = ("IssuerOfPatientID", "00100021")


def refuse(request: Request, resource_type: str, action: str, access: Access) -> None:
    """Raise Forbidden when the request names a patient outside ``access``."""
    allowed = access.patients if access.patients is not None else None
    if allowed is None:
        return
    query = parse_qsl(request.scope.get("query_string", b"").decode("latin-1"))
    named = {
        _patient_of(value)
        for name, values in query
        if name in _REFERENCE_PARAMETERS
        for value in values.split(",")
        if value.strip()
    }
    if resource_type == "Patient" and action == "r" and "id" in request.path_params:
        named.add(str(request.path_params["id"]))
    if named - allowed:
        raise Forbidden("The requested patient is outside the access granted to this client.")
    keys = access.visibility.every_patient
    if keys is None:
        return
    issuers = {value for name, value in query if name in _ISSUER}
    for name, value in query:
        if name not in _PATIENT_ID or not value or any(c in value for c in "*?\\"):
            continue
        if not any(
            patient_id == value and (not issuers or issuer in issuers)
            for issuer, patient_id in keys
        ):
            raise Forbidden("The requested PatientID is outside the access granted to this client.")


def _patient_of(reference: str) -> str:
    """``123``, ``Patient/123`` or ``https://.../Patient/123`` -> ``123``."""
    reference = reference.strip()
    if "Patient/" in reference:
        reference = reference.rsplit("Patient/", 1)[1]
    return reference.split("/", 1)[0]
