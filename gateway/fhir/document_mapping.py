"""DICOM reports and manifests -> FHIR R4 DocumentReference, as pure functions.

One DocumentReference per SR, Encapsulated PDF or Key Object Selection
instance, from its instance metadata (DICOM JSON). Its id is the SOP
Instance UID, as an ImagingStudy's id is the Study Instance UID.
"""

from __future__ import annotations

from urllib.parse import quote

from gateway.dates import fhir_datetime
from gateway.dicomweb import dicomjson as dj
from gateway.dicomweb import reports
from gateway.dicomweb.dicomjson import DicomJson
from gateway.fhir import terminology as terms
from gateway.fhir.mapping import MappingContext, Resource, concept, issuer

IMAGING_REPORT = {"system": terms.LOINC, "code": "18748-4", "display": "Diagnostic imaging study"}
RADIOLOGY = {"system": terms.LOINC, "code": "LP29684-5", "display": "Radiology"}
DICOM_UID_REGISTRY = "http://dicom.nema.org/resources/ontology/DCMUID"
CONTENT_TYPES = {"sr": ("text/html", "text/plain"), "pdf": ("application/pdf",), "kos": ()}
DICOM = "application/dicom"


def document_type(instance: DicomJson) -> Resource:
    """The document title when it is LOINC (or the KOS title); else the imaging report code."""
    titles = dj.items(instance, "ConceptNameCodeSequence")
    title = concept(titles[0]) if titles else {}
    codings = title.get("coding", [])
    if reports.kind_of(instance) == "kos" and codings:
        return title
    if any(c.get("system") == terms.LOINC for c in codings):
        return title
    return {
        "coding": [IMAGING_REPORT, *codings],
        "text": title.get("text", IMAGING_REPORT["display"]),
    }


def instance_url(dicomweb_url: str, instance: DicomJson) -> str:
    study, series, sop = (
        dj.text(instance, key) or ""
        for key in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")
    )
    return f"{dicomweb_url}/studies/{study}/series/{series}/instances/{sop}"


def authors(instance: DicomJson) -> list[str]:
    names: list[str] = []
    for observer in dj.items(instance, "VerifyingObserverSequence"):
        names.append(dj.text(observer, "VerifyingObserverName") or "")
    for observer in dj.items(instance, "AuthorObserverSequence"):
        names.append(dj.text(observer, "PersonName") or "")
    if not any(names):
        names = dj.texts(instance, "NameOfPhysiciansReadingStudy")
    return list(dict.fromkeys(dj.display_name(n) for n in names if n))


def document_reference(
    instance: DicomJson,
    *,
    patient_id: str | None,
    context: MappingContext,
    fhir_url: str,
) -> Resource:
    """One DocumentReference from a document instance's metadata."""
    kind = reports.kind_of(instance)
    sop = dj.text(instance, "SOPInstanceUID")
    study = dj.text(instance, "StudyInstanceUID")
    if kind is None or not sop or not study:
        raise ValueError("only SR, Encapsulated PDF and KOS instances map to DocumentReference")
    resource: Resource = {
        "resourceType": "DocumentReference",
        "id": sop,
        "masterIdentifier": {"system": terms.RFC3986, "value": f"urn:oid:{sop}"},
        "status": "current",
    }
    accession = dj.text(instance, "AccessionNumber")
    if accession:
        identifier: Resource = {
            "type": {"coding": [{"system": terms.V2_0203, "code": "ACSN"}]},
            "value": accession,
        }
        issuers = dj.items(instance, "IssuerOfAccessionNumberSequence")
        system = issuer(issuers[0])[0] if issuers else None
        if system:
            identifier["system"] = system
        resource["identifier"] = [identifier]
    status = reports.doc_status(instance)
    if status:
        resource["docStatus"] = status
    resource["type"] = document_type(instance)
    resource["category"] = [{"coding": [RADIOLOGY]}]
    subject: Resource = {"reference": f"Patient/{patient_id}"} if patient_id else {}
    name = dj.text(instance, "PatientName")
    if name:
        subject["display"] = dj.display_name(name)
    resource["subject"] = subject or {"display": "Unknown patient"}
    zone = dj.text(instance, "TimezoneOffsetFromUTC")
    created = fhir_datetime(
        dj.text(instance, "ContentDate") or dj.text(instance, "InstanceCreationDate"),
        dj.text(instance, "ContentTime") or dj.text(instance, "InstanceCreationTime"),
        zone,
        context.local_zone,
    )
    if created and "T" in created:
        resource["date"] = created  # an instant needs a time and a zone
    names = authors(instance)
    if names:
        resource["author"] = [{"display": n} for n in names]
    if status in ("final", "amended"):
        verifiers = dj.items(instance, "VerifyingObserverSequence")
        verifier = dj.text(verifiers[0], "VerifyingObserverName") if verifiers else None
        if verifier:
            resource["authenticator"] = {"display": dj.display_name(verifier)}
    description = dj.text(instance, "SeriesDescription") or reports.title_of(instance)
    if description:
        resource["description"] = description
    resource["content"] = _contents(instance, kind, context, fhir_url, created)
    related: Resource = {"reference": f"ImagingStudy/{study}"}
    study_started = fhir_datetime(
        dj.text(instance, "StudyDate"),
        dj.text(instance, "StudyTime"),
        zone,
        context.local_zone,
    )
    resource["context"] = {"related": [related]}
    if study_started:
        resource["context"]["period"] = {"start": study_started}
    return resource


def _contents(
    instance: DicomJson,
    kind: str,
    context: MappingContext,
    fhir_url: str,
    created: str | None,
) -> list[Resource]:
    title = reports.title_of(instance)
    sop_class = dj.text(instance, "SOPClassUID") or ""
    base = instance_url(context.dicomweb_url, instance)
    contents = []
    attachments: list[Resource] = []
    if kind == "sr":
        for media_type, text in (
            ("text/html", reports.render_html(instance)),
            ("text/plain", reports.render_text(instance)),
        ):
            attachments.append(
                {
                    "contentType": media_type,
                    "url": f"{base}/rendered?accept={quote(media_type, safe='')}",
                    "size": len(text.encode()),
                }
            )
    elif kind == "pdf":
        attachment: Resource = {
            "contentType": "application/pdf",
            "url": f"{base}/rendered?accept={quote('application/pdf', safe='')}",
        }
        size = dj.integer(instance, "EncapsulatedDocumentLength")
        if size:
            attachment["size"] = size
        attachments.append(attachment)
    else:
        sop = dj.text(instance, "SOPInstanceUID")
        attachments.append({"contentType": DICOM, "url": f"{fhir_url}/Binary/{sop}"})
    for attachment in attachments:
        if title:
            attachment["title"] = title
        if created:
            attachment["creation"] = created
        content: Resource = {"attachment": attachment}
        content["format"] = {
            "system": DICOM_UID_REGISTRY,
            "code": sop_class,
            "display": reports.CLASS_NAMES.get(sop_class, "DICOM object"),
        }
        contents.append(content)
    return contents
