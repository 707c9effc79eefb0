"""``gateway clients access add | list | remove``: a backend client's pre-authorized access.

SMART Imaging Access, Backend Services mode: ``system/ImagingStudy.rs`` lets a
backend client (one that is not an operator) see only the patients and studies
given here, and what was shared with its organization.
"""

from __future__ import annotations

import asyncio
import json
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from gateway.auth.clients import ClientKind
from gateway.auth.preauthorized import CLIENT, ORGANIZATION, Entry
from gateway.auth.service import AuthServices
from gateway.dicomweb import dicomjson as dj
from gateway.dicomweb.dicomjson import patient_key
from gateway.settings import ConfigError, Settings, load_settings
from gateway.store.database import Database
from gateway.store.patients import PatientIndex

console = Console(stderr=True)
access_app = typer.Typer(
    help=(
        "A backend client's pre-authorized access (SMART Imaging Access, Backend Services): "
        "the patients and studies its system/ scopes reach. Operators (clients added with "
        "--operator) reach every patient and need none."
    )
)

HOLDER = Annotated[
    str,
    typer.Argument(
        help="The backend client's client_id (or, with --organization, the organization's id)."
    ),
]
ORGANIZATION_FLAG = Annotated[
    bool,
    typer.Option(
        "--organization",
        help="HOLDER is an organization: its backend clients (--organization at "
        "'clients add') see what it holds.",
    ),
]
PATIENTS = Annotated[
    list[str] | None,
    typer.Option(
        "--patient",
        help="A patient: their FHIR id here, or an identifier system|value (the system maps "
        "to an IssuerOfPatientID through GATEWAY_IDENTIFIER_ISSUERS, else is one; the value "
        "is the PatientID). All their studies, present and future. Repeat for several.",
    ),
]
STUDIES = Annotated[
    list[str] | None,
    typer.Option(
        "--study",
        help="One study, by StudyInstanceUID (looked up in the PACS for its patient). "
        "Repeat for several.",
    ),
]


class Refused(Exception):
    pass


def _run(action: Any) -> Any:
    try:
        settings = load_settings()
    except ConfigError as exc:
        console.print(f"[red]configuration error:[/red] {exc}")
        raise typer.Exit(2) from None

    async def run() -> Any:
        database = Database(settings.effective_database_url)
        await database.ensure_migrated()
        auth = AuthServices.build(settings, database.sessions)
        try:
            return await action(settings, database, auth)
        finally:
            await auth.aclose()
            await database.dispose()

    try:
        return asyncio.run(run())
    except Refused as exc:
        console.print(f"[red]refused:[/red] {exc}")
        raise typer.Exit(2) from None


async def _holder(settings: Settings, auth: AuthServices, holder: str, organization: bool) -> str:
    if organization:
        return ORGANIZATION
    client = await auth.clients.get(holder)
    if client is None:
        if settings.external_as:
            return CLIENT  # a client of the external authorization server
        raise Refused(f"no client {holder}")
    if client.kind != ClientKind.backend.value:
        raise Refused(f"{holder} is not a backend client")
    if client.operator:
        console.print("[yellow]This client is an operator: it already sees every patient.[/yellow]")
    return CLIENT


async def _entries(
    settings: Settings,
    database: Database,
    patients: list[str],
    studies: list[str],
) -> list[Entry]:
    index = PatientIndex(database.sessions)
    entries = []
    for value in patients:
        if "|" in value:
            system, patient_id = value.split("|", 1)
            if not patient_id:
                raise Refused(f"{value!r}: an identifier needs a value after '|'")
            key = (settings.identifier_issuers.get(system, system), patient_id)
            fhir_id = (await index.ids_for([key]))[key]
        else:
            found = await index.key_for(value)
            if found is None:
                raise Refused(f"no patient {value!r} (give a FHIR id, or system|value)")
            key, fhir_id = found, value
        entries.append(Entry(fhir_id, key[0], key[1]))
    if studies:
        from gateway.records.access import CHECK_FIELDS
        from gateway.services import create_upstream

        upstream = create_upstream(settings)
        try:
            for uid in studies:
                found_studies = await upstream.search_studies(
                    {"StudyInstanceUID": uid}, CHECK_FIELDS
                )
                keys = {
                    patient_key(s) for s in found_studies if dj.text(s, "StudyInstanceUID") == uid
                }
                keys.discard(None)
                if len(keys) != 1:
                    raise Refused(f"study {uid} is not in the PACS (or names no single patient)")
                study_key = next(k for k in keys if k is not None)
                fhir_id = (await index.ids_for([study_key]))[study_key]
                entries.append(Entry(fhir_id, study_key[0], study_key[1], uid))
        finally:
            await upstream.aclose()
    return entries


def _show(entry: Entry) -> dict[str, str]:
    return {
        "patient": entry.patient,
        "issuer": entry.issuer,
        "patient_id": entry.patient_id,
        "study": entry.study or "(all studies)",
    }


@access_app.command("add")
def access_add(
    holder: HOLDER,
    patient: PATIENTS = None,
    study: STUDIES = None,
    organization: ORGANIZATION_FLAG = False,
) -> None:
    """Give a backend client (or an organization) patients and studies to see."""
    if not patient and not study:
        console.print("[red]give at least one --patient or --study[/red]")
        raise typer.Exit(2)

    async def add(settings: Settings, database: Database, auth: AuthServices) -> dict[str, Any]:
        kind = await _holder(settings, auth, holder, organization)
        entries = await _entries(settings, database, patient or [], study or [])
        added = await auth.access_table.give(kind, holder, entries)
        return {
            "holder": holder,
            "kind": kind,
            "added": added,
            "given": [_show(e) for e in entries],
        }

    typer.echo(json.dumps(_run(add), indent=2))


@access_app.command("list")
def access_list(
    holder: HOLDER,
    organization: ORGANIZATION_FLAG = False,
    as_json: Annotated[bool, typer.Option("--json", help="JSON instead of a table.")] = False,
) -> None:
    """What a backend client (or an organization) was given."""

    async def load(settings: Settings, database: Database, auth: AuthServices) -> list[Entry]:
        kind = ORGANIZATION if organization else CLIENT
        return await auth.access_table.held_by(kind, holder)

    entries = _run(load)
    if as_json:
        typer.echo(json.dumps([_show(e) for e in entries], indent=2))
        return
    table = Table("patient (FHIR id)", "issuer", "PatientID", "study")
    for entry in entries:
        shown = _show(entry)
        table.add_row(shown["patient"], shown["issuer"], shown["patient_id"], shown["study"])
    Console().print(table)


@access_app.command("remove")
def access_remove(
    holder: HOLDER,
    patient: PATIENTS = None,
    study: STUDIES = None,
    organization: ORGANIZATION_FLAG = False,
    everything: Annotated[
        bool, typer.Option("--all", help="Remove everything the holder was given.")
    ] = False,
) -> None:
    """Take back patients or studies; the holder's next request no longer sees them."""
    if not (patient or study or everything):
        console.print("[red]give --patient, --study or --all[/red]")
        raise typer.Exit(2)

    async def remove(settings: Settings, database: Database, auth: AuthServices) -> int:
        kind = ORGANIZATION if organization else CLIENT
        if everything:
            return await auth.access_table.take_back(kind, holder, None)
        entries = await _entries(settings, database, patient or [], study or [])
        return await auth.access_table.take_back(kind, holder, entries)

    removed = _run(remove)
    typer.echo(json.dumps({"holder": holder, "removed": removed}))
