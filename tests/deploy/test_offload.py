"""WADO-RS bytes through nginx (GATEWAY_OFFLOAD=nginx): the gateway still decides everything.

A real topology from tests/support/stack.py: nginx from deploy/nginx.conf, two
``gateway serve`` replicas on a throwaway PostgreSQL database, and a private
Orthanc holding the fixture studies plus one study dated today (held by the
release delay). The in-process answers come from an app with offload off on the
same database and Orthanc (the token harness's own), so each offloaded answer is
compared with the gateway's own relay and with Orthanc's.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import httpx
import pytest
from pydicom import dcmread
from pydicom.uid import generate_uid
from starlette.testclient import TestClient

from fixtures.generate import BENCH_PATIENT_ID
from gateway.app import create_app
from gateway.services import Services
from tests.auth.test_oauth_api import Harness, bearer
from tests.conftest import make_settings
from tests.support.stack import Stack, running_stack

pytestmark = [pytest.mark.slow, pytest.mark.orthanc, pytest.mark.postgres]
DICOM = {"Accept": 'multipart/related; type="application/dicom"'}
BOUNDARY = re.compile(r'boundary="?([^";,\s]+)"?')
ORIGIN = "https://viewer.example"
UNKNOWN = "2.25.1234567890123456789"


def parts(response: httpx.Response) -> list[bytes]:
    """The payloads of a multipart/related answer, in order (boundaries differ per answer)."""
    assert response.status_code == 200, (response.status_code, response.text[:300])
    found = BOUNDARY.search(response.headers["content-type"])
    assert found, response.headers["content-type"]
    delimiter = b"--" + found.group(1).encode()
    body = response.content
    assert body.rstrip().endswith(delimiter + b"--"), "no closing boundary"
    pieces = body.split(delimiter)[1:-1]
    payloads = []
    for piece in pieces:
        _, _, payload = piece.partition(b"\r\n\r\n")
        payloads.append(payload.removesuffix(b"\r\n"))
    assert payloads
    return payloads


def held_study(files: list[Path], folder: Path) -> tuple[str, list[Path]]:
    """A copy of one of the bench patient's studies, dated now: held by the release delay."""
    source = next(
        p
        for p in files
        if (ds := dcmread(p, stop_before_pixels=True)).PatientID == BENCH_PATIENT_ID
        and ds.Modality == "CT"
    )
    ds = dcmread(source)
    study = generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study, generate_uid()
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    now = datetime.now()
    ds.StudyDate, ds.StudyTime = now.strftime("%Y%m%d"), now.strftime("%H%M%S")
    ds.SeriesDate, ds.SeriesTime = ds.StudyDate, ds.StudyTime
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "held.dcm"
    ds.save_as(path, enforce_file_format=True)
    return study, [path]


class Deployed:
    def __init__(self, stack: Stack, harness: Harness, files: list[Path], held: str) -> None:
        self.stack = stack
        self.harness = harness
        self.files = files
        self.held = held
        self.http = httpx.Client(base_url=stack.url, timeout=60)
        self.orthanc = httpx.Client(base_url=stack.pacs_dicomweb_url, timeout=60)
        self.replica = httpx.Client(base_url=stack.replicas[0], timeout=60)

    def documents(self, modality: str) -> dict[str, str]:
        for path in self.files:
            ds = dcmread(path, stop_before_pixels=True)
            if ds.PatientID == BENCH_PATIENT_ID and ds.Modality == modality:
                return {
                    "study": str(ds.StudyInstanceUID),
                    "series": str(ds.SeriesInstanceUID),
                    "instance": str(ds.SOPInstanceUID),
                }
        raise AssertionError(f"no {modality} in the fixtures")

    def image(self, study: str) -> dict[str, str]:
        for path in self.files:
            ds = dcmread(path, stop_before_pixels=True)
            if str(ds.StudyInstanceUID) == study and ds.Modality not in ("SR", "DOC", "KO"):
                return {
                    "study": study,
                    "series": str(ds.SeriesInstanceUID),
                    "instance": str(ds.SOPInstanceUID),
                }
        raise AssertionError(f"no image in {study}")


@pytest.fixture(scope="module")
def deployed(
    tmp_path_factory: pytest.TempPathFactory, fixture_files: list[Path]
) -> Iterator[Deployed]:
    workdir = tmp_path_factory.mktemp("stack")
    held, extra = held_study(fixture_files, workdir / "held")
    with running_stack(workdir / "stack", replicas=2, offload="nginx") as stack:
        http_base = stack.pacs_dicomweb_url.removesuffix("/dicom-web")
        with httpx.Client(timeout=60) as client:
            for path in [*fixture_files, *extra]:
                client.post(f"{http_base}/instances", content=path.read_bytes()).raise_for_status()
        # The token harness: the app in-process with offload off, same database and PACS.
        settings = make_settings(
            workdir,
            database_url=stack.database_url,
            dicomweb_url=stack.pacs_dicomweb_url,
            auth_required=True,
            public_url=stack.url,
        )
        services = Services.build(settings)
        with TestClient(create_app(settings, services=services), base_url=stack.url) as client:
            yield Deployed(stack, Harness(client, services), fixture_files, held)


@pytest.fixture(scope="module")
def tokens(deployed: Deployed) -> dict[str, dict[str, str]]:
    harness = deployed.harness
    system = harness.backend_token("system/*.rs")
    patient = harness.client.get(
        f"/fhir/Patient?identifier={BENCH_PATIENT_ID}", headers=bearer(system)
    ).json()["entry"][0]["resource"]["id"]
    images_only = harness.patient_token(patient, "launch/patient patient/ImagingStudy.rs")
    with_reports = harness.patient_token(
        patient, "launch/patient patient/ImagingStudy.rs patient/DocumentReference.rs"
    )
    return {
        "system": bearer(system),
        "images": bearer(images_only),
        "reports": bearer(with_reports),
        "reports_client": {"client_id": with_reports["client_id"]},
    }


def _paths(deployed: Deployed) -> dict[str, str]:
    image = deployed.image(deployed.documents("SR")["study"])
    pdf = deployed.documents("DOC")
    instance = "studies/{study}/series/{series}/instances/{instance}"
    return {
        "study": "studies/{study}".format(**image),
        "series": "studies/{study}/series/{series}".format(**image),
        "instance": instance.format(**image),
        "frames": (instance + "/frames/1").format(**image),
        "bulk": (instance + "/bulk/00420011").format(**pdf),
    }


def test_a_replica_hands_the_transfer_to_nginx(
    deployed: Deployed, tokens: dict[str, dict[str, str]]
) -> None:
    path = _paths(deployed)["series"]
    decided = deployed.replica.get(f"/dicomweb/{path}", headers={**tokens["reports"], **DICOM})
    assert decided.status_code == 200
    assert decided.headers["x-accel-redirect"] == f"/_pacs/{path}"
    assert decided.content == b""


def test_a_full_study_is_assembled_by_the_replica(
    deployed: Deployed, tokens: dict[str, dict[str, str]]
) -> None:
    """A full study is ordered (images first), checked whole and its parts' transfer
    syntaxes named by the gateway (records/full_study.py): nginx cannot join several
    PACS answers under one boundary, so the replica answers it, with offload on too.
    It holds exactly the instances Orthanc's own full-study answer holds."""
    path = _paths(deployed)["study"]
    headers = {**tokens["reports"], **DICOM}
    through_nginx = deployed.http.get(f"/dicomweb/{path}", headers=headers)
    decided = deployed.replica.get(f"/dicomweb/{path}", headers=headers)
    assert "x-accel-redirect" not in decided.headers
    assert parts(decided) == parts(through_nginx)
    direct = deployed.orthanc.get(f"/{path}", headers=DICOM)
    assert sorted(parts(through_nginx)) == sorted(parts(direct))


@pytest.mark.parametrize("what", ["series", "instance", "frames", "bulk"])
def test_offloaded_bytes_are_the_gateways_and_orthancs(
    deployed: Deployed, tokens: dict[str, dict[str, str]], what: str
) -> None:
    path = _paths(deployed)[what]
    accept = DICOM if what in ("study", "series", "instance") else {}
    headers = {**tokens["reports"], **accept}
    offloaded = deployed.http.get(f"/dicomweb/{path}", headers=headers)
    in_process = deployed.harness.client.get(f"/dicomweb/{path}", headers=headers)
    direct = deployed.orthanc.get(f"/{path}", headers=accept)
    # The replica's own answer says where the bytes come from: nginx, from the PACS.
    decided = deployed.replica.get(f"/dicomweb/{path}", headers=headers)
    assert decided.headers["x-accel-redirect"] == f"/_pacs/{path}", decided.headers
    assert decided.content == b""
    assert "x-accel-redirect" not in offloaded.headers
    assert "x-offload-accept" not in offloaded.headers
    assert parts(offloaded) == parts(in_process) == parts(direct)
    kind = offloaded.headers["content-type"]
    expected = "application/dicom" if accept else "application/octet-stream"
    assert kind.startswith(f'multipart/related; type="{expected}') and "boundary=" in kind
    # The gateway's headers, none of the PACS's own.
    assert offloaded.headers["x-content-type-options"] == "nosniff"
    assert offloaded.headers["content-security-policy"].startswith("default-src 'none'")
    assert "server" not in offloaded.headers or "orthanc" not in offloaded.headers["server"].lower()


def test_the_clients_transfer_syntax_reaches_the_pacs(
    deployed: Deployed, tokens: dict[str, dict[str, str]]
) -> None:
    path = f"/dicomweb/{_paths(deployed)['instance']}"
    explicit = {
        **tokens["reports"],
        "Accept": 'multipart/related; type="application/dicom"; '
        "transfer-syntax=1.2.840.10008.1.2.1",
    }
    assert parts(deployed.http.get(path, headers=explicit)) == parts(
        deployed.harness.client.get(path, headers=explicit)
    )
    impossible = {**explicit, "Accept": explicit["Accept"].replace("1.2.1", "1.2.4.90")}
    through = deployed.http.get(path, headers=impossible)
    assert through.status_code == deployed.harness.client.get(path, headers=impossible).status_code
    assert through.status_code == 406 and through.headers["warning"].startswith("299 gateway")


def test_cors_headers_come_with_offloaded_answers(
    deployed: Deployed, tokens: dict[str, dict[str, str]]
) -> None:
    path = f"/dicomweb/{_paths(deployed)['instance']}"
    answer = deployed.http.get(path, headers={**tokens["reports"], **DICOM, "Origin": ORIGIN})
    assert answer.status_code == 200
    assert answer.headers["access-control-allow-origin"] == "*"
    assert "Warning" in answer.headers["access-control-expose-headers"]
    preflight = deployed.http.options(
        path,
        headers={
            "Origin": ORIGIN,
            "Access-Control-Request-Method": "GET",
            "Access-Control-Request-Headers": "authorization",
        },
    )
    assert preflight.status_code == 200
    assert preflight.headers["access-control-allow-origin"] == "*"


def test_without_a_token_nothing_is_offloaded(deployed: Deployed) -> None:
    answer = deployed.http.get(f"/dicomweb/{_paths(deployed)['study']}", headers=DICOM)
    assert answer.status_code == 401
    assert answer.headers["www-authenticate"].startswith("Bearer")
    assert b"DICM" not in answer.content


def test_another_patients_study_is_not_found(
    deployed: Deployed, tokens: dict[str, dict[str, str]]
) -> None:
    others = sorted(
        {
            str(ds.StudyInstanceUID)
            for p in deployed.files
            if (ds := dcmread(p, stop_before_pixels=True)).PatientID != BENCH_PATIENT_ID
        }
    )
    assert others
    own = deployed.image(deployed.documents("SR")["study"])
    for study in (others[0], UNKNOWN):
        answer = deployed.http.get(f"/dicomweb/studies/{study}", headers={**tokens["reports"]})
        assert answer.status_code == 404, study
        assert b"DICM" not in answer.content
    # An instance of another patient's study, named under a study the caller may see.
    foreign = next(
        dcmread(p, stop_before_pixels=True)
        for p in deployed.files
        if str(dcmread(p, stop_before_pixels=True).StudyInstanceUID) == others[0]
    )
    crossed = (
        f"/dicomweb/studies/{own['study']}/series/{foreign.SeriesInstanceUID}"
        f"/instances/{foreign.SOPInstanceUID}"
    )
    answer = deployed.http.get(crossed, headers={**tokens["reports"], **DICOM})
    assert answer.status_code == 404
    assert b"DICM" not in answer.content


def test_a_held_study_answers_as_in_process(
    deployed: Deployed, tokens: dict[str, dict[str, str]]
) -> None:
    path = f"/dicomweb/studies/{deployed.held}"
    through = deployed.http.get(path, headers={**tokens["reports"], **DICOM})
    in_process = deployed.harness.client.get(path, headers={**tokens["reports"], **DICOM})
    assert through.status_code == in_process.status_code == 403
    assert through.text == in_process.text and "available" in through.text.lower()
    # Providers are never delayed: the system token gets the bytes, through nginx.
    system = deployed.http.get(path, headers={**tokens["system"], **DICOM})
    assert len(parts(system)) == 1


def test_a_report_the_caller_may_not_read_is_never_offloaded(
    deployed: Deployed, tokens: dict[str, dict[str, str]]
) -> None:
    sr, pdf = deployed.documents("SR"), deployed.documents("DOC")
    instance = "/dicomweb/studies/{study}/series/{series}/instances/{instance}"
    refused = [
        instance.format(**sr),
        instance.format(**pdf) + "/bulk/00420011",
        "/dicomweb/studies/{study}/series/{series}".format(**sr),
        "/dicomweb/studies/{study}".format(**sr),
    ]
    for path in refused:
        headers = {**tokens["images"], **({} if "/bulk/" in path else DICOM)}
        decided = deployed.replica.get(path, headers=headers)
        assert decided.status_code == 403, path
        assert "x-accel-redirect" not in decided.headers, path
        through = deployed.http.get(path, headers=headers)
        assert through.status_code == 403, path
        assert b"DICM" not in through.content, path
    # The images of that study stay the app's, through nginx.
    image = deployed.image(sr["study"])
    series = deployed.http.get(
        "/dicomweb/studies/{study}/series/{series}".format(**image),
        headers={**tokens["images"], **DICOM},
    )
    assert parts(series)


@pytest.mark.parametrize(
    "path",
    [
        "/_pacs/studies/{study}",
        "/_pacs/",
        "/%5Fpacs/studies/{study}",
        "/x/../_pacs/studies/{study}",
    ],
)
def test_the_internal_location_is_not_reachable_from_outside(
    deployed: Deployed, tokens: dict[str, dict[str, str]], path: str
) -> None:
    study = _paths(deployed)["study"].split("/")[1]
    answer = deployed.http.get(path.format(study=study), headers={**tokens["system"], **DICOM})
    assert answer.status_code == 404
    assert b"DICM" not in answer.content and b"application/dicom" not in answer.content


def test_the_audit_trail_records_offloaded_retrievals(
    deployed: Deployed, tokens: dict[str, dict[str, str]]
) -> None:
    path = _paths(deployed)["series"]
    study = path.split("/")[1]
    client_id = tokens["reports_client"]["client_id"]

    async def count() -> int:
        found, _ = await deployed.harness.services.audit.search(study=study, agent=client_id)
        return sum(1 for r in found if r.action == "retrieve" and r.outcome == 200 and r.patient)

    before = deployed.harness.call(count)
    assert parts(deployed.http.get(f"/dicomweb/{path}", headers={**tokens["reports"], **DICOM}))
    assert deployed.harness.call(count) == before + 1
