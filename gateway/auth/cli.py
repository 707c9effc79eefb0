"""``gateway clients | patients | users | keys | launch``: the authorization server by hand.

Each command prints JSON on stdout (secrets appear once, then only their
hashes exist) and messages on stderr.
"""

from __future__ import annotations

import asyncio
import json
import re
import sys
from collections.abc import Awaitable, Callable
from datetime import date, timedelta
from pathlib import Path
from typing import Annotated, Any, TypeVar
from urllib.parse import urlencode

import typer
from rich.console import Console
from rich.table import Table

from gateway.auth import scopes
from gateway.auth.access_cli import access_app
from gateway.auth.accounts import AccountError
from gateway.auth.clients import ClientKind, RegistrationError, describe
from gateway.auth.service import AuthServices
from gateway.settings import ConfigError, Settings, load_settings
from gateway.store.database import Database
from gateway.store.patients import PatientIndex

T = TypeVar("T")
console = Console(stderr=True)
clients_app = typer.Typer(help="Apps, EHRs and backend services that may ask for tokens.")
patients_app = typer.Typer(help="Patients who sign in with an access code.")
users_app = typer.Typer(help="Practitioners who sign in with a username.")
keys_app = typer.Typer(help="The server's token signing keys.")
tokens_app = typer.Typer(help="Access tokens, issued by hand for operators and scripts.")
studies_app = typer.Typer(help="Studies and the release delay.")


def _settings() -> Settings:
    try:
        return load_settings()
    except ConfigError as exc:
        console.print(f"[red]configuration error:[/red] {exc}")
        raise typer.Exit(2) from None


def _with_auth(action: Callable[[Settings, Database, AuthServices], Awaitable[T]]) -> T:
    settings = _settings()

    async def run() -> T:
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
    except (RegistrationError, AccountError) as exc:
        console.print(f"[red]refused:[/red] {exc}")
        raise typer.Exit(2) from None


def _print(value: Any) -> None:
    typer.echo(json.dumps(value, indent=2, ensure_ascii=False))


@clients_app.command("add")
def clients_add(
    name: Annotated[str, typer.Option(help="The app's name, shown on the consent page.")],
    kind: Annotated[ClientKind, typer.Option("--type", help="How the client authenticates.")],
    redirect_uri: Annotated[
        list[str] | None, typer.Option(help="Exact redirect URI (repeat for several).")
    ] = None,
    launch_uri: Annotated[
        str | None,
        typer.Option(help="Where an EHR launch opens the app; {client_id} becomes the new id."),
    ] = None,
    jwks_url: Annotated[str | None, typer.Option(help="The client's JWKS URL.")] = None,
    jwks_file: Annotated[
        Path | None, typer.Option(help="A JSON file with the client's JWKS.", exists=True)
    ] = None,
    scope: Annotated[
        str, typer.Option(help="Scopes the client may have (backend: its system/ scopes).")
    ] = "",
    ehr: Annotated[
        bool, typer.Option("--ehr", help="The client is an EHR that launches apps.")
    ] = False,
    operator: Annotated[
        bool,
        typer.Option(
            "--operator",
            help="Backend only: its system/ scopes reach every patient (staff tools, "
            "scripts). Without it, a backend client sees only its pre-authorized access "
            "('gateway clients access add').",
        ),
    ] = False,
    organization: Annotated[
        str | None,
        typer.Option(
            help="Backend only: the organization it acts for; it also sees what was "
            "shared with that organization."
        ),
    ] = None,
) -> None:
    """Register a client; prints its client_id (and, for symmetric clients, the secret, once)."""
    jwks = None
    if jwks_file is not None:
        try:
            jwks = json.loads(jwks_file.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            console.print(f"[red]cannot read {jwks_file}:[/red] {exc}")
            raise typer.Exit(2) from None

    async def add(settings: Settings, database: Database, auth: AuthServices) -> dict[str, Any]:
        created = await auth.clients.add(
            name=name,
            kind=kind,
            redirect_uris=redirect_uri or [],
            launch_uri=launch_uri,
            jwks_url=jwks_url,
            jwks=jwks,
            scope=scope,
            ehr=ehr,
            operator=operator,
            organization_id=organization,
        )
        answer = describe(created.client)
        if created.secret:
            answer["client_secret"] = created.secret
        return answer

    answer = _with_auth(add)
    _print(answer)
    if "client_secret" in answer:
        console.print("[yellow]The secret is shown only now; only its hash is kept.[/yellow]")


@clients_app.command("list")
def clients_list(
    as_json: Annotated[bool, typer.Option("--json", help="JSON instead of a table.")] = False,
) -> None:
    """List registered clients."""

    async def load(settings: Settings, database: Database, auth: AuthServices) -> list[Any]:
        return [describe(c) for c in await auth.clients.all()]

    clients = _with_auth(load)
    if as_json:
        _print(clients)
        return
    table = Table("client_id", "name", "type", "redirect URIs", "scope", "EHR", "operator")
    for client in clients:
        table.add_row(
            client["client_id"],
            client["client_name"],
            client["type"],
            "\n".join(client["redirect_uris"]),
            client["scope"],
            "yes" if client["ehr"] else "",
            "yes" if client.get("operator") else "",
        )
    Console().print(table)


@clients_app.command("remove")
def clients_remove(client_id: str) -> None:
    """Remove a client; its tokens stop working when they expire or are revoked."""

    async def remove(settings: Settings, database: Database, auth: AuthServices) -> bool:
        return await auth.clients.remove(client_id)

    if not _with_auth(remove):
        console.print(f"[red]no client {client_id}[/red]")
        raise typer.Exit(1)
    console.print(f"removed {client_id}")


def _birth_date(value: str) -> str:
    try:
        return date.fromisoformat(value).isoformat()
    except ValueError:
        raise typer.BadParameter("use YYYY-MM-DD") from None


@patients_app.command("enroll")
def patients_enroll(
    patient_id: Annotated[str, typer.Option(help="The patient's MRN (PatientID) in the PACS.")],
    birth_date: Annotated[
        str,
        typer.Option(help="Date of birth, YYYY-MM-DD: the activation check.", callback=_birth_date),
    ],
    issuer: Annotated[str, typer.Option(help="Issuer of the PatientID, if any.")] = "",
    name: Annotated[str, typer.Option(help="Name shown when the patient signs in.")] = "",
) -> None:
    """Give a patient an 8-digit access code; prints it with the patient's FHIR id."""

    async def enroll(settings: Settings, database: Database, auth: AuthServices) -> dict[str, Any]:
        index = PatientIndex(database.sessions)
        fhir_id = (await index.ids_for([(issuer, patient_id)]))[(issuer, patient_id)]
        account = await auth.accounts.enroll_patient(fhir_id, birth_date, name)
        return {"access_code": account.login, "patient": fhir_id, "birth_date": birth_date}

    _print(_with_auth(enroll))
    console.print("The patient activates once with this code and the date of birth.")


@users_app.command("add")
def users_add(
    username: Annotated[str, typer.Option(help="Sign-in name.")],
    name: Annotated[str, typer.Option(help='Name as "Family^Given".')],
    password_stdin: Annotated[
        bool, typer.Option("--password-stdin", help="Read the password from standard input.")
    ] = False,
) -> None:
    """Add a practitioner (served as a Practitioner resource, their fhirUser)."""
    if not password_stdin:
        console.print("[red]pass --password-stdin and the password on standard input[/red]")
        raise typer.Exit(2)
    password = sys.stdin.readline().rstrip("\r\n")

    async def add(settings: Settings, database: Database, auth: AuthServices) -> dict[str, Any]:
        account = await auth.accounts.add_practitioner(username, name, password)
        return {
            "username": account.login,
            "fhirUser": f"{settings.fhir_base_url}/Practitioner/{account.id}",
        }

    _print(_with_auth(add))


@keys_app.command("rotate")
def keys_rotate() -> None:
    """Sign with a new key; the old public key stays published until its tokens expire."""

    async def rotate(settings: Settings, database: Database, auth: AuthServices) -> str:
        keep = timedelta(seconds=max(settings.access_token_seconds, 3600) + 300)
        return await auth.keys.rotate(keep)

    _print({"kid": _with_auth(rotate)})


@tokens_app.command("issue")
def tokens_issue(
    client: Annotated[str, typer.Option(help="A registered client with system/ scopes.")],
    scope: Annotated[
        str, typer.Option(help="system/ (or admin/) scopes, within the client's own.")
    ],
) -> None:
    """Issue a backend (system/) token for a client, as client_credentials would."""

    async def issue(settings: Settings, database: Database, auth: AuthServices) -> Any:
        registered = await auth.clients.get(client)
        if registered is None:
            raise RegistrationError(f"no client {client}")
        allowed = scopes.backend_scopes(registered.scope)
        granted = scopes.narrow(allowed, scopes.split(scope))
        if not granted:
            raise RegistrationError(
                f"the client's system scopes ({' '.join(allowed) or 'none'}) do not include that"
            )
        return await auth.tokens.client_credentials(registered.client_id, granted)

    _print(_with_auth(issue))


@studies_app.command("release")
def studies_release(
    study_uid: Annotated[str, typer.Argument(help="The StudyInstanceUID to release now.")],
    by: Annotated[str, typer.Option(help="Who releases it (kept with the release).")] = "staff",
) -> None:
    """Release a study to its patient before the delay ends."""

    async def release(settings: Settings, database: Database, auth: AuthServices) -> bool:
        from gateway.audit import AuditEntry, Auditor
        from gateway.records.release import ReleasePolicy

        if not re.fullmatch(r"[0-9.]{1,64}", study_uid):
            raise RegistrationError("a StudyInstanceUID is digits and dots, at most 64")
        done = await ReleasePolicy(settings, database.sessions).release(study_uid, by)
        await Auditor(database.sessions).record(
            AuditEntry(
                category="release",
                action="release",
                outcome=200 if done else 409,
                user=by,
                study=study_uid,
                detail="released early by staff",
            )
        )
        return done

    if _with_auth(release):
        console.print(f"released {study_uid}")
    else:
        console.print(f"{study_uid} was already released")


def launch(
    client: Annotated[str, typer.Option(help="The app's client_id.")],
    patient: Annotated[str, typer.Option(help="The patient's FHIR id.")],
    user: Annotated[str | None, typer.Option(help="The practitioner's username.")] = None,
    study: Annotated[
        str | None, typer.Option(help="A study in context (fhirContext ImagingStudy/<UID>).")
    ] = None,
) -> None:
    """Create an EHR launch and print the app's launch URL (valid 5 minutes, once)."""

    async def create(settings: Settings, database: Database, auth: AuthServices) -> str:
        app_client = await auth.clients.get(client)
        if app_client is None or not app_client.launch_uri:
            raise RegistrationError("the client is unknown or has no --launch-uri")
        if not re.fullmatch(r"[A-Za-z0-9\-.]{1,64}", patient):
            raise RegistrationError("the patient must be a FHIR id")
        context: dict[str, Any] = {"patient": patient, "need_patient_banner": True}
        if user:
            context["user"] = user
        if study:
            if not re.fullmatch(r"[0-9.]{1,64}", study):
                raise RegistrationError("the study must be a Study Instance UID")
            context["fhirContext"] = [{"reference": f"ImagingStudy/{study}"}]
        launch_id = await auth.launches.create("cli", context)
        query = urlencode({"iss": settings.fhir_base_url, "launch": launch_id})
        separator = "&" if "?" in app_client.launch_uri else "?"
        return f"{app_client.launch_uri}{separator}{query}"

    typer.echo(_with_auth(create))


def register(app: typer.Typer) -> None:
    clients_app.add_typer(access_app, name="access", no_args_is_help=True)
    app.add_typer(clients_app, name="clients", no_args_is_help=True)
    app.add_typer(patients_app, name="patients", no_args_is_help=True)
    app.add_typer(users_app, name="users", no_args_is_help=True)
    app.add_typer(keys_app, name="keys", no_args_is_help=True)
    app.add_typer(tokens_app, name="tokens", no_args_is_help=True)
    app.add_typer(studies_app, name="studies", no_args_is_help=True)
    app.command("launch")(launch)
