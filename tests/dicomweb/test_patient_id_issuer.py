"""One MRN, two issuers, two people: a search by PatientID never merges them.

IS-1005 is Smith at HOSP-A and Okafor at HOSP-B. A viewer that asks for
``studies?PatientID=IS-1005`` (OHIF's "other studies of this patient") must
not get both people's studies as one patient's: the gateway asks for the
issuer instead (issue 10, item 10).
"""

from __future__ import annotations

from typing import Any

import pytest

from gateway.dicomweb.dicomjson import text
from tests.conftest import Gateway


def issuers(found: Any) -> set[str | None]:
    return {text(study, "IssuerOfPatientID") for study in found}


@pytest.mark.parametrize("level", ["studies", "series", "instances"])
def test_an_ambiguous_patient_id_needs_its_issuer(gateway: Gateway, level: str) -> None:
    answer = gateway.get(f"/dicomweb/{level}?PatientID=IS-1005")
    assert answer.status_code == 400, answer.text
    assert "IssuerOfPatientID" in answer.text and "HOSP-A" in answer.text
    assert "IssuerOfPatientID" in answer.headers["warning"]


@pytest.mark.parametrize("issuer", ["HOSP-A", "HOSP-B"])
def test_with_the_issuer_only_that_patient_comes_back(gateway: Gateway, issuer: str) -> None:
    for level in ("studies", "series", "instances"):
        answer = gateway.get(
            f"/dicomweb/{level}?PatientID=IS-1005&IssuerOfPatientID={issuer}"
            "&includefield=IssuerOfPatientID"
        )
        assert answer.status_code == 200, answer.text
        assert issuers(answer.json()) == {issuer}, level


def test_an_unambiguous_patient_id_and_a_wildcard_still_answer(gateway: Gateway) -> None:
    one = gateway.get("/dicomweb/studies?PatientID=IS-1001")
    assert one.status_code == 200 and issuers(one.json()) == {"HOSP-A"}
    # A wildcard searches across patients; each answer carries its issuer. (Orthanc 1.10
    # matches no wildcard in PatientID, so it answers nothing; the gateway forwards it.)
    several = gateway.get("/dicomweb/studies?PatientID=IS-100*&includefield=IssuerOfPatientID")
    assert several.status_code == (200 if gateway.backend == "embedded" else 204)
    if gateway.backend == "embedded":
        assert issuers(several.json()) == {"HOSP-A", "HOSP-B"}
