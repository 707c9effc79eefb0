"""The CapabilityStatement: exactly the resources, interactions and parameters that work."""

from __future__ import annotations

from gateway import __version__
from gateway.audit import SEARCH_PARAMETERS as AUDIT_SEARCH
from gateway.fhir import consents, documents, patients, studies
from gateway.fhir.mapping import (
    ENDPOINT_PROFILE,
    SERVER_REQUIREMENTS,
    STUDY_PROFILE,
    Resource,
)

SOFTWARE_NAME = "Image Share Gateway"
IMAGING_STUDY_DOCUMENTATION = (
    "SMART Imaging Access 0.1: search by patient, alone or with _lastUpdated and "
    "identifier (urn:oid:{Study Instance UID}, or an accession number); "
    "_include=ImagingStudy:endpoint. Each study carries its WADO-RS Endpoint contained "
    "too. A patient token naming another patient gets 403. When the archive does not "
    "answer within its budget the answer is 503 with Retry-After."
)


def capability_statement(
    fhir_base_url: str, published: str, security: Resource | None = None
) -> Resource:
    def search_params(table: dict[str, tuple[str, str]]) -> list[Resource]:
        return [
            {"name": name, "type": kind, "documentation": text}
            for name, (kind, text) in table.items()
        ]

    def resource(kind: str, table: dict[str, tuple[str, str]], **extra: object) -> Resource:
        entry: Resource = {
            "type": kind,
            "profile": f"http://hl7.org/fhir/StructureDefinition/{kind}",
            "interaction": [{"code": "read"}, {"code": "search-type"}],
            "versioning": "no-version",
            "readHistory": False,
            "updateCreate": False,
            "searchParam": search_params(table),
        }
        entry.update(extra)
        return entry

    return {
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": published,
        "publisher": "Image Share Gateway project",
        "kind": "instance",
        "instantiates": [SERVER_REQUIREMENTS],
        "software": {"name": SOFTWARE_NAME, "version": __version__},
        "implementation": {"description": "Image Share Gateway FHIR facade", "url": fhir_base_url},
        "fhirVersion": "4.0.1",
        "format": ["application/fhir+json", "json"],
        "rest": [
            {
                "mode": "server",
                **({"security": security} if security else {}),
                "resource": [
                    resource(
                        "ImagingStudy",
                        studies.SEARCH_PARAMETERS,
                        searchInclude=list(studies.INCLUDES),
                        supportedProfile=[STUDY_PROFILE],
                        documentation=IMAGING_STUDY_DOCUMENTATION,
                    ),
                    resource("Patient", patients.SEARCH_PARAMETERS),
                    resource(
                        "Endpoint",
                        {"_id": ("token", "The endpoint's id")},
                        supportedProfile=[ENDPOINT_PROFILE],
                    ),
                    resource("DocumentReference", documents.SEARCH_PARAMETERS),
                    resource("AuditEvent", AUDIT_SEARCH),
                    resource("Consent", consents.SEARCH_PARAMETERS),
                    {
                        "type": "Practitioner",
                        "profile": "http://hl7.org/fhir/StructureDefinition/Practitioner",
                        "interaction": [{"code": "read"}],
                        "documentation": "The gateway's signed-in practitioners (fhirUser).",
                    },
                    {
                        "type": "Binary",
                        "profile": "http://hl7.org/fhir/StructureDefinition/Binary",
                        "interaction": [{"code": "read"}],
                        "documentation": "The DICOM object of a manifest (application/dicom).",
                    },
                ],
            }
        ],
    }
