"""A patient's study-level QIDO is answered from their jacket in the study index.

Inside the freshness bound, a query whose keys the index matches exactly asks
the PACS nothing and answers what the PACS would (the same studies, the same
values); anything the index cannot match exactly still goes to the PACS; the
caller's visibility, the release delay and the audit trail hold either way.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient

from fixtures.generate import BENCH_PATIENT_ID
from gateway.app import create_app
from gateway.records.study_qido import answerable
from gateway.services import Services
from tests.auth.test_oauth_api import Harness, bearer
from tests.conftest import make_settings, migrate
from tests.fhir.test_search_bounds import CountingUpstream

DICOM_JSON = {"Accept": "application/dicom+json"}


@pytest.fixture
def counted(tmp_path: Path, embedded_data_dir: Path) -> Iterator[tuple[Harness, CountingUpstream]]:
    settings = make_settings(
        embedded_data_dir,
        database_url=f"sqlite+aiosqlite:///{tmp_path / 'g.db'}",
        auth_required=True,
        public_url="https://gateway.example",
        release_delay_hours=0,
    )
    migrate(settings)
    upstream = CountingUpstream(settings.dicom_dir)
    services = Services.build(settings, upstream)
    app = create_app(settings, services=services)
    with TestClient(app, base_url="https://gateway.example") as client:
        yield Harness(client, services), upstream


def _patient(harness: Harness, identifier: str = BENCH_PATIENT_ID) -> str:
    system = bearer(harness.backend_token("system/*.rs"))
    found = harness.client.get(f"/fhir/Patient?identifier={identifier}", headers=system).json()
    return str(found["entry"][0]["resource"]["id"])


def _token(harness: Harness, patient: str, **context: Any) -> dict[str, str]:
    scope = "launch/patient patient/ImagingStudy.rs patient/DocumentReference.rs"
    full = {
        "patient": patient,
        "fhirUser": f"{harness.settings.fhir_base_url}/Patient/{patient}",
        **context,
    }
    return bearer(harness.code_token(scope, full, "patient-account"))


def _uids(answer: Any) -> list[str]:
    if answer.status_code == 204:
        return []
    assert answer.status_code == 200, answer.text
    return [item["0020000D"]["Value"][0] for item in answer.json()]


@pytest.mark.parametrize(
    "query",
    [
        "",
        "?limit=3&offset=1",
        "?ModalitiesInStudy=CT",
        "?StudyDate=20000101-",
        f"?PatientID={BENCH_PATIENT_ID}&includefield=StudyDescription",
        "?PatientID=IS-1002",
        "?AccessionNumber=NOPE",
    ],
)
def test_answered_from_the_index_as_the_pacs_answers(counted, query: str) -> None:  # type: ignore[no-untyped-def]
    harness, upstream = counted
    patient = _patient(harness)
    token = _token(harness, patient)
    harness.client.get("/dicomweb/studies", headers=token)  # the jacket is read once
    upstream.calls.clear()
    from_index = harness.client.get(f"/dicomweb/studies{query}", headers={**token, **DICOM_JSON})
    assert sum(upstream.calls.values()) == 0, upstream.calls
    # The same question asked of the PACS (a system token, narrowed to the patient).
    system = bearer(harness.backend_token("system/*.rs"))
    joiner = "&" if query else "?"
    direct = harness.client.get(
        f"/dicomweb/studies{query}{joiner}PatientID={BENCH_PATIENT_ID}"
        if "PatientID" not in query
        else f"/dicomweb/studies{query}",
        headers=system,
    )
    if "PatientID=IS-1002" in query:
        assert _uids(from_index) == []
        return
    if "limit" in query:  # the order of a QIDO answer is the archive's: compare sizes
        assert len(_uids(from_index)) == len(_uids(direct)) == 3
        return
    assert sorted(_uids(from_index)) == sorted(_uids(direct))
    if from_index.status_code == 200:
        pacs = {item["0020000D"]["Value"][0]: item for item in direct.json()}
        for item in from_index.json():
            same = pacs[item["0020000D"]["Value"][0]]
            assert {k: same.get(k) for k in item} == item
        if "includefield=StudyDescription" in query:
            assert all("00081030" in item for item in from_index.json())


@pytest.mark.parametrize(
    "query",
    [
        "?PatientName=Doe*",
        "?StudyDescription=x",
        "?AccessionNumber=A*",
        "?ModalitiesInStudy=CT,MR",
        "?includefield=all",
        "?includefield=InstitutionName",
    ],
)
def test_what_the_index_cannot_match_goes_to_the_pacs(counted, query: str) -> None:  # type: ignore[no-untyped-def]
    harness, upstream = counted
    token = _token(harness, _patient(harness))
    harness.client.get("/dicomweb/studies", headers=token)
    upstream.calls.clear()
    answer = harness.client.get(f"/dicomweb/studies{query}", headers=token)
    assert answer.status_code in (200, 204), answer.text
    assert upstream.calls["studies"] == 1, upstream.calls


def test_visibility_release_and_audit_hold(counted) -> None:  # type: ignore[no-untyped-def]
    harness, _ = counted
    patient = _patient(harness)
    everything = _uids(harness.client.get("/dicomweb/studies", headers=_token(harness, patient)))
    assert len(everything) >= 2
    # A grant of one chosen study shows that study only.
    chosen = _token(harness, patient, studies=[everything[0]])
    assert _uids(harness.client.get("/dicomweb/studies", headers=chosen)) == [everything[0]]
    other = _uids(
        harness.client.get(f"/dicomweb/studies?StudyInstanceUID={everything[1]}", headers=chosen)
    )
    assert other == []
    # Another patient's token never sees these studies, by UID or PatientID.
    stranger = _token(harness, _patient(harness, "IS-1003"))
    for query in (f"StudyInstanceUID={everything[0]}", f"PatientID={BENCH_PATIENT_ID}"):
        assert _uids(harness.client.get(f"/dicomweb/studies?{query}", headers=stranger)) == []
    # Held back by the release delay: not listed.
    harness.services.records.jackets.release.default = timedelta(days=365 * 100)
    delayed = harness.client.get("/dicomweb/studies", headers=_token(harness, patient))
    assert len(_uids(delayed)) < len(everything)
    # Each search answered from the index is in the audit trail, naming the patient.
    audit = harness.services.audit
    token = _token(harness, patient)
    before = harness.call(audit.search, patients=frozenset({patient}), limit=0)[1]
    harness.client.get("/dicomweb/studies?ModalitiesInStudy=CT", headers=token)
    records, after = harness.call(audit.search, patients=frozenset({patient}), limit=1)
    assert after == before + 1
    assert (records[0].category, records[0].action) == ("dicomweb", "search")


def test_past_the_freshness_bound_the_pacs_is_asked_again(counted) -> None:  # type: ignore[no-untyped-def]
    harness, upstream = counted
    token = _token(harness, _patient(harness))
    harness.client.get("/dicomweb/studies", headers=token)
    jackets = harness.services.records.jackets
    now = jackets.clock()
    jackets.release.clock = lambda: now + jackets.freshness + timedelta(seconds=1)
    upstream.calls.clear()
    assert harness.client.get("/dicomweb/studies", headers=token).status_code == 200
    assert upstream.calls["studies"] == 1, upstream.calls


def test_answerable_keys() -> None:
    from gateway.dicomweb.qido import Query

    assert answerable(Query(filters={"StudyDate": "20200101-20201231"}))
    assert answerable(Query(filters={"StudyInstanceUID": "1.2,1.3"}))
    assert not answerable(Query(filters={"PatientID": "IS-*"}))
    assert not answerable(Query(fields=["all"]))
