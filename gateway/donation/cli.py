"""``gateway research``: research projects, their deliveries and download packages."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from gateway.donation.projects import OPTIONS, ProjectError
from gateway.settings import ConfigError, load_settings

console = Console(stderr=True)
research_app = typer.Typer(help="Research donation: projects, deliveries, download packages.")
projects_app = typer.Typer(help="Research projects patients may donate studies to.")
research_app.add_typer(projects_app, name="projects")


def _run(action: Callable[[Any], Awaitable[Any]]) -> Any:
    from gateway.services import Services

    try:
        settings = load_settings()
    except ConfigError as exc:
        console.print(f"[red]configuration error:[/red] {exc}")
        raise typer.Exit(2) from None

    async def run() -> Any:
        services = Services.build(settings)
        await services.database.ensure_migrated()
        try:
            return await action(services)
        finally:
            await services.aclose()

    try:
        return asyncio.run(run())
    except ProjectError as exc:
        console.print(f"[red]refused:[/red] {escape(str(exc))}")
        raise typer.Exit(2) from None


@projects_app.command("add")
def add(
    name: Annotated[str, typer.Argument(help="The project's name, as patients see it.")],
    protocol_id: Annotated[str, typer.Option("--protocol-id", help="The protocol's id.")],
    archive_url: Annotated[
        str | None,
        typer.Option(
            "--archive-url",
            help="The research archive's DICOMweb base URL (STOW-RS to {url}/studies). "
            "Without it, the project downloads packages instead.",
        ),
    ] = None,
    archive_token: Annotated[
        str | None, typer.Option("--archive-token", help="A static bearer token for the archive.")
    ] = None,
    option: Annotated[
        list[str] | None,
        typer.Option("--option", help="An Annex E option, repeatable: " + ", ".join(OPTIONS)),
    ] = None,
    accept_burned_in: Annotated[
        bool, typer.Option("--accept-burned-in", help="Take images that may show burned-in text.")
    ] = False,
    client: Annotated[
        str | None,
        typer.Option(
            "--client",
            help="The project's research backend client (its client_id): it reads the "
            "de-identified copies under /research, and nothing else.",
        ),
    ] = None,
    description: Annotated[str, typer.Option("--description", help="A few words.")] = "",
) -> None:
    """Add a project; its pseudonym key is generated and kept in the database."""

    async def action(services: Any) -> Any:
        return await services.donation.projects.add(
            name=name,
            protocol_id=protocol_id,
            description=description,
            archive_url=archive_url,
            archive_token=archive_token,
            options=option or [],
            accept_burned_in=accept_burned_in,
            client_id=client,
        )

    made = _run(action)
    typer.echo(json.dumps(made.summary(), indent=2))


@projects_app.command("list")
def list_projects() -> None:
    """The projects (never their keys)."""

    async def action(services: Any) -> Any:
        return await services.donation.projects.all()

    table = Table("id", "name", "protocol", "delivery", "options", "client")
    for project in _run(action):
        table.add_row(
            project.id,
            escape(project.name),
            escape(project.protocol_id),
            escape(project.archive_url or "download"),
            ", ".join(project.options) or "(basic profile)",
            project.client_id or "",
        )
    Console().print(table)


@projects_app.command("remove")
def remove(project: Annotated[str, typer.Argument(help="The project's id.")]) -> None:
    """End a project: no more donations or deliveries; what it received stays listed."""

    async def action(services: Any) -> Any:
        return await services.donation.remove_project(project)

    if not _run(action):
        console.print(f"[red]no project {escape(project)}[/red]")
        raise typer.Exit(1)
    typer.echo(f"removed {project}")


@research_app.command("deliveries")
def deliveries(
    project: Annotated[str, typer.Argument(help="The project's id.")],
    withdrawn: Annotated[
        bool,
        typer.Option(
            "--withdrawn", help="Only what was delivered under donations since withdrawn."
        ),
    ] = False,
) -> None:
    """What a project received, by pseudonyms (JSON lines)."""

    async def action(services: Any) -> Any:
        if await services.donation.projects.get(project) is None:
            return None
        return await services.donation.deliveries.of_project(project, withdrawn_only=withdrawn)

    found = _run(action)
    if found is None:
        console.print(f"[red]no project {escape(project)}[/red]")
        raise typer.Exit(1)
    for delivery in found:
        typer.echo(json.dumps(delivery.for_project()))


@research_app.command("deliver")
def deliver() -> None:
    """One delivery pass now: queue a transfer job for each donated study not yet at its
    project's archive, then send what is due (as `gateway transfers run --once`)."""

    async def action(services: Any) -> Any:
        queued = await services.donation.deliver()
        worked = 0
        while await services.worker.run_once():
            worked += 1
        return queued, worked

    queued, worked = _run(action)
    typer.echo(f"queued {queued} deliveries; worked on {worked} transfer job(s)")


@research_app.command("package")
def package(
    project: Annotated[str, typer.Argument(help="The project's id.")],
    out: Annotated[Path, typer.Argument(help="The ZIP file to write.")],
) -> None:
    """Write the project's donated studies, de-identified, into a ZIP file."""

    async def action(services: Any) -> Any:
        found = await services.donation.projects.get(project)
        if found is None:
            return None
        written = 0
        with out.open("wb") as file:
            async for piece in await services.donation.package(found):
                file.write(piece)
                written += len(piece)
        return written

    written = _run(action)
    if written is None:
        console.print(f"[red]no project {escape(project)}[/red]")
        raise typer.Exit(1)
    typer.echo(f"wrote {written} bytes to {out}")


def register(app: typer.Typer) -> None:
    app.add_typer(research_app, name="research")
