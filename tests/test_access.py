"""One decision point: a restricted request never sees another patient's data.

A fixed policy stands in for the SMART one (issue 4): it lets the request
see one patient. Every probe a client can make, over QIDO-RS and FHIR, must
return that patient's data or nothing.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom import dcmread
from starlette.requests import Request
from starlette.testclient import TestClient

from fixtures.generate import BENCH_PATIENT_ID
from gateway.access import Visibility
from gateway.app import create_app
from gateway.dicomweb import dicomjson as dj
from gateway.services import Services
from tests.conftest import make_settings, migrate
from tests.support.catalog import StudyFacts, read_catalog

ALLOWED = ("HOSP-A", BENCH_PATIENT_ID)


class FixedPolicy:
    def __init__(self, visibility: Visibility) -> None:
        self.fixed = visibility

    async def visibility(self, request: Request) -> Visibility:
        return self.fixed


@pytest.fixture(scope="module")
def catalog(fixture_files: list[Path]) -> dict[str, StudyFacts]:
    return read_catalog(fixture_files)


@pytest.fixture(params=["embedded", pytest.param("orthanc", marks=pytest.mark.orthanc)])
def restricted(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[TestClient]:
    data_dir = tmp_path_factory.mktemp("restricted")
    if request.param == "embedded":
        settings = make_settings(request.getfixturevalue("embedded_data_dir"))
        settings = make_settings(
            settings.data_dir, database_url=f"sqlite+aiosqlite:///{data_dir / 'g.db'}"
        )
    else:
        orthanc = request.getfixturevalue("seeded_orthanc")
        settings = make_settings(data_dir, dicomweb_url=orthanc.dicomweb_url)
    migrate(settings)
    policy = FixedPolicy(Visibility(patients=frozenset({ALLOWED})))
    services = Services.build(settings, policy=policy)
    with TestClient(create_app(settings, services=services)) as client:
        yield client


def own_and_other(catalog: dict[str, StudyFacts]) -> tuple[set[str], StudyFacts]:
    own = {f.uid for f in catalog.values() if f.patient_key == ALLOWED}
    other = next(f for f in catalog.values() if f.patient_key != ALLOWED and f.accession)
    return own, other


@pytest.mark.parametrize(
    "query",
    [
        "",
        "?PatientID=*",
        "?PatientID=",
        "?PatientID=IS-100?",
        "?PatientName=*",
        "?PatientName=a&fuzzymatching=true",
        "?PatientName=d&fuzzymatching=true",
        "?includefield=all",
        "?PatientID=*&includefield=all&fuzzymatching=true&limit=1000",
    ],
)
def test_qido_wildcards_stay_within_the_patient(restricted, catalog, query: str) -> None:
    own, _ = own_and_other(catalog)
    for level in ("studies", "series", "instances"):
        response = restricted.get(f"/dicomweb/{level}{query}")
        assert response.status_code in (200, 204), (level, query, response.text)
        seen = (
            {dj.text(r, "StudyInstanceUID") for r in response.json()} if response.content else set()
        )
        assert seen <= own, (level, query)
        if "PatientName=a" not in query:  # the allowed patient is Doe^Jane
            assert seen, (level, query)
        if level == "studies" and "PatientName=a" not in query:
            assert seen == own


def test_qido_for_another_patient_finds_nothing(restricted, catalog) -> None:
    _, other = own_and_other(catalog)
    for path in (
        f"/dicomweb/studies?PatientID={other.patient_key[1]}",
        f"/dicomweb/studies?StudyInstanceUID={other.uid}",
        f"/dicomweb/studies?AccessionNumber={other.accession}",
        f"/dicomweb/studies/{other.uid}/series",
        f"/dicomweb/studies/{other.uid}/instances",
        f"/dicomweb/series?StudyInstanceUID={other.uid}",
        f"/dicomweb/instances?StudyInstanceUID={other.uid}&includefield=all",
    ):
        response = restricted.get(path)
        assert response.status_code == 204, (path, response.text)


def test_fhir_stays_within_the_patient(restricted, catalog) -> None:
    own, other = own_and_other(catalog)
    bundle = restricted.get("/fhir/ImagingStudy?_count=200&_include=ImagingStudy:subject").json()
    matches = [e["resource"] for e in bundle["entry"] if e["search"]["mode"] == "match"]
    assert {s["id"] for s in matches} == own
    included = [e["resource"] for e in bundle["entry"] if e["search"]["mode"] == "include"]
    assert len(included) == 1
    for query in (
        f"_id={other.uid}",
        f"identifier={other.accession}",
        f"identifier=urn:oid:{other.uid}",
        f"series={sorted(other.series)[0]}",
    ):
        found = restricted.get(f"/fhir/ImagingStudy?{query}").json()
        assert found["total"] == 0, query
    assert restricted.get(f"/fhir/ImagingStudy/{other.uid}").status_code == 404
    patients = restricted.get("/fhir/Patient?_count=100").json()
    assert [p["resource"]["identifier"][0]["value"] for p in patients["entry"]] == [ALLOWED[1]]
    others = restricted.get(f"/fhir/Patient?identifier={other.patient_key[1]}").json()
    assert others["total"] == 0


def test_wado_by_guessed_uids_is_404(restricted, catalog) -> None:
    own, other = own_and_other(catalog)
    series = sorted(other.series)[0]
    for path in (
        f"/dicomweb/studies/{other.uid}",
        f"/dicomweb/studies/{other.uid}/metadata",
        f"/dicomweb/studies/{other.uid}/series/{series}",
        f"/dicomweb/studies/{other.uid}/series/{series}/metadata",
    ):
        assert restricted.get(path).status_code == 404, path
    mine = sorted(own)[0]
    assert restricted.get(f"/dicomweb/studies/{mine}").status_code == 200
    # A visible study UID in the path cannot be combined with another patient's series.
    leak = f"/dicomweb/studies/{mine}/series/{series}"
    assert restricted.get(leak).status_code == 404


def test_rendering_another_patients_instance_is_404(restricted, catalog) -> None:
    _, other = own_and_other(catalog)
    listed = restricted.get(f"/dicomweb/instances?StudyInstanceUID={other.uid}")
    assert listed.status_code == 204  # not even listed
    series = sorted(other.series)[0]
    instance = str(other.first.SOPInstanceUID)
    base = f"/dicomweb/studies/{other.uid}/series/{series}/instances/{instance}"
    for suffix in ("rendered", "thumbnail", "frames/1/rendered", "frames/1", "bulk/7FE00010"):
        assert restricted.get(f"{base}/{suffix}").status_code == 404, suffix
    # Another patient's instance addressed under a study this patient may see.
    mine = sorted(own_and_other(catalog)[0])[0]
    mixed = f"/dicomweb/studies/{mine}/series/{series}/instances/{instance}"
    for suffix in ("frames/1", "bulk/7FE00010", "metadata", "rendered"):
        assert restricted.get(f"{mixed}/{suffix}").status_code == 404, suffix


def _documents(fixture_files: list[Path]) -> dict[str, tuple[str, str, str, tuple[str, str]]]:
    """SOP UID -> (study, series, SOP class, patient key) of every report and manifest."""
    found = {}
    for path in fixture_files:
        ds = dcmread(path, stop_before_pixels=True)
        if ds.Modality in ("SR", "DOC", "KO"):
            key = (str(ds.get("IssuerOfPatientID", "") or ""), str(ds.PatientID))
            found[str(ds.SOPInstanceUID)] = (
                str(ds.StudyInstanceUID),
                str(ds.SeriesInstanceUID),
                str(ds.SOPClassUID),
                key,
            )
    return found


def test_documents_stay_within_the_patient(restricted, fixture_files: list[Path]) -> None:
    documents = _documents(fixture_files)
    own = {uid for uid, facts in documents.items() if facts[3] == ALLOWED}
    assert own and len(own) < len(documents)
    for query in ("", "?_count=500", "?status=current", "?category=LP29684-5", "?date=ge1900"):
        bundle = restricted.get(f"/fhir/DocumentReference{query}").json()
        found = {e["resource"]["id"] for e in bundle.get("entry", [])}
        assert found <= own, query
    assert {
        e["resource"]["id"]
        for e in restricted.get("/fhir/DocumentReference?_count=500").json()["entry"]
    } == own
    for uid, (study, series, _, key) in documents.items():
        if key == ALLOWED:
            continue
        assert restricted.get(f"/fhir/DocumentReference/{uid}").status_code == 404
        assert restricted.get(f"/fhir/DocumentReference?_id={uid}").json()["total"] == 0
        assert (
            restricted.get(f"/fhir/DocumentReference?related=ImagingStudy/{study}").json()["total"]
            == 0
        )
        assert restricted.get(f"/fhir/Binary/{uid}").status_code == 404
        base = f"/dicomweb/studies/{study}/series/{series}/instances/{uid}"
        for suffix in ("rendered?accept=text/html", "rendered?accept=application/pdf"):
            assert restricted.get(f"{base}/{suffix}").status_code == 404, suffix
