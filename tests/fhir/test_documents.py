"""DocumentReference over the fixture reports and manifests, on both backends."""

from __future__ import annotations

from dataclasses import dataclass
from io import BytesIO
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from fhir.resources.R4B.binary import Binary
from fhir.resources.R4B.documentreference import DocumentReference
from pydicom import Dataset, dcmread

from tests.conftest import Gateway
from tests.fhir.test_api import expect_outcome, patient_id_of, resources, search

SR_CLASSES = {"1.2.840.10008.5.1.4.1.1.88.22", "1.2.840.10008.5.1.4.1.1.88.33"}
PDF_CLASS = "1.2.840.10008.5.1.4.1.1.104.1"
KOS_CLASS = "1.2.840.10008.5.1.4.1.1.88.59"


@dataclass
class Document:
    dataset: Dataset

    @property
    def uid(self) -> str:
        return str(self.dataset.SOPInstanceUID)

    @property
    def kind(self) -> str:
        sop_class = str(self.dataset.SOPClassUID)
        return "sr" if sop_class in SR_CLASSES else "pdf" if sop_class == PDF_CLASS else "kos"

    @property
    def findings(self) -> str:
        """The findings text the generator wrote (SR content, or the line in the PDF)."""
        if self.kind == "sr":
            container = self.dataset.ContentSequence
            return str(container[0].TextValue)
        return ""


@pytest.fixture(scope="module")
def documents(fixture_files: list[Path]) -> dict[str, Document]:
    found = {}
    for path in fixture_files:
        header = dcmread(path, stop_before_pixels=True)
        if str(header.SOPClassUID) in SR_CLASSES | {PDF_CLASS, KOS_CLASS}:
            found[str(header.SOPInstanceUID)] = Document(dcmread(path))
    return found


def everything(gateway: Gateway, query: str = "") -> list[dict]:
    bundle = search(gateway, f"/fhir/DocumentReference?_count=500{query}")
    return resources(bundle)


def local(gateway: Gateway, url: str) -> str:
    parts = urlsplit(url)
    assert url.startswith(gateway.settings.public_url), url
    return parts.path + (f"?{parts.query}" if parts.query else "")


def test_every_report_and_manifest_is_a_valid_document_reference(
    gateway: Gateway, documents: dict[str, Document]
) -> None:
    found = everything(gateway)
    assert {r["id"] for r in found} == set(documents)
    for resource in found:
        DocumentReference.model_validate(resource)
        document = documents[resource["id"]]
        assert resource["masterIdentifier"]["value"] == f"urn:oid:{document.uid}"
        assert resource["context"]["related"] == [
            {"reference": f"ImagingStudy/{document.dataset.StudyInstanceUID}"}
        ]
        assert resource["subject"]["reference"].startswith("Patient/")
        assert resource["category"][0]["coding"][0]["code"] == "LP29684-5"
        expected_type = "113030" if document.kind == "kos" else "18748-4"
        assert resource["type"]["coding"][0]["code"] == expected_type
        attachment = resource["content"][0]["attachment"]
        assert attachment["title"] and attachment["creation"]
        assert (
            attachment["contentType"]
            == {
                "sr": "text/html",
                "pdf": "application/pdf",
                "kos": "application/dicom",
            }[document.kind]
        )


def test_doc_status_follows_the_report_flags(
    gateway: Gateway, documents: dict[str, Document]
) -> None:
    statuses = {r["id"]: r.get("docStatus") for r in everything(gateway)}
    seen = set()
    for uid, document in documents.items():
        flags = (document.dataset.get("CompletionFlag"), document.dataset.get("VerificationFlag"))
        expected = {
            ("COMPLETE", "VERIFIED"): "final",
            ("PARTIAL", "UNVERIFIED"): "preliminary",
        }.get(flags)
        assert statuses[uid] == expected, (uid, flags)
        seen.add(expected)
    assert {"final", "preliminary", None} <= seen


def test_attachments_serve_the_content(gateway: Gateway, documents: dict[str, Document]) -> None:
    by_kind: dict[str, dict] = {}
    for resource in everything(gateway):
        by_kind.setdefault(documents[resource["id"]].kind, resource)
    assert set(by_kind) == {"sr", "pdf", "kos"}

    report = by_kind["sr"]
    findings = documents[report["id"]].findings
    assert "Reference finding" in findings
    for content in report["content"]:
        attachment = content["attachment"]
        response = gateway.get(local(gateway, attachment["url"]))
        assert response.status_code == 200
        assert response.headers["content-type"].startswith(attachment["contentType"])
        assert findings in response.text
        assert len(response.content) == attachment["size"]
    assert {c["attachment"]["contentType"] for c in report["content"]} == {
        "text/html",
        "text/plain",
    }

    pdf = by_kind["pdf"]["content"][0]["attachment"]
    response = gateway.get(local(gateway, pdf["url"]))
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/pdf"
    assert response.content.startswith(b"%PDF") and response.content.rstrip().endswith(b"%%EOF")
    assert len(response.content) == pdf["size"]

    manifest = by_kind["kos"]["content"][0]["attachment"]
    response = gateway.get(local(gateway, manifest["url"]))
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/dicom"
    kos = dcmread(BytesIO(response.content))
    assert str(kos.SOPClassUID) == KOS_CLASS
    referenced = kos.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence
    assert referenced
    as_resource = gateway.get(
        local(gateway, manifest["url"]), headers={"Accept": "application/fhir+json"}
    )
    binary = Binary.model_validate(as_resource.json())
    assert binary.contentType == "application/dicom"


def test_search_parameters(gateway: Gateway, documents: dict[str, Document]) -> None:
    final = next(d for d in documents.values() if d.dataset.get("VerificationFlag") == "VERIFIED")
    ds = final.dataset
    patient = patient_id_of(gateway, f"{ds.PatientID}")
    same_patient = {
        uid
        for uid, d in documents.items()
        if (d.dataset.PatientID, d.dataset.get("IssuerOfPatientID"))
        == (ds.PatientID, ds.get("IssuerOfPatientID"))
    }
    by_patient = {r["id"] for r in everything(gateway, f"&patient={patient}")}
    assert final.uid in by_patient and by_patient <= same_patient

    same_study = {
        u for u, d in documents.items() if d.dataset.StudyInstanceUID == ds.StudyInstanceUID
    }
    related = everything(gateway, f"&related=ImagingStudy/{ds.StudyInstanceUID}")
    assert {r["id"] for r in related} == same_study

    def ids(query: str) -> set[str]:
        return {r["id"] for r in everything(gateway, query)}

    kinds = {uid: d.kind for uid, d in documents.items()}
    assert ids("&type=http://loinc.org|18748-4") == {u for u, k in kinds.items() if k != "kos"}
    assert ids("&type=113030") == {u for u, k in kinds.items() if k == "kos"}
    assert ids("&contenttype=application/pdf") == {u for u, k in kinds.items() if k == "pdf"}
    assert ids("&contenttype=text/plain,application/pdf") == {
        u for u, k in kinds.items() if k != "kos"
    }
    assert ids("&category=http://loinc.org|LP29684-5") == set(documents)
    assert ids("&status=current") == set(documents)
    assert ids("&status=superseded") == set()
    assert ids(f"&identifier=urn:oid:{final.uid}") == {final.uid}
    assert ids(f"&_id={final.uid}") == {final.uid}
    if ds.get("AccessionNumber"):
        with_accession = {
            u
            for u, d in documents.items()
            if d.dataset.get("AccessionNumber") == ds.AccessionNumber
        }
        assert ids(f"&identifier={ds.AccessionNumber}") == with_accession
    day = f"{ds.ContentDate[:4]}-{ds.ContentDate[4:6]}-{ds.ContentDate[6:]}"
    on_day = ids(f"&date={day}")
    assert final.uid in on_day
    assert final.uid not in ids(f"&date=lt{day}")
    assert on_day <= ids(f"&date=ge{day}")
    count = search(gateway, "/fhir/DocumentReference?_summary=count")
    assert count["total"] == len(documents) and "entry" not in count


def test_paging_and_sorting(gateway: Gateway, documents: dict[str, Document]) -> None:
    bundle = search(gateway, "/fhir/DocumentReference?_count=5&_sort=date")
    assert bundle["total"] == len(documents)
    seen = [r["id"] for r in resources(bundle)]
    links = {link["relation"]: link["url"] for link in bundle["link"]}
    while "next" in links:
        bundle = search(gateway, local(gateway, links["next"]))
        seen += [r["id"] for r in resources(bundle)]
        links = {link["relation"]: link["url"] for link in bundle["link"]}
    assert len(seen) == len(set(seen)) == len(documents)


def test_bad_input_is_an_operation_outcome(
    gateway: Gateway, documents: dict[str, Document], fixture_files: list[Path]
) -> None:
    image = next(p for p in fixture_files if "PixelData" in dcmread(p, specific_tags=["PixelData"]))
    image_uid = str(dcmread(image, stop_before_pixels=True).SOPInstanceUID)
    expect_outcome(gateway, "/fhir/DocumentReference?date=yesterday", 400, "date")
    expect_outcome(gateway, "/fhir/DocumentReference?patient=Group/1", 400, "patient")
    expect_outcome(gateway, "/fhir/DocumentReference?related=Patient/1", 400, "related")
    expect_outcome(gateway, "/fhir/DocumentReference?_sort=title", 400, "_sort")
    expect_outcome(gateway, "/fhir/DocumentReference?_include=x", 400, "_include")
    expect_outcome(gateway, "/fhir/DocumentReference?_count=x", 400, "_count")
    expect_outcome(gateway, "/fhir/DocumentReference/1.2.3.4", 404, "not known")
    expect_outcome(gateway, "/fhir/DocumentReference/not*an*id", 404, "not known")
    expect_outcome(gateway, f"/fhir/DocumentReference/{image_uid}", 404, "not known")
    expect_outcome(gateway, f"/fhir/Binary/{image_uid}", 404, "not known")
    uid = next(iter(documents))
    response = gateway.get(f"/fhir/Binary/{uid}", headers={"Accept": "application/fhir+xml"})
    assert response.status_code == 406
