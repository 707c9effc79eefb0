"""``gateway orgs add | list | remove``: the sites patients may send studies to."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.table import Table

from gateway.audit import Auditor
from gateway.auth.clients import describe as describe_client
from gateway.auth.service import AuthServices
from gateway.organizations.pushing import SiteTransfers
from gateway.organizations.registry import DEFAULT_PULL_SCOPE, OrganizationError, describe
from gateway.organizations.sealing import KeyMissing
from gateway.settings import ConfigError, Settings, load_settings
from gateway.store.database import Database
from gateway.transfers.queue import TransferQueue

T = TypeVar("T")
console = Console(stderr=True)
orgs_app = typer.Typer(
    help=(
        "Organizations (other hospitals, trauma centres) that patients and staff send "
        "studies to: by their backend client pulling (SMART Backend Services) and/or by "
        "a push to their DICOMweb STOW-RS endpoint."
    ),
    no_args_is_help=True,
)


def _run(action: Callable[[AuthServices], Awaitable[T]]) -> T:
    try:
        settings: Settings = load_settings()
    except ConfigError as exc:
        console.print(f"[red]configuration error:[/red] {exc}")
        raise typer.Exit(2) from None

    async def run() -> T:
        database = Database(settings.effective_database_url)
        await database.ensure_migrated()
        auth = AuthServices.build(settings, database.sessions)
        try:
            return await action(auth)
        finally:
            await auth.aclose()
            await database.dispose()

    try:
        return asyncio.run(run())
    except (OrganizationError, KeyMissing) as exc:
        console.print(f"[red]refused:[/red] {exc}")
        raise typer.Exit(2) from None


@orgs_app.command("add")
def orgs_add(
    org_id: Annotated[str, typer.Argument(help="A short id: letters, digits, '-', '.', '_'.")],
    name: Annotated[str, typer.Option(help="The name patients see when they choose it.")],
    identifier: Annotated[
        list[str] | None,
        typer.Option(help="An identifier system|value (e.g. an NPI or OID). Repeatable."),
    ] = None,
    jwks_file: Annotated[
        Path | None,
        typer.Option(
            help="Sites that pull: a JSON file with the public keys (JWKS) of the site's "
            "backend client; it is registered, acting for this organization.",
            exists=True,
        ),
    ] = None,
    jwks_url: Annotated[
        str | None, typer.Option(help="Sites that pull: the backend client's JWKS URL instead.")
    ] = None,
    scope: Annotated[
        str, typer.Option(help="The backend client's system/ scopes.")
    ] = DEFAULT_PULL_SCOPE,
    stow_url: Annotated[
        str | None,
        typer.Option(
            help="Sites that receive pushes: their DICOMweb base URL (STOW-RS is "
            "POST {stow-url}/studies)."
        ),
    ] = None,
    bearer_env: Annotated[
        str | None,
        typer.Option(
            help="The NAME of an environment variable holding a static bearer token for "
            "the STOW-RS endpoint (read from the environment, never from the command line)."
        ),
    ] = None,
    token_url: Annotated[
        str | None, typer.Option(help="OAuth client credentials: the site's token endpoint.")
    ] = None,
    client_id: Annotated[
        str | None, typer.Option(help="OAuth client credentials: our client id at the site.")
    ] = None,
    client_secret_env: Annotated[
        str | None,
        typer.Option(
            help="OAuth client credentials: the NAME of an environment variable "
            "holding our client secret."
        ),
    ] = None,
    oauth_scope: Annotated[
        str | None, typer.Option(help="OAuth client credentials: the scope to ask for.")
    ] = None,
) -> None:
    """Record an organization. Its STOW secret is sealed in the database, never printed."""
    import os

    jwks = None
    if jwks_file is not None:
        try:
            jwks = json.loads(jwks_file.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            console.print(f"[red]cannot read {jwks_file}:[/red] {exc}")
            raise typer.Exit(2) from None

    def secret(variable: str | None) -> str | None:
        if variable is None:
            return None
        value = os.environ.get(variable, "").strip()
        if not value:
            console.print(f"[red]the environment variable {variable} is empty or unset[/red]")
            raise typer.Exit(2)
        return value

    bearer, client_secret = secret(bearer_env), secret(client_secret_env)

    async def add(auth: AuthServices) -> dict[str, Any]:
        organization, client = await auth.organizations.add(
            org_id=org_id,
            name=name,
            identifiers=identifier or [],
            jwks=jwks,
            jwks_url=jwks_url,
            pull_scope=scope,
            stow_url=stow_url,
            bearer=bearer,
            token_url=token_url,
            oauth_client_id=client_id,
            oauth_client_secret=client_secret,
            oauth_scope=oauth_scope,
        )
        answer = describe(organization, [client.client_id] if client else [])
        if client is not None:
            answer["backend_client"] = describe_client(client)
        return answer

    typer.echo(json.dumps(_run(add), indent=2, ensure_ascii=False))


@orgs_app.command("list")
def orgs_list(
    as_json: Annotated[bool, typer.Option("--json", help="JSON instead of a table.")] = False,
) -> None:
    """The organizations, how each receives studies (secrets are never shown)."""

    async def load(auth: AuthServices) -> list[dict[str, Any]]:
        return [
            describe(o, await auth.organizations.clients_of(o.id))
            for o in await auth.organizations.all()
        ]

    found = _run(load)
    if as_json:
        typer.echo(json.dumps(found, indent=2, ensure_ascii=False))
        return
    table = Table("id", "name", "identifiers", "pulls (backend client)", "push (STOW-RS)")
    for org in found:
        push = f"{org['stow_url']} ({org['stow_auth']})" if org["stow_url"] else ""
        table.add_row(
            org["id"],
            org["name"],
            "\n".join(org["identifiers"]),
            "\n".join(org["backend_clients"]),
            push,
        )
    Console().print(table)


@orgs_app.command("remove")
def orgs_remove(org_id: str) -> None:
    """Remove an organization and its backend clients: they see nothing from their next
    request; every send to it is withdrawn (its FHIR Consent inactive, in the patient's
    Activity) and its unfinished pushes are cancelled."""

    async def remove(auth: AuthServices) -> int | None:
        sessions = auth.sends.sessions
        sites = SiteTransfers(
            auth.organizations, auth.sends, TransferQueue(sessions), Auditor(sessions)
        )
        return await sites.remove_organization(org_id)

    withdrawn = _run(remove)
    if withdrawn is None:
        console.print(f"[red]no organization {org_id}[/red]")
        raise typer.Exit(1)
    console.print(f"removed {org_id}; {withdrawn} send(s) to it withdrawn")


def register(app: typer.Typer) -> None:
    app.add_typer(orgs_app, name="orgs")
