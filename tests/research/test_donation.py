"""Research donation end to end: a patient donates, the gateway de-identifies and delivers.

The source is a private store behind a gateway (tokens required): the embedded
store on SQLite, and an Orthanc on PostgreSQL; the research archive is a real
Orthanc of its own. Delivery runs when the test asks
(``GATEWAY_RESEARCH_SWEEP_SECONDS=0``), except a new study's, which the STOW path
kicks off by itself.
"""

from __future__ import annotations

import io
import time
import uuid
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
from pydicom import Dataset, dcmread
from pydicom.uid import generate_uid

from gateway.donation.consents import ALL
from tests.auth.test_backend_access import backend_token
from tests.auth.test_oauth_api import Harness, bearer
from tests.portal.support import enroll, hidden, portal_sign_in
from tests.support.catalog import by_patient, read_catalog
from tests.support.orthanc import OrthancServer, run_orthanc
from tests.support.stores import BACKENDS, private_store

pytestmark = [pytest.mark.slow, pytest.mark.orthanc]
OPTIONS = [
    "retain-longitudinal-modified-dates",
    "clean-descriptors",
    "retain-patient-characteristics",
]
DICOM_ROOT = "1.2.840.10008."


@dataclass
class World:
    harness: Harness
    archive: OrthancServer
    patient: Any  # tests.portal.support.Patient
    studies: list[str]  # the patient's studies in the store, oldest kept first
    originals: dict[str, list[Dataset]]  # study UID -> its instances as stored
    future: list[Dataset]  # a study of the patient not yet stored
    key: tuple[str, str]


def _identifying(datasets: list[Dataset]) -> set[bytes]:
    """What must never reach a project: names, IDs, original UIDs and dates."""
    found: set[bytes] = set()

    def walk(ds: Dataset) -> None:
        for element in ds:
            if element.VR == "SQ":
                for item in element.value:
                    walk(item)
            elif element.VR == "UI" and element.value:
                values = element.value if element.VM > 1 else [element.value]
                found.update(str(v).encode() for v in values if not str(v).startswith(DICOM_ROOT))
            elif element.VR in ("DA", "DT") and element.value:
                found.add(str(element.value)[:8].encode())
            elif element.keyword in ("PatientID", "AccessionNumber", "OtherPatientIDs"):
                if element.value:
                    found.add(str(element.value).encode())
            elif element.VR == "PN" and element.value:
                found.update(
                    p.encode() for p in str(element.value).replace("^", " ").split() if len(p) > 2
                )

    for ds in datasets:
        walk(ds)
    return {value for value in found if len(value) >= 4}


def _assert_deidentified(raw: bytes, forbidden: set[bytes]) -> Dataset:
    leaked = sorted(value for value in forbidden if value in raw)
    assert not leaked, f"original values in a de-identified copy: {leaked[:5]}"
    copy = dcmread(io.BytesIO(raw))
    assert copy.PatientIdentityRemoved == "YES"
    assert str(copy.PatientID).startswith("RP-")
    return copy


def _json_leaks(value: Any, forbidden: set[bytes], path: str = "") -> list[str]:
    """Where in a DICOM JSON answer an original value appears."""
    if isinstance(value, dict):
        return [leak for k, v in value.items() for leak in _json_leaks(v, forbidden, f"{path}/{k}")]
    if isinstance(value, list):
        return [
            leak for i, v in enumerate(value) for leak in _json_leaks(v, forbidden, f"{path}[{i}]")
        ]
    text = str(value).encode()
    return [f"{path}: {text[:80]!r}" for f in forbidden if f in text]


def _archive_files(archive: OrthancServer) -> list[bytes]:
    ids = requests.get(f"{archive.http_url}/instances", timeout=30).json()
    return [requests.get(f"{archive.http_url}/instances/{i}/file", timeout=30).content for i in ids]


def _archive_studies(archive: OrthancServer) -> set[str]:
    found = requests.get(f"{archive.dicomweb_url}/studies", timeout=30)
    if found.status_code == 204 or not found.content:
        return set()
    return {s["0020000D"]["Value"][0] for s in found.json()}


@pytest.fixture(scope="module", params=BACKENDS)
def world(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    fixture_files: list[Path],
) -> Iterator[World]:
    catalog = read_catalog(fixture_files)
    grouped = by_patient(catalog)
    key, facts = max(grouped.items(), key=lambda kv: len(kv[1]))
    assert len(facts) >= 3, "the fixtures need a patient with three studies"
    datasets = [dcmread(p) for p in fixture_files]
    future_uid = facts[-1].uid
    kept = [d for d in datasets if str(d.StudyInstanceUID) != future_uid]
    future = [d for d in datasets if str(d.StudyInstanceUID) == future_uid]
    originals: dict[str, list[Dataset]] = {}
    for ds in datasets:
        originals.setdefault(str(ds.StudyInstanceUID), []).append(ds)
    workdir = tmp_path_factory.mktemp("donation")
    with (
        run_orthanc(workdir / "research-archive") as archive,
        private_store(
            request.param,
            workdir / "source",
            kept,
            research_sweep_seconds=0,
            transfer_poll_seconds=0.2,
        ) as harness,
    ):
        patient = enroll(harness, "Donna Donor")
        yield World(
            harness,
            archive,
            patient,
            [f.uid for f in facts[:-1]],
            originals,
            future,
            key,
        )


def _project(world: World, name: str, *, archive: bool, client: str | None = None) -> Any:
    return world.harness.call(
        world.harness.services.donation.projects.add,
        name=name,
        protocol_id=f"P-{uuid.uuid4().hex[:8]}",
        archive_url=world.archive.dicomweb_url if archive else None,
        options=OPTIONS,
        client_id=client,
    )


def _deliver(world: World, project_id: str) -> None:
    """A delivery pass now, then wait for the transfer worker (running in the gateway)
    to finish every delivery of the project."""
    world.harness.call(world.harness.services.donation.deliver)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        rows = world.harness.call(world.harness.services.donation.deliveries.of_project, project_id)
        if all(r.status not in ("queued", "sending") for r in rows):
            return
        time.sleep(0.2)
    raise AssertionError("the research deliveries did not end")


def _donate_in_portal(world: World, project_id: str, studies: list[str]) -> None:
    client = world.harness.client
    assert portal_sign_in(client, world.patient.code) == 303
    page = client.get("/portal/research")
    assert page.status_code == 200 and project_id in page.text
    answer = client.post(
        f"/portal/research/{project_id}/donate",
        data={"csrf_token": hidden(page.text, "csrf_token"), "study": studies},
        follow_redirects=False,
    )
    assert answer.status_code == 303, answer.text[:300]


def _withdraw_in_portal(world: World, consent_id: str) -> None:
    client = world.harness.client
    page = client.get("/portal/research")
    assert f"/portal/research/donations/{consent_id}/withdraw" in page.text
    stale = client.post(
        f"/portal/research/donations/{consent_id}/withdraw", data={"csrf_token": "wrong"}
    )
    assert stale.status_code == 400  # a form without the session's CSRF token does nothing
    answer = client.post(
        f"/portal/research/donations/{consent_id}/withdraw",
        data={"csrf_token": hidden(page.text, "csrf_token")},
        follow_redirects=False,
    )
    assert answer.status_code == 303


def _consents(world: World, project_id: str) -> list[Any]:
    return [
        c
        for c in world.harness.call(
            world.harness.services.donation.consents.of_patient, world.patient.fhir_id
        )
        if c.project_id == project_id
    ]


def test_a_donated_study_reaches_the_research_archive_de_identified(world: World) -> None:
    project = _project(world, "Lung screening cohort", archive=True)
    study = world.studies[0]
    _donate_in_portal(world, project.id, [study])
    # The donation queued a delivery; the transfer worker sends it.
    _deliver(world, project.id)
    expected = project.new_uid(study)
    assert expected in _archive_studies(world.archive)
    forbidden = _identifying([ds for uids in world.originals.values() for ds in uids])
    files = _archive_files(world.archive)
    assert files
    for raw in files:
        copy = _assert_deidentified(raw, forbidden)
        assert copy.StudyInstanceUID == expected
    rows = world.harness.call(world.harness.services.donation.deliveries.of_project, project.id)
    assert [(r.status, r.pseudonymous_study_uid) for r in rows] == [("delivered", expected)]
    # The donation is a FHIR Consent of category research, its provision naming the study.
    operator = backend_token(world.harness, "system/*.rs", operator=True)
    found = world.harness.client.get(
        f"/fhir/Consent?patient={world.patient.fhir_id}", headers=bearer(operator)
    ).json()
    research = [
        e["resource"] for e in found["entry"] if e["resource"]["id"].startswith("research-")
    ]
    assert research and research[0]["category"][0]["coding"][0]["code"] == "research"
    assert research[0]["provision"]["data"][0]["reference"]["reference"] == f"ImagingStudy/{study}"
    assert research[0]["status"] == "active"


def test_the_research_client_sees_only_pseudonyms_of_its_project(world: World) -> None:
    token = backend_token(world.harness, "system/ImagingStudy.rs")
    other = backend_token(world.harness, "system/ImagingStudy.rs")
    project = _project(world, "Pull cohort", archive=False, client=token["client_id"])
    _project(world, "Other cohort", archive=False, client=other["client_id"])
    donated, not_donated = world.studies[0], world.studies[1]
    _donate_in_portal(world, project.id, [donated])
    forbidden = _identifying([ds for uids in world.originals.values() for ds in uids])
    headers = bearer(token)

    listed = world.harness.client.get("/research/dicomweb/studies", headers=headers)
    assert listed.status_code == 200, listed.text[:300]
    assert not _json_leaks(listed.json(), forbidden)
    for value in forbidden:
        assert value not in listed.content
    new_study = project.new_uid(donated)
    assert [s["0020000D"]["Value"][0] for s in listed.json()] == [new_study]
    assert listed.json()[0]["00100020"]["Value"][0].startswith("RP-")

    metadata = world.harness.client.get(
        f"/research/dicomweb/studies/{new_study}/metadata", headers=headers
    )
    assert metadata.status_code == 200 and metadata.json()
    assert not _json_leaks(metadata.json(), forbidden)
    first = metadata.json()[0]
    series, instance = first["0020000E"]["Value"][0], first["00080018"]["Value"][0]
    retrieved = world.harness.client.get(
        f"/research/dicomweb/studies/{new_study}/series/{series}/instances/{instance}",
        headers=headers,
    )
    assert retrieved.status_code == 200
    assert retrieved.headers["content-type"].startswith("multipart/related")
    for value in forbidden:
        assert value not in retrieved.content

    fhir = world.harness.client.get("/research/fhir/ImagingStudy", headers=headers).json()
    assert [e["resource"]["id"] for e in fhir["entry"]] == [new_study]

    # Probes: the original UID, a study not donated, another project's client, and the
    # gateway's own routes.
    for probe in (donated, project.new_uid(not_donated)):
        answer = world.harness.client.get(
            f"/research/dicomweb/studies/{probe}/metadata", headers=headers
        )
        assert answer.status_code == 404
    foreign = world.harness.client.get(
        f"/research/dicomweb/studies/{new_study}/metadata", headers=bearer(other)
    )
    assert foreign.status_code == 404
    assert world.harness.client.get("/dicomweb/studies", headers=headers).status_code == 403
    assert world.harness.client.get("/fhir/ImagingStudy", headers=headers).status_code == 403
    assert world.harness.client.get("/research/dicomweb/studies").status_code == 401
    plain = backend_token(world.harness, "system/ImagingStudy.rs")
    assert (
        world.harness.client.get("/research/dicomweb/studies", headers=bearer(plain)).status_code
        == 403
    )


def _stow(world: World, datasets: list[Dataset]) -> None:
    writer = backend_token(world.harness, "system/*.cruds", operator=True)
    boundary = uuid.uuid4().hex
    body = b""
    for ds in datasets:
        out = io.BytesIO()
        ds.save_as(out, enforce_file_format=True)
        body += f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()
        body += out.getvalue() + b"\r\n"
    body += f"--{boundary}--\r\n".encode()
    answer = world.harness.client.post(
        "/dicomweb/studies",
        content=body,
        headers={
            **bearer(writer),
            "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}',
        },
    )
    assert answer.status_code == 200, answer.text[:300]


def _delivered(world: World, project_id: str) -> set[str]:
    rows = world.harness.call(world.harness.services.donation.deliveries.of_project, project_id)
    return {r.study_uid for r in rows if r.status == "delivered"}


def test_all_future_included_then_withdrawal_stops_the_next_delivery(world: World) -> None:
    project = _project(world, "Longitudinal cohort", archive=True)
    _donate_in_portal(world, project.id, ["all"])
    _deliver(world, project.id)
    assert _delivered(world, project.id) == set(world.studies)

    # A new study arrives by STOW: the "future included" donation delivers it, unasked.
    _stow(world, world.future)
    future_uid = str(world.future[0].StudyInstanceUID)
    deadline = time.monotonic() + 120
    while future_uid not in _delivered(world, project.id) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert future_uid in _delivered(world, project.id)
    assert project.new_uid(future_uid) in _archive_studies(world.archive)

    (consent,) = _consents(world, project.id)
    assert consent.study_uid == ALL
    _withdraw_in_portal(world, consent.id)

    # The next study of the patient is not delivered.
    later = []
    study_uid, series_uid = generate_uid(), generate_uid()
    for ds in world.future:
        copy = ds.copy()
        copy.StudyInstanceUID, copy.SeriesInstanceUID = study_uid, series_uid
        copy.SOPInstanceUID = generate_uid()
        copy.file_meta.MediaStorageSOPInstanceUID = copy.SOPInstanceUID
        later.append(copy)
    before = _archive_studies(world.archive)
    _stow(world, later)
    _deliver(world, project.id)
    assert study_uid not in _delivered(world, project.id)
    assert _archive_studies(world.archive) == before

    # What was delivered is listed for the project to delete, by pseudonyms.
    listed = world.harness.call(
        world.harness.services.donation.deliveries.of_project, project.id, withdrawn_only=True
    )
    assert {r.pseudonymous_study_uid for r in listed} == {
        project.new_uid(uid) for uid in [*world.studies, future_uid]
    }
    assert all(r.for_project()["withdrawn"] for r in listed)
    assert not any(
        uid.encode() in repr(r.for_project()).encode()
        for r in listed
        for uid in [*world.studies, future_uid]
    )


def _package(world: World, project_id: str) -> dict[str, Dataset]:
    admin = backend_token(world.harness, "admin/research")
    answer = world.harness.client.get(
        f"/admin/research/projects/{project_id}/package", headers=bearer(admin)
    )
    assert answer.status_code == 200, answer.text[:300]
    assert answer.headers["content-type"] == "application/zip"
    forbidden = _identifying([ds for uids in world.originals.values() for ds in uids])
    found = {}
    with zipfile.ZipFile(io.BytesIO(answer.content)) as archive:
        for name in archive.namelist():
            raw = archive.read(name)
            found[name] = _assert_deidentified(raw, forbidden)
    assert found
    return found


def test_packages_two_projects_differ_and_re_donation_maps_to_the_same(world: World) -> None:
    study = world.studies[1]
    first = _project(world, "Download cohort A", archive=False)
    second = _project(world, "Download cohort B", archive=False)
    _donate_in_portal(world, first.id, [study])
    _donate_in_portal(world, second.id, [study])
    a, b = _package(world, first.id), _package(world, second.id)
    a_patients = {str(ds.PatientID) for ds in a.values()}
    b_patients = {str(ds.PatientID) for ds in b.values()}
    assert len(a_patients) == 1 and len(b_patients) == 1 and a_patients != b_patients
    assert {str(ds.SOPInstanceUID) for ds in a.values()}.isdisjoint(
        str(ds.SOPInstanceUID) for ds in b.values()
    )
    assert _delivered(world, first.id) == {study}

    # Withdrawn and donated again: the same pseudonyms, UIDs and dates.
    (consent,) = _consents(world, first.id)
    _withdraw_in_portal(world, consent.id)
    admin = backend_token(world.harness, "admin/research")
    gone = world.harness.client.get(
        f"/admin/research/projects/{first.id}/deliveries?withdrawn=true", headers=bearer(admin)
    ).json()
    assert [d["studyInstanceUID"] for d in gone["deliveries"]] == [first.new_uid(study)]
    _donate_in_portal(world, first.id, [study])
    again = _package(world, first.id)
    assert sorted(again) == sorted(a)
    for name, ds in again.items():
        assert ds.PatientID == a[name].PatientID
        assert ds.StudyDate == a[name].StudyDate
