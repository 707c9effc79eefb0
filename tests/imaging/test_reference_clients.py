"""The requests the reference stack's viewer (github.com/jmandel/smart-imaging, viewer/,
as of commit fee42bd) makes after a patient launch, replayed against the gateway, read
the way that viewer reads the answers (reimplemented here, not its code).

What it does: reads the SMART configuration; finds the imaging FHIR base in
``associated_endpoints`` or, when none is published, in its configured
``associatedEndpointDefaults`` (it does not read the top-level ``capabilities``, where
the guide puts ``smart-imaging-access`` for an endpoint that serves ImagingStudy itself,
as this gateway does: so it is configured with the gateway's own FHIR base there);
searches ``ImagingStudy?_include=ImagingStudy:endpoint&patient=Patient/{id}``; takes
each study's UID from ``identifier[0].value`` minus ``urn:oid:`` and its WADO-RS base
from ``endpoint[0]`` (contained when it starts with ``#``); fetches
``{address}/studies/{uid}`` with ``transfer-syntax=*`` and its token; splits the
multipart answer on its boundary and hands each part to dicomParser, which needs the
128-byte preamble and ``DICM``.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from io import BytesIO
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from pydicom import dcmread

from fixtures.generate import BENCH_PATIENT_ID
from tests.auth.test_oauth_api import Harness, bearer
from tests.portal.support import Clock, portal_harness

ACCEPT = "multipart/related; type=application/dicom; transfer-syntax=*"


@pytest.fixture(scope="module")
def harness(tmp_path_factory: pytest.TempPathFactory, embedded_data_dir: Path) -> Iterator[Harness]:
    with portal_harness(tmp_path_factory.mktemp("reference"), embedded_data_dir, Clock()) as made:
        yield made


def split_multipart(content_type: str, body: bytes) -> list[bytes]:
    boundary = re.search(r'boundary="?([^";]+)"?', content_type)
    assert boundary, content_type
    delimiter = f"--{boundary.group(1)}".encode()
    parts = []
    for piece in body.split(delimiter)[1:]:
        if piece.startswith(b"--"):
            break
        _, _, data = piece.partition(b"\r\n\r\n")
        parts.append(data.removesuffix(b"\r\n"))
    return parts


def test_the_reference_viewer_lists_and_loads_a_patients_studies(harness: Harness) -> None:
    client = harness.client
    system = bearer(harness.backend_token("system/*.rs"))
    patient = client.get(f"/fhir/Patient?identifier={BENCH_PATIENT_ID}", headers=system).json()
    patient_id = patient["entry"][0]["resource"]["id"]
    token = harness.patient_token(patient_id, "launch/patient patient/*.rs")
    assert token["patient"] == patient_id
    iss = f"{harness.settings.fhir_base_url}"

    config = client.get(f"{urlsplit(iss).path}/.well-known/smart-configuration").json()
    assert "smart-imaging-access" in config["capabilities"]
    published = config.get("associated_endpoints") or []
    defaults = [{"url": iss, "capabilities": ["smart-imaging-access"]}]  # its servers.json
    imaging = next(
        e for e in (published or defaults) if "smart-imaging-access" in e["capabilities"]
    )

    search = client.get(
        f"{urlsplit(imaging['url']).path}/ImagingStudy",
        params={"_include": "ImagingStudy:endpoint", "patient": f"Patient/{patient_id}"},
        headers=bearer(token),
    )
    assert search.status_code == 200, search.text
    bundle = search.json()
    endpoints = [e for e in bundle["entry"] if e["resource"]["resourceType"] == "Endpoint"]

    def resolve(reference: str, resource: dict[str, Any]) -> dict[str, Any]:
        if reference.startswith("#"):
            return next(r for r in resource["contained"] if r["id"] == reference[1:])
        return next(
            e["resource"]
            for e in endpoints
            if e["fullUrl"] == reference or e["resource"]["id"] == reference.split("/")[1]
        )

    studies = [
        {
            "uid": r["identifier"][0]["value"][8:],
            "address": resolve(r["endpoint"][0]["reference"], r)["address"],
            "modality": r["modality"][0]["code"],
        }
        for r in (e["resource"] for e in bundle["entry"])
        if r["resourceType"] == "ImagingStudy"
    ]
    assert len(studies) >= 2
    for study in studies:
        answer = client.get(
            f"{urlsplit(study['address']).path}/studies/{study['uid']}",
            headers={"Accept": ACCEPT, "Authorization": f"Bearer {token['access_token']}"},
        )
        assert answer.status_code == 200, answer.text
        parts = split_multipart(answer.headers["content-type"], answer.content)
        assert parts
        for part in parts:
            assert part[128:132] == b"DICM"  # dicomParser.parseDicom's requirement
        first = dcmread(BytesIO(parts[0]))
        assert str(first.StudyInstanceUID) == study["uid"]
        assert "PixelData" in first  # the first part shown is an image
