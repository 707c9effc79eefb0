"""`gateway demo`: synthetic studies in the embedded store, and a patient to try them with.

The demo patient gets a study in every state (released, held by the release
delay, shared with a link and PIN, reported), an app, a physician and an
operator client. Everything is made once; later runs reuse it and describe
it again in ``demo.json``.
"""

from __future__ import annotations

import json
import secrets
import tempfile
from datetime import UTC, datetime, timedelta
from io import BytesIO
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from joserfc.jwk import RSAKey
from pydicom import Dataset, dcmread
from rich.console import Console
from rich.markup import escape
from sqlalchemy import select

from fixtures.demo_states import HELD_STUDY_ID, NOT_IMAGES, held_copy
from fixtures.generate import PATIENTS, write_fixtures
from gateway import __version__
from gateway.auth.accounts import AccountError
from gateway.auth.clients import ClientKind
from gateway.auth.service import AuthServices
from gateway.dicomweb import dicomjson as dj
from gateway.dicomweb.dicomjson import STUDY_FIELDS
from gateway.dicomweb.instances import part10
from gateway.dicomweb.upstream import Upstream
from gateway.fhir import mapping
from gateway.importing import import_files, progress_bar
from gateway.portal.shares import ShareState, creation_entry, state_of
from gateway.services import Services
from gateway.settings import Settings
from gateway.store.database import Database
from gateway.store.models import Account
from gateway.store.patients import PatientIndex

console = Console(stderr=True)


async def seed_demo(settings: Settings) -> dict[str, Any]:
    """Load the fixtures into an empty store; describe what a user can try. Idempotent.

    The demo patient gets a study in every state: released, held by the release
    delay (a fresh copy of one of their studies, dated now), shared with a link
    and PIN, and reported. A second run reuses what the first one made.
    """
    services = Services.build(settings)
    database, upstream = services.database, services.upstream
    try:
        await database.upgrade()
        existing = await upstream.search_studies({}, ("StudyInstanceUID",), limit=1)
        seeded = 0
        if not existing:
            with tempfile.TemporaryDirectory() as scratch:
                files = write_fixtures(Path(scratch))
                with progress_bar(console) as progress:
                    report = await import_files(upstream, files, progress)
                seeded = report.stored
                if report.failed:
                    console.print(f"[yellow]{len(report.failed)} fixture files failed[/yellow]")
        studies = await upstream.search_studies({}, STUDY_FIELDS)
        patients = await _demo_patients(settings, PatientIndex(database.sessions), studies)
        first = patients[0] if patients else None
        birth = ""
        if first is not None:
            study = next(
                s for s in studies if dj.patient_key(s) == (first["issuer"], first["patient_id"])
            )
            raw = dj.text(study, "PatientBirthDate") or ""
            birth = f"{raw[:4]}-{raw[4:6]}-{raw[6:8]}" if len(raw) == 8 else "1970-01-01"
        smart = await demo_sign_ins(settings, database, first, birth)
        share: dict[str, Any] | None = None
        states: dict[str, Any] | None = None
        patient = smart.get("patient")
        if isinstance(patient, dict) and patient.get("fhir_id"):
            fhir_id = str(patient["fhir_id"])
            if await ensure_held_study(services, fhir_id):
                studies = await upstream.search_studies({}, STUDY_FIELDS)
                patients = await _demo_patients(settings, PatientIndex(database.sessions), studies)
            account_id = patient.get("account_id") or await _patient_account_id(
                database, str(patient.get("access_code", ""))
            )
            if account_id is not None:
                patient["account_id"] = account_id
                previous = _previous_demo(settings).get("share")
                share, states = await demo_share_and_states(
                    services, fhir_id, str(account_id), previous
                )
        return {
            "gateway": __version__,
            "public_url": settings.public_url,
            "fhir_base": settings.fhir_base_url,
            "metadata": f"{settings.fhir_base_url}/metadata",
            "store": str(settings.dicomweb_url or settings.dicom_dir),
            "database": settings.effective_database_url,
            "studies": len(studies),
            "seeded_now": seeded,
            "smart": smart,
            "share": share,
            "states": states,
            "patients": patients,
        }
    finally:
        await services.aclose()


async def _demo_patients(
    settings: Settings, index: PatientIndex, studies: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """One line per patient in the store, the richest record first."""
    keys = {k for k in (dj.patient_key(s) for s in studies) if k}
    ids = await index.ids_for(keys)
    patients = []
    for key, fhir_id in sorted(ids.items(), key=lambda item: item[0]):
        study = next(s for s in studies if dj.patient_key(s) == key)
        count = sum(1 for s in studies if dj.patient_key(s) == key)
        resource = mapping.patient(study, fhir_id)
        patients.append(
            {
                "fhir_id": fhir_id,
                "name": resource.get("name", [{}])[0].get("text", ""),
                "patient_id": key[1],
                "issuer": key[0],
                "studies": count,
                "search": f"{settings.fhir_base_url}/ImagingStudy?patient={fhir_id}",
            }
        )
    # The richest record first: that is the one a newcomer should try.
    patients.sort(key=lambda p: (-int(p["studies"]), str(p["name"])))
    return patients


def _previous_demo(settings: Settings) -> dict[str, Any]:
    """What the last run wrote to demo.json (empty when there is none, or it is damaged)."""
    path = settings.data_dir / "demo.json"
    try:
        previous = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return previous if isinstance(previous, dict) else {}


async def _patient_account_id(database: Database, access_code: str) -> str | None:
    """The id of the patient account that signs in with ``access_code``."""
    if not access_code:
        return None
    async with database.sessions() as session:
        found = await session.scalar(
            select(Account.id).where(Account.login == access_code, Account.kind == "patient")
        )
    return str(found) if found is not None else None


async def ensure_held_study(services: Services, patient_fhir_id: str) -> bool:
    """Give the demo patient a study still under the release delay; True if one was added.

    The study is a copy of one of their fixture studies, dated now (``StudyID``
    ``DEMO-HELD``). Nothing is added while an earlier copy is still held, when
    no delay applies (the patient waived it, or it is zero), or when the patient
    is not one of the synthetic fixtures (a real archive gets no invented study).
    """
    key = await services.records.patients.key_of(patient_fhir_id)
    if key is None or key not in {(p.issuer, p.patient_id) for p in PATIENTS}:
        return False
    jackets, upstream = services.records.jackets, services.upstream
    policy = jackets.release
    found = await upstream.search_studies({"PatientID": key[1]}, STUDY_FIELDS)
    own = [s for s in found if dj.patient_key(s) == key]
    copies = {dj.text(s, "StudyInstanceUID") for s in own if dj.text(s, "StudyID") == HELD_STUDY_ID}
    if copies:
        if policy.waiver_allowed and await policy.has_waived(patient_fhir_id):
            return False
        if copies & set((await jackets.of(patient_fhir_id)).held):
            return False

    def images(study: dict[str, Any]) -> list[str]:
        return [m for m in dj.texts(study, "ModalitiesInStudy") if m.upper() not in NOT_IMAGES]

    sources = [
        s
        for s in own
        if dj.text(s, "StudyID") != HELD_STUDY_ID
        and images(s)
        and policy.delay_for(images(s)) > timedelta(0)
    ]
    if not sources:
        return False
    # A chest CT if there is one ("CT Chest (new result)"), else a CT, else the latest study.
    sources.sort(
        key=lambda s: (
            "CT" in images(s),
            "CHEST" in (dj.text(s, "StudyDescription") or "").upper(),
            dj.text(s, "StudyDate") or "",
        ),
        reverse=True,
    )
    source_uid = dj.text(sources[0], "StudyInstanceUID") or ""
    originals = await _fetch_images(upstream, source_uid, NOT_IMAGES)
    if not originals:
        return False
    result = await upstream.store_instances(held_copy(originals, policy.clock()))
    if result.failed:
        console.print(f"[yellow]{len(result.failed)} instances of the held study failed[/yellow]")
    await jackets.stale(patient_fhir_id)
    return bool(result.stored)


async def _fetch_images(
    upstream: Upstream, study_uid: str, not_images: frozenset[str]
) -> list[Dataset]:
    """The image instances of one study, fetched whole (WADO-RS) from the store."""
    datasets: list[Dataset] = []
    for series in await upstream.search_series({"StudyInstanceUID": study_uid}):
        series_uid = dj.text(series, "SeriesInstanceUID") or ""
        if not series_uid or (dj.text(series, "Modality") or "").upper() in not_images:
            continue
        found = await upstream.search_instances(
            {"StudyInstanceUID": study_uid, "SeriesInstanceUID": series_uid}
        )
        for instance in found:
            sop_uid = dj.text(instance, "SOPInstanceUID") or ""
            body = await part10(upstream, study_uid, series_uid, sop_uid)
            datasets.append(dcmread(BytesIO(body)))
    return datasets


DEMO_SHARE_LABEL = "Dr. Demo (referring physician)"
DEMO_SHARE_DAYS = 30


async def demo_share_and_states(
    services: Services, patient_fhir_id: str, account_id: str, previous: Any
) -> tuple[dict[str, Any] | None, dict[str, Any]]:
    """The demo share link (kept while it still opens) and the patient's studies by state."""
    shares = services.shares
    jacket = await services.records.jackets.of(patient_fhir_id)
    released = [s.uid for s in jacket.studies if s.uid in jacket.released]
    reported = [s.uid for s in jacket.studies if s.has_report]
    share: dict[str, Any] | None = None
    if isinstance(previous, dict) and previous.get("id"):
        kept = await shares.active(str(previous["id"]))
        if kept is not None and kept.account_id == account_id:
            share = dict(previous)
    if share is None:
        # Two released studies, one with a report if there is one.
        chosen = [uid for uid in released if uid in reported][:1]
        chosen += [uid for uid in released if uid not in chosen][: 2 - len(chosen)]
        if chosen:
            created = await shares.create(
                account_id=account_id,
                patient_fhir_id=patient_fhir_id,
                studies=chosen,
                days=min(DEMO_SHARE_DAYS, services.settings.share_max_days),
                label=DEMO_SHARE_LABEL,
            )
            expires = created.share.expires_at
            await services.audit.record(creation_entry(created.share, account_id, " (demo)"))
            share = {
                "id": created.share.id,
                "link": shares.link(created.token),
                "pin": created.pin,
                "label": DEMO_SHARE_LABEL,
                "expires": expires.isoformat(timespec="seconds"),
                "studies": chosen,
            }
    now = shares.clock()
    active = [
        s for s in await shares.of_account(account_id) if state_of(s, now) is ShareState.active
    ]
    shared = {uid for s in active for uid in s.studies}
    states = {
        "patient": patient_fhir_id,
        "released": released,
        "held": [
            {"uid": uid, "available_at": at.isoformat(timespec="seconds")}
            for uid, at in sorted(jacket.held.items(), key=lambda item: item[1])
        ],
        "shared": [s.uid for s in jacket.studies if s.uid in shared],
        "reported": reported,
    }
    return share, states


async def demo_sign_ins(
    settings: Settings, database: Database, patient: dict[str, Any] | None, birth_date: str
) -> dict[str, Any]:
    """The demo app, patient and physician, created once and described in demo.json."""
    previous_path = settings.data_dir / "demo.json"
    auth = AuthServices.build(settings, database.sessions)
    try:
        previous: dict[str, Any] = {}
        if previous_path.exists():
            previous = json.loads(previous_path.read_text(encoding="utf-8")).get("smart") or {}
            known = await auth.clients.get(str(previous.get("app", {}).get("client_id", "")))
            if known is not None and launch_page(settings) in (known.redirect_uris or []):
                return dict(previous)
            if known is not None:  # a demo from before OHIF: the same people, a new app
                return {**previous, "app": await demo_app(settings, auth)}
        # Drawn afresh for each demo database; written to demo.json for the person trying it.
        passphrase = f"demo-{secrets.token_hex(3)}-{secrets.token_hex(3)}"
        smart: dict[str, Any] = {
            "app": await demo_app(settings, auth),
            "smart_configuration": f"{settings.fhir_base_url}/.well-known/smart-configuration",
        }
        if patient is not None:
            account = await auth.accounts.enroll_patient(
                str(patient["fhir_id"]), birth_date, str(patient["name"])
            )
            await auth.accounts.activate(account.login, birth_date, passphrase)
            smart["patient"] = {
                "account_id": account.id,
                "access_code": account.login,
                "passphrase": passphrase,
                "fhir_id": patient["fhir_id"],
                "name": patient["name"],
            }
        smart["operator"] = await _demo_operator(settings, auth)
        try:
            await auth.accounts.add_practitioner("demo.doctor", "Grey^Meredith", passphrase)
            smart["practitioner"] = {"username": "demo.doctor", "password": passphrase}
        except AccountError:
            smart["practitioner"] = {"username": "demo.doctor", "password": "(set earlier)"}
        return smart
    finally:
        await auth.aclose()


def launch_page(settings: Settings) -> str:
    """The SMART launch page that opens OHIF (smart_apps/launch)."""
    return f"{settings.public_url}/apps/launch/"


async def demo_app(settings: Settings, auth: AuthServices) -> dict[str, Any]:
    """OHIF behind its SMART launch page, as a public client (PKCE, no secret).

    Its launch URI carries the client id, so that an EHR launch in a fresh browser
    knows which app it is.
    """
    page = launch_page(settings)
    created = await auth.clients.add(
        name="OHIF Viewer",
        kind=ClientKind.public,
        redirect_uris=[page],
        launch_uri=f"{page}?client_id={{client_id}}",
    )
    client_id = created.client.client_id
    opened = f"{page}?{urlencode({'client_id': client_id})}"
    return {
        "client_id": client_id,
        "name": "OHIF Viewer",
        "open": opened,
        "redirect_uri": page,
        "ohif": f"{settings.public_url}/apps/ohif/",
    }


async def _demo_operator(settings: Settings, auth: Any) -> dict[str, Any]:
    """A backend client for scripts; its private key is written next to demo.json."""
    key = RSAKey.generate_key(2048, parameters={"kid": "demo-operator", "alg": "RS384"})
    created = await auth.clients.add(
        name="Demo operator",
        kind=ClientKind.backend,
        jwks={"keys": [key.as_dict(private=False)]},
        scope="system/*.rs system/ImagingStudy.c",
        operator=True,
    )
    key_path = settings.data_dir / "demo-operator-key.json"
    key_path.write_text(json.dumps(key.as_dict(private=True)), encoding="utf-8")
    key_path.chmod(0o600)
    client_id = created.client.client_id
    return {
        "client_id": client_id,
        "private_key": str(key_path),
        "token": f"gateway tokens issue --client {client_id} --scope 'system/*.rs'",
    }


def demo_lines(summary: dict[str, Any]) -> list[str]:
    """What to try first, in a few lines (rich markup; the values are escaped)."""
    lines = []
    app = (summary.get("smart") or {}).get("app")
    if isinstance(app, dict) and app.get("open"):
        lines.append(
            f"  OHIF viewer:    {escape(str(app['open']))}  (sign in as the patient or physician)"
        )
    patient = (summary.get("smart") or {}).get("patient")
    if isinstance(patient, dict):
        lines.append(
            f"  patient portal: {escape(str(summary['public_url']))}/portal/signin"
            f"  access code [bold]{escape(str(patient.get('access_code', '')))}[/bold]"
            f"  passphrase [bold]{escape(str(patient.get('passphrase', '')))}[/bold]"
        )
    doctor = (summary.get("smart") or {}).get("practitioner")
    if isinstance(doctor, dict):
        lines.append(
            f"  physician:      username [bold]{escape(str(doctor.get('username', '')))}[/bold]"
            f"  password [bold]{escape(str(doctor.get('password', '')))}[/bold]"
        )
    share = summary.get("share")
    if isinstance(share, dict):
        expires = _day(str(share.get("expires", "")))
        lines.append(
            f"  share link:     {escape(str(share.get('link', '')))}"
            f"  PIN [bold]{escape(str(share.get('pin', '')))}[/bold]"
            f"  ({len(share.get('studies', []))} studies, until {escape(expires)})"
        )
    states = summary.get("states")
    if isinstance(states, dict):
        counts = ", ".join(
            f"{len(states.get(name) or [])} {name}"
            for name in ("released", "held", "shared", "reported")
        )
        held = [str(h.get("available_at", "")) for h in states.get("held") or []]
        until = f" (held until {escape(_day(min(held)))})" if held else ""
        lines.append(f"  demo patient's studies: {counts}{until}")
    return lines


def _day(instant: str) -> str:
    """``2026-01-31 14:05 UTC`` from an ISO instant (as it is, if it is not one)."""
    try:
        return datetime.fromisoformat(instant).astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")
    except ValueError:
        return instant
