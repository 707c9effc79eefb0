"""Capability URLs (SMART Imaging Access, ``requires-access-token = false``): asked for
with ``Prefer: wado-capability=bearer``; unguessable and stored hashed; limited to the
studies of the search and to reading them; never outliving the token; ended by the
patient's revocation, by revoking the token, and by ``DELETE``; another patient's
studies and other operations through one answer 404 or 405."""

from __future__ import annotations

import hashlib
from typing import Any
from urllib.parse import urlsplit

import pytest
from sqlalchemy import select

from gateway.store.models import WadoCapability
from tests.imaging.conftest import Imaging
from tests.imaging.support import B_STUDY, CT_STUDY, MR_STUDY, PATIENT_SCOPES, uid
from tests.imaging.test_discovery_and_profiles import check_endpoint, check_study

PREFER = {"Prefer": "wado-capability=bearer"}
AS_STORED = {"Accept": "multipart/related; type=application/dicom; transfer-syntax=*"}


def capability_search(imaging: Imaging, token: dict[str, Any], query: str = "") -> dict:
    response = imaging.harness.client.get(
        f"/fhir/ImagingStudy?patient={imaging.a}{query}",
        headers={"Authorization": f"Bearer {token['access_token']}", **PREFER},
    )
    assert response.status_code == 200, response.text
    assert response.headers["preference-applied"] == "wado-capability=bearer"
    return response.json()


def base_of(bundle: dict) -> str:
    """The one capability base the answer's studies carry (contained, flag false)."""
    bases = set()
    for entry in bundle["entry"]:
        study = entry["resource"]
        check_study(study, {"Endpoint/dicomweb": {"resourceType": "Endpoint"}})
        contained = study["contained"][0]
        check_endpoint(contained, requires_token=False)
        bases.add(contained["address"])
    assert len(bases) == 1
    return urlsplit(bases.pop()).path


def test_without_the_preference_no_capability_is_issued(imaging: Imaging) -> None:
    token = imaging.harness.patient_token(imaging.a, PATIENT_SCOPES)
    plain = imaging.harness.client.get(
        f"/fhir/ImagingStudy?patient={imaging.a}",
        headers={"Authorization": f"Bearer {token['access_token']}"},
    )
    assert "preference-applied" not in plain.headers
    for entry in plain.json()["entry"]:
        check_endpoint(entry["resource"]["contained"][0], requires_token=True)


def test_a_capability_opens_its_studies_without_the_token(imaging: Imaging) -> None:
    client = imaging.harness.client
    token = imaging.harness.patient_token(imaging.a, PATIENT_SCOPES)
    base = base_of(capability_search(imaging, token, f"&identifier=urn:oid:{CT_STUDY}"))
    secret = base.rsplit("/", 1)[-1]
    assert len(secret) >= 43  # 256 bits, base64url
    # Stored hashed: the secret itself is nowhere in the database.
    rows = imaging.harness.call(_rows, imaging)
    assert any(r.secret_hash == hashlib.sha256(secret.encode()).hexdigest() for r in rows)
    assert all(secret not in str(vars(r)) for r in rows)
    # The study of the search, read without any token: retrieve, metadata, QIDO.
    whole = client.get(f"{base}/studies/{CT_STUDY}", headers=AS_STORED)
    assert whole.status_code == 200 and b"DICM" in whole.content
    assert client.get(f"{base}/studies/{CT_STUDY}/metadata").status_code == 200
    found = client.get(f"{base}/studies")
    assert found.status_code == 200
    assert {s["0020000D"]["Value"][0] for s in found.json()} == {CT_STUDY}
    # Appending paths does not reach further: the patient's other study, another
    # patient's, an unknown one, all 404 like anything unknown; no STOW, no FHIR.
    for other in (MR_STUDY, B_STUDY, "2.25.1"):
        assert client.get(f"{base}/studies/{other}", headers=AS_STORED).status_code == 404
        assert client.get(f"{base}/studies/{other}/metadata").status_code == 404
    series = uid(B_STUDY, ("HOSP-B", "IMG-1"), 1)
    assert client.get(f"{base}/studies/{CT_STUDY}/series/{series}").status_code == 404
    stow = client.post(
        f"{base}/studies", content=b"x", headers={"Content-Type": "multipart/related"}
    )
    assert stow.status_code in (404, 405)
    # A token sent with it changes nothing, and a wrong secret opens nothing.
    assert client.get(f"{base[:-4]}AAAA/studies/{CT_STUDY}").status_code == 404
    assert client.get(f"/dicomweb/cap/x/studies/{CT_STUDY}").status_code == 404


async def _rows(imaging: Imaging) -> list[WadoCapability]:
    async with imaging.harness.services.database.sessions() as session:
        return list((await session.scalars(select(WadoCapability))).all())


def test_a_capability_expires_with_its_token(imaging: Imaging) -> None:
    client, clock = imaging.harness.client, imaging.clock
    token = imaging.harness.patient_token(imaging.a, PATIENT_SCOPES)
    base = base_of(capability_search(imaging, token))
    rows = imaging.harness.call(_rows, imaging)
    issued = max(rows, key=lambda r: r.created_at)
    grant_ends = imaging.harness.call(
        imaging.harness.services.auth.tokens.check, token["access_token"]
    ).expires_at
    assert issued.expires_at.replace(tzinfo=grant_ends.tzinfo) <= grant_ends
    assert client.get(f"{base}/studies/{MR_STUDY}/metadata").status_code == 200
    clock.advance(seconds=token["expires_in"] + 1)
    try:
        assert client.get(f"{base}/studies/{MR_STUDY}/metadata").status_code == 404
    finally:
        clock.advance(seconds=-(token["expires_in"] + 1))


@pytest.mark.parametrize("how", ["patient withdraws the app", "token revoked", "DELETE"])
def test_a_capability_is_revocable(imaging: Imaging, how: str) -> None:
    harness = imaging.harness
    token = harness.patient_token(imaging.a, PATIENT_SCOPES)
    base = base_of(capability_search(imaging, token))
    assert harness.client.get(f"{base}/studies/{MR_STUDY}/metadata").status_code == 200
    if how == "patient withdraws the app":
        grant = harness.call(harness.services.auth.tokens.check, token["access_token"])
        assert harness.call(
            harness.services.auth.tokens.revoke_for_account, grant.grant_id, grant.account_id
        )
    elif how == "token revoked":
        answer = harness.client.post(
            "/oauth/revoke", data={"token": token["access_token"], "client_id": token["client_id"]}
        )
        assert answer.status_code == 200
    else:
        assert harness.client.delete(base).status_code == 204
        assert harness.client.delete(base).status_code == 404
    assert harness.client.get(f"{base}/studies/{MR_STUDY}/metadata").status_code == 404


def test_a_capability_cannot_be_issued_for_another_patient(imaging: Imaging) -> None:
    token = imaging.harness.patient_token(imaging.a, PATIENT_SCOPES)
    response = imaging.harness.client.get(
        f"/fhir/ImagingStudy?patient={imaging.b}",
        headers={"Authorization": f"Bearer {token['access_token']}", **PREFER},
    )
    assert response.status_code == 403
    assert "/dicomweb/cap/" not in response.text


def test_capability_urls_are_masked_in_logs() -> None:
    from gateway.logs import redact

    line = f'"GET /dicomweb/cap/{"a" * 43}/studies/{CT_STUDY} HTTP/1.1" 200'
    assert "a" * 43 not in redact(line) and CT_STUDY in redact(line)


def test_a_capability_read_is_audited_as_the_app_for_the_patient(imaging: Imaging) -> None:
    harness = imaging.harness
    token = harness.patient_token(imaging.a, PATIENT_SCOPES)
    base = base_of(capability_search(imaging, token))
    system = {"Authorization": f"Bearer {harness.backend_token('system/*.rs')['access_token']}"}
    trail = f"/fhir/AuditEvent?patient={imaging.a}&agent={token['client_id']}&_count=200"

    def events() -> int:
        return int(harness.client.get(trail, headers=system).json()["total"])

    before = events()
    assert harness.client.get(f"{base}/studies/{MR_STUDY}/metadata").status_code == 200
    assert events() == before + 1
