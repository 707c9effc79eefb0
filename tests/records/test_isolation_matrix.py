"""Who sees which study, by every way in: one matrix instead of a test file per gate.

Routes (FHIR, DICOMweb, the portal's and a share's pages and images) x the
kinds of caller (a patient token for chosen studies, for all studies, one
without reports; a practitioner's user token; a backend's system token; a
portal session; an opened share link) x the targets (the patient's own study,
a report in another of their studies, their study still held back by the
release delay, another patient's study, a mix of both in one path, an unknown
UID), on the embedded store and on Orthanc.

The patient is IS-1005 at HOSP-A. The other patient is IS-1005 at HOSP-B: the
same MRN at another issuer, so narrowing by PatientID alone would let them in.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import pytest
from pydicom import dcmread

from gateway.dicomweb import dicomjson as dj
from tests.auth.test_authorize import PASSPHRASE
from tests.auth.test_oauth_api import Harness, bearer
from tests.portal.support import Clock, create_share, enter_pin, portal_harness, portal_sign_in
from tests.support.stores import BACKENDS

OWN = ("HOSP-A", "IS-1005")
OTHER = ("HOSP-B", "IS-1005")
NOW = datetime.fromisoformat("2025-08-29T12:00:00+00:00")  # the newest own study is held
PATIENT_SCOPES = (
    "launch/patient patient/ImagingStudy.rs patient/Patient.rs patient/DocumentReference.rs"
)


@dataclass(frozen=True)
class Item:
    study: str
    series: str
    instance: str


@dataclass
class World:
    """The fixtures' facts the matrix is about."""

    own: Item  # an image in the patient's oldest study (MR, no report)
    report: Item  # the SR in another released study of theirs, which holds images too
    report_images: Item  # an image in that same study
    held: Item  # an image in their newest study, still under the release delay
    other: Item  # an image of the namesake at HOSP-B
    own_studies: set[str] = field(default_factory=set)
    other_studies: set[str] = field(default_factory=set)
    documented: set[str] = field(default_factory=set)  # studies holding reports or manifests
    other_accession: str = ""

    @property
    def released(self) -> set[str]:
        return self.own_studies - {self.held.study}


def read_world(files: list[Path]) -> World:
    images: dict[str, list[Item]] = {}
    reports: dict[str, Item] = {}
    dates: dict[str, str] = {}
    owners: dict[str, tuple[str, str]] = {}
    documented: set[str] = set()
    accessions: dict[str, str] = {}
    for path in files:
        ds = dcmread(path, stop_before_pixels=True)
        key = (str(ds.get("IssuerOfPatientID", "") or ""), str(ds.PatientID))
        if key not in (OWN, OTHER):
            continue
        study = str(ds.StudyInstanceUID)
        item = Item(study, str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID))
        owners[study], dates[study] = key, str(ds.StudyDate)
        accessions[study] = str(ds.get("AccessionNumber", "") or "")
        if ds.Modality in ("SR", "DOC", "KO"):
            documented.add(study)
        if ds.Modality == "SR":
            reports[study] = item
        elif ds.Modality not in ("KO", "DOC", "PR"):
            images.setdefault(study, []).append(item)
    own = sorted((s for s in owners if owners[s] == OWN), key=lambda s: dates[s])
    other = sorted((s for s in owners if owners[s] == OTHER), key=lambda s: dates[s])
    reported = next(s for s in own[1:-1] if s in reports)
    assert any(accessions[s] for s in other), "an accession number of the other patient's"
    return World(
        own=images[own[0]][0],
        report=reports[reported],
        report_images=images[reported][0],
        held=images[own[-1]][0],
        other=images[other[-1]][0],
        own_studies=set(own),
        other_studies=set(other),
        documented=documented,
        other_accession=next((accessions[s] for s in other if accessions[s]), ""),
    )


@dataclass(frozen=True)
class Caller:
    name: str
    way: str  # "token", "portal" or "share"
    headers: dict[str, str] = field(default_factory=dict)
    everyone: bool = False  # a provider or backend: every patient, no release delay
    chosen: frozenset[str] | None = None  # the studies of the patient it may see (None: all)
    told_held: bool = False  # a held study it would see is answered "not yet" (403)
    reports: bool = True  # may read report content


@dataclass
class Setup:
    harness: Harness
    world: World
    callers: dict[str, Caller]


def _setup(harness: Harness, world: World, clock: Clock) -> Setup:
    clock.now = NOW
    services = harness.services
    patient = harness.call(services.records.patients.identify, *OWN)
    jacket = harness.call(services.records.jackets.of, patient)
    assert set(jacket.held) == {world.held.study}, "the clock should hold the newest study only"
    account = harness.call(services.auth.accounts.enroll_patient, patient, "1966-09-30", "Smith")
    harness.call(services.auth.accounts.activate, account.login, "1966-09-30", PASSPHRASE)
    fhir_user = f"{harness.settings.fhir_base_url}/Patient/{patient}"
    context = {"patient": patient, "fhirUser": fhir_user}
    images_only = "launch/patient patient/ImagingStudy.rs patient/Patient.rs"
    callers = [
        Caller(
            "patient-chosen",
            "token",
            bearer(
                harness.code_token(
                    PATIENT_SCOPES, {**context, "studies": [world.own.study]}, account.id
                )
            ),
            chosen=frozenset({world.own.study}),
        ),
        Caller(
            "patient-all",
            "token",
            bearer(harness.code_token(PATIENT_SCOPES, context, account.id)),
            told_held=True,
        ),
        Caller(
            "patient-no-reports",
            "token",
            bearer(harness.code_token(images_only, context, account.id)),
            told_held=True,
            reports=False,
        ),
        Caller("user", "token", bearer(harness.practitioner_token()), everyone=True),
        Caller("system", "token", bearer(harness.backend_token("system/*.rs")), everyone=True),
        Caller("portal", "portal", told_held=True),
        Caller(
            "share",
            "share",
            chosen=frozenset({world.own.study, world.report.study}),
        ),
    ]
    client = harness.client
    assert portal_sign_in(client, account.login) == 303
    status, _, link, pin = create_share(client, [world.own.study, world.report.study])
    assert status == 201 and link and pin
    assert enter_pin(client, link.removeprefix(harness.settings.public_url), pin).status_code == 303
    return Setup(harness, world, {c.name: c for c in callers})


@pytest.fixture(
    scope="module",
    params=[
        *BACKENDS,
        pytest.param(("embedded", "postgres"), id="embedded-postgres", marks=pytest.mark.postgres),
    ],
)
def setup(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    fixture_files: list[Path],
) -> Iterator[Setup]:
    store, database = request.param
    workdir = tmp_path_factory.mktemp("matrix")
    clock = Clock()
    if store == "embedded":
        data_dir, extra = request.getfixturevalue("embedded_data_dir"), {}
    else:
        orthanc = request.getfixturevalue("seeded_orthanc")
        data_dir, extra = workdir, {"dicomweb_url": orthanc.dicomweb_url}
    with portal_harness(
        workdir, data_dir, clock, database, release_delay_hours=72, **extra
    ) as harness:
        yield _setup(harness, read_world(fixture_files), clock)


# -- what each caller should get ----------------------------------------------

TARGETS = ("own", "report", "held", "other", "mixed", "unknown")


def target_item(world: World, name: str) -> Item:
    if name == "mixed":  # the patient's own study, with the other patient's series in the path
        return Item(world.own.study, world.other.series, world.other.instance)
    if name == "unknown":
        return Item(f"2.25.{uuid.uuid4().int}", "2.25.1", "2.25.2")
    return {
        "own": world.own,
        "report": world.report,
        "held": world.held,
        "other": world.other,
    }[name]


def sees_study(caller: Caller, world: World, study: str) -> bool:
    if study not in world.own_studies | world.other_studies:
        return False
    if caller.everyone:
        return True
    if study not in world.released:
        return False
    return caller.chosen is None or study in caller.chosen


def read_status(caller: Caller, world: World, target: str, content: bool = False) -> int:
    """What a read of the target answers: 200, 403 (not yet; or a report it may not read),
    or 404 (for anything it may not see, exactly as for what does not exist)."""
    item = target_item(world, target)
    if target in ("unknown", "mixed"):
        return 404
    if sees_study(caller, world, item.study):
        return 403 if content and target == "report" and not caller.reports else 200
    if target == "held" and caller.told_held:
        return 403
    return 404


IMAGE_TARGETS = ("own", "held", "other", "mixed", "unknown")


@dataclass(frozen=True)
class Route:
    name: str
    ways: tuple[str, ...]
    path: Callable[[Item], str]
    kind: str = "read"  # "read", or "search" (does the answer name the study?)
    content: bool = False  # returns the target's content (a report's, for the report target)
    needs_reports: bool = False  # needs DocumentReference whatever the target
    targets: tuple[str, ...] = TARGETS
    level: str = "item"  # "study": only the study UID is in the path


def _instance(item: Item) -> str:
    return f"studies/{item.study}/series/{item.series}/instances/{item.instance}"


ROUTES = (
    Route("fhir read", ("token",), lambda i: f"/fhir/ImagingStudy/{i.study}", level="study"),
    Route("fhir search _id", ("token",), lambda i: f"/fhir/ImagingStudy?_id={i.study}", "search"),
    Route(
        "fhir documents of study",
        ("token",),
        lambda i: f"/fhir/DocumentReference?related=ImagingStudy/{i.study}",
        "search",
        needs_reports=True,
    ),
    Route(
        "qido studies",
        ("token",),
        lambda i: f"/dicomweb/studies?StudyInstanceUID={i.study}",
        "search",
    ),
    Route(
        "qido instances",
        ("token",),
        lambda i: f"/dicomweb/studies/{i.study}/instances?includefield=all",
        "search",
    ),
    Route(
        "wado series",
        ("token",),
        lambda i: f"/dicomweb/studies/{i.study}/series/{i.series}",
        content=True,
    ),
    Route(
        "wado series metadata",
        ("token",),
        lambda i: f"/dicomweb/studies/{i.study}/series/{i.series}/metadata",
        content=True,
    ),
    Route("wado instance", ("token",), lambda i: f"/dicomweb/{_instance(i)}", content=True),
    Route(
        "frames",
        ("token",),
        lambda i: f"/dicomweb/{_instance(i)}/frames/1",
        content=True,
        targets=IMAGE_TARGETS,
    ),
    Route(
        "rendered",
        ("token", "portal", "share"),
        lambda i: f"/{{images}}/{_instance(i)}/rendered?accept=image/jpeg",
        content=True,
        targets=IMAGE_TARGETS,
    ),
    Route(
        "thumbnail",
        ("token", "portal", "share"),
        lambda i: f"/{{images}}/{_instance(i)}/thumbnail",
        targets=IMAGE_TARGETS,
    ),
    Route(
        "rendered report",
        ("token", "portal", "share"),
        lambda i: f"/{{images}}/{_instance(i)}/rendered?accept=text/html",
        content=True,
        targets=("report",),
    ),
    Route("portal page", ("portal",), lambda i: f"/portal/studies/{i.study}", level="study"),
    Route("share page", ("share",), lambda i: f"/share/view/studies/{i.study}", level="study"),
)
IMAGES = {"token": "dicomweb", "portal": "portal/dicomweb", "share": "share/dicomweb"}


def expected(caller: Caller, world: World, target: str, route: Route) -> int | bool:
    """A status for reads; for searches, whether the answer names the target's study."""
    if route.needs_reports and not caller.reports:
        return 403
    study = target_item(world, target).study
    if route.kind == "search":
        named = route.name != "fhir documents of study" or study in world.documented
        return named and sees_study(caller, world, study)
    if target == "mixed" and route.level == "study":
        target = "own"  # only the study's UID is in the path: it is the patient's own
    return read_status(caller, world, target, route.content)  # item level: a mix is a 404


def probe(setup: Setup, caller: Caller, route: Route, target: str) -> int | bool:
    item = target_item(setup.world, target)
    path = route.path(item).replace("{images}", IMAGES[caller.way])
    response = setup.harness.client.get(path, headers=caller.headers)
    assert response.status_code < 500, (path, response.text)
    if route.kind == "read":
        if response.status_code == 200:
            assert setup.world.other.study not in response.text or target == "other", path
        return response.status_code
    assert response.status_code in (200, 204, 403), (path, response.text)
    if response.status_code != 200:
        return 403 if response.status_code == 403 else False
    body = response.json()
    if path.startswith("/fhir/"):  # the entries, not the self link that repeats the query
        return item.study in str([e["resource"] for e in body.get("entry", [])])
    return item.study in {dj.text(found, "StudyInstanceUID") for found in body}


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize(
    "caller_name",
    ["patient-chosen", "patient-all", "patient-no-reports", "user", "system", "portal", "share"],
)
def test_matrix(setup: Setup, caller_name: str, target: str) -> None:
    caller = setup.callers[caller_name]
    got, wanted = {}, {}
    for route in ROUTES:
        if caller.way not in route.ways or target not in route.targets:
            continue
        wanted[route.name] = expected(caller, setup.world, target, route)
        got[route.name] = probe(setup, caller, route, target)
    assert got == wanted


@pytest.mark.parametrize(
    "caller_name", ["patient-chosen", "patient-all", "patient-no-reports", "user", "system"]
)
def test_wildcards_never_widen(setup: Setup, caller_name: str) -> None:
    """QIDO and FHIR searches that name nobody answer exactly what the caller may see."""
    caller = setup.callers[caller_name]
    world = setup.world
    client = setup.harness.client
    visible = {s for s in world.own_studies | world.other_studies if sees_study(caller, world, s)}
    for query in (
        "PatientID=*",
        "PatientID=",
        "PatientID=IS-100?",
        "PatientName=*",
        "PatientName=s&fuzzymatching=true",
        "includefield=all&limit=1000",
    ):
        for level in ("studies", "series", "instances"):
            response = client.get(f"/dicomweb/{level}?{query}", headers=caller.headers)
            assert response.status_code in (200, 204), (level, query, response.text)
            found = (
                {dj.text(r, "StudyInstanceUID") for r in response.json()}
                if response.content
                else set()
            )
            ours = found & (world.own_studies | world.other_studies)
            assert ours <= visible, (level, query)
            if not caller.everyone and level == "studies" and "PatientName" not in query:
                assert found == visible, (level, query)
    bundle = client.get("/fhir/ImagingStudy?_count=500", headers=caller.headers).json()
    found = {e["resource"]["id"] for e in bundle["entry"] if e["search"]["mode"] == "match"}
    assert found & (world.own_studies | world.other_studies) == visible
    if not caller.everyone:
        assert found == visible


@pytest.mark.parametrize(
    "caller_name", ["patient-chosen", "patient-all", "patient-no-reports", "user", "system"]
)
def test_the_other_patient_by_every_search(setup: Setup, caller_name: str) -> None:
    """Every way a FHIR or QIDO search can name the namesake at HOSP-B finds them only for
    a provider or backend."""
    caller = setup.callers[caller_name]
    harness, world = setup.harness, setup.world
    other = harness.call(harness.services.records.patients.identify, *OTHER)
    study = world.other
    probes = [
        f"/fhir/ImagingStudy?patient={other}",
        f"/fhir/ImagingStudy?subject=Patient/{other}&_include=ImagingStudy:subject",
        f"/fhir/ImagingStudy?series={study.series}",
        f"/fhir/ImagingStudy?identifier=urn:oid:{study.study}",
        f"/fhir/ImagingStudy?identifier={world.other_accession}&_include=ImagingStudy:subject",
        f"/fhir/Patient?_id={other}",
        "/fhir/Patient?identifier=IS-1005",
        f"/dicomweb/studies?PatientID=IS-1005&IssuerOfPatientID={OTHER[0]}",
        f"/dicomweb/studies?AccessionNumber={world.other_accession}&includefield=00100021",
        f"/dicomweb/series?SeriesInstanceUID={study.series}",
        f"/dicomweb/instances?SOPInstanceUID={study.instance}",
    ]
    if caller.reports:
        probes.append(f"/fhir/DocumentReference?patient={other}")
    for path in probes:
        response = harness.client.get(path, headers=caller.headers)
        if f"patient={other}" in path or f"subject=Patient/{other}" in path:
            # Naming another patient: 403 to a confined caller (SMART Imaging Access),
            # never an answer that holds them.
            assert response.status_code == (200 if caller.everyone else 403), path
            assert caller.everyone or study.study not in response.text, path
            continue
        assert response.status_code in (200, 204), (path, response.text)
        if path.startswith("/fhir/"):  # the entries, not the self link that repeats the query
            found = str(response.json().get("entry", []))
        else:
            found = response.text
        revealed = other in found or study.study in found or OTHER[0] in found
        assert revealed == caller.everyone, path
    patient_read = harness.client.get(f"/fhir/Patient/{other}", headers=caller.headers)
    assert patient_read.status_code == (200 if caller.everyone else 404)
