"""The CapabilityStatement: exactly the resources, interactions and parameters that work."""

from __future__ import annotations

from gateway import __version__
from gateway.audit import SEARCH_PARAMETERS as AUDIT_SEARCH
from gateway.fhir import consents, documents, patients, studies
from gateway.fhir.mapping import Resource

SOFTWARE_NAME = "Image Share Gateway"


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
                    ),
                    resource("Patient", patients.SEARCH_PARAMETERS),
                    resource("Endpoint", {"_id": ("token", "The endpoint's id")}),
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
