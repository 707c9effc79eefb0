"""The ``gateway`` command: serve, demo, import, db, deid."""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.markup import escape
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from gateway import __version__
from gateway.auth import cli as auth_cli
from gateway.donation import cli as donation_cli
from gateway.importing import ImportReport, dicom_files, import_files, progress_bar
from gateway.organizations import cli as orgs_cli
from gateway.outages import outage
from gateway.research import cli as research_cli
from gateway.settings import ConfigError, Settings, load_settings
from gateway.store.database import Database, DatabaseNotMigrated
from gateway.transfers import cli as transfers_cli

if TYPE_CHECKING:
    pass

app = typer.Typer(
    help="Image Share Gateway: FHIR R4 and DICOMweb in front of a PACS, patients in control.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
db_app = typer.Typer(help="Database schema.", no_args_is_help=True)
app.add_typer(db_app, name="db")
auth_cli.register(app)
research_cli.register(app)
donation_cli.register(app)
orgs_cli.register(app)
transfers_cli.register(app)
console = Console(stderr=True)
IMPORT_BATCH = 16
T = TypeVar("T")


def _settings() -> Settings:
    try:
        return load_settings()
    except ConfigError as exc:
        console.print(f"[red]configuration error:[/red] {exc}")
        raise typer.Exit(2) from None


def _version(value: bool) -> None:
    if value:
        typer.echo(f"gateway {__version__}")
        raise typer.Exit()


@app.callback()
def main_options(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Show the version."),
    ] = False,
) -> None:
    """Configuration comes from GATEWAY_* environment variables or a .env file."""


# -- serve ---------------------------------------------------------------------


def create_app_from_environment() -> Any:
    """The uvicorn factory: each worker reads the same environment."""
    from gateway.app import create_app

    settings = load_settings()
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    return create_app(settings)


def _prepare_database(settings: Settings, migrate: bool) -> None:
    async def run() -> None:
        database = Database(settings.effective_database_url)
        try:
            if migrate:
                await database.upgrade()
            await database.ensure_migrated()
        finally:
            await database.dispose()

    try:
        _sqlite_opens(settings.effective_database_url)
        asyncio.run(run())
    except DatabaseNotMigrated as exc:
        console.print(f"[red]cannot start:[/red] {exc}")
        raise typer.Exit(2) from None
    except Exception as exc:
        _stop_if_unreachable(settings, exc, "cannot start")
        raise


def _stop_if_unreachable(settings: Settings, exc: Exception, what: str) -> None:
    """One line and exit status 2 when ``exc`` says the database cannot be reached."""
    if outage(exc) is None:
        return
    console.print(
        f"[red]{what}:[/red] cannot reach the database at "
        f"{escape(masked_url(settings.effective_database_url))} ({escape(_reason(exc))})",
        soft_wrap=True,
    )
    raise typer.Exit(2) from None


def _sqlite_opens(url: str) -> None:
    """Open a SQLite file once, synchronously: when aiosqlite fails to, its worker thread
    outlives the event loop and prints a traceback of its own after our one line."""
    if not url.startswith("sqlite"):
        return
    path = make_url(url).database
    if path and path != ":memory:":
        Path(path).parent.mkdir(parents=True, exist_ok=True)  # as Database() does
        sqlite3.connect(path).close()


def masked_url(url: str) -> str:
    """The database URL with its password hidden, for messages and logs."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return "(an unreadable URL)"


def _reason(exc: BaseException) -> str:
    # The driver's own words, without SQLAlchemy's "Background on this error" line.
    cause = exc.__cause__ or exc
    text = str(cause).splitlines()[0] if str(cause) else type(cause).__name__
    return text[:200]


def server_options(settings: Settings, forwarded_allow_ips: str | None) -> dict[str, Any]:
    """uvicorn's options for the client address: X-Forwarded-* only from proxies named."""
    trusted = (
        forwarded_allow_ips if forwarded_allow_ips is not None else settings.forwarded_allow_ips
    ).strip()
    if not trusted:
        # No proxy trusted: the address is the peer's, whatever X-Forwarded-For says.
        return {"proxy_headers": False}
    return {"proxy_headers": True, "forwarded_allow_ips": trusted}


def _serve(
    settings: Settings, host: str, port: int, workers: int, forwarded_allow_ips: str | None = None
) -> None:
    import uvicorn

    uvicorn.run(
        "gateway.cli:create_app_from_environment",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        log_level=settings.log_level,
        server_header=False,
        **server_options(settings, forwarded_allow_ips),
    )


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.", min=1, max=65535)] = 8080,
    workers: Annotated[int, typer.Option(help="Worker processes.", min=1, max=64)] = 1,
    migrate: Annotated[
        bool, typer.Option("--migrate", help="Apply database migrations before serving.")
    ] = False,
    forwarded_allow_ips: Annotated[
        str | None,
        typer.Option(
            "--forwarded-allow-ips",
            help=(
                "Comma-separated addresses or networks of the reverse proxies whose "
                "X-Forwarded-For and X-Forwarded-Proto are believed (* for any). "
                "Default: GATEWAY_FORWARDED_ALLOW_IPS, empty: none."
            ),
        ),
    ] = None,
) -> None:
    """Serve the gateway (FHIR at /fhir)."""
    settings = _settings()
    _prepare_database(settings, migrate)
    _serve(settings, host, port, workers, forwarded_allow_ips)


# -- import --------------------------------------------------------------------


@app.command("import")
def import_command(
    paths: Annotated[
        list[Path] | None, typer.Argument(help="DICOM files or folders (searched recursively).")
    ] = None,
    share: Annotated[
        str | None,
        typer.Option(help="Import what a share link offers (its recipient's view); needs --pin."),
    ] = None,
    pin: Annotated[str | None, typer.Option(help="The share link's 6-digit PIN.")] = None,
    from_site: Annotated[
        str | None,
        typer.Option(
            "--from-site",
            help="Import what a sending gateway lets this site's backend client see (its "
            "base URL); needs --client and --key.",
        ),
    ] = None,
    client: Annotated[
        str | None, typer.Option(help="Our backend client_id at the sending site.")
    ] = None,
    key: Annotated[
        Path | None,
        typer.Option(help="Our backend client's private key (JWK, JWKS or PEM file).", exists=True),
    ] = None,
    patient_id: Annotated[
        str | None,
        typer.Option(
            "--patient-id",
            help="The patient's local ID: it replaces the outside PatientID, which is kept "
            "(with its issuer) in OtherPatientIDsSequence.",
        ),
    ] = None,
    issuer: Annotated[
        str, typer.Option(help="The local IssuerOfPatientID that goes with --patient-id.")
    ] = "",
) -> None:
    """Store DICOM files, a share link's studies, or a sending site's studies in the
    configured archive (STOW-RS), with a progress bar."""
    import tempfile

    from gateway.receiving import ReceiveError, fetch_from_site, fetch_share, reconcile

    settings = _settings()
    sources = sum(bool(x) for x in (paths, share, from_site))
    if sources != 1:
        console.print("[red]give files or folders, or --share, or --from-site (one of them)[/red]")
        raise typer.Exit(2)
    if share and not pin:
        console.print("[red]--share needs --pin[/red]")
        raise typer.Exit(2)
    if from_site and not (client and key):
        console.print("[red]--from-site needs --client and --key[/red]")
        raise typer.Exit(2)
    if patient_id is None and not paths:
        console.print(
            "[yellow]no --patient-id: the outside patient IDs are kept as they are[/yellow]"
        )
    edit = (lambda ds: reconcile(ds, patient_id, issuer)) if patient_id else None
    with tempfile.TemporaryDirectory(prefix="gateway-import-") as scratch:
        if paths:
            missing = [str(p) for p in paths if not p.exists()]
            if missing:
                console.print(f"[red]no such file or folder:[/red] {', '.join(missing)}")
                raise typer.Exit(2)
            files = list(dicom_files(paths))
        else:
            folder = Path(scratch)
            try:
                with progress_bar(console) as progress:
                    task = progress.add_task("Fetching", total=None)

                    def advance(done: int, total: int | None) -> None:
                        progress.update(task, completed=done, total=total)

                    if share:
                        fetch_share(share, pin or "", folder, advance)
                    else:
                        assert from_site and client and key
                        fetch_from_site(from_site, client, key, folder, advance)
            except ReceiveError as exc:
                console.print(f"[red]cannot import:[/red] {escape(str(exc))}")
                raise typer.Exit(1) from None
            files = sorted(folder.glob("*.dcm"))

        async def run() -> ImportReport:
            from gateway.services import create_upstream

            upstream = create_upstream(settings)
            try:
                with progress_bar(console) as progress:
                    return await import_files(upstream, files, progress, edit)
            finally:
                await upstream.aclose()

        report = asyncio.run(run())
    target = settings.dicomweb_url or settings.dicom_dir
    console.print(f"stored {report.stored} of {len(files)} files in {target}")
    if patient_id:
        console.print(f"patient ID reconciled to {escape(patient_id)}")
    if report.failed:
        # One plain line per failure: easy to read, grep and feed back to `import`.
        for name, reason in sorted(report.failed.items()):
            console.print(f"[red]failed[/red] {escape(name)}: {escape(reason)}", soft_wrap=True)
        console.print(f"{len(report.failed)} of {len(files)} files failed")
        raise typer.Exit(1)


# -- db ------------------------------------------------------------------------


def _on_database(action: Callable[[Database], Awaitable[T]]) -> T:
    """Run one coroutine against the configured database, then close it."""
    settings = _settings()

    async def run() -> T:
        database = Database(settings.effective_database_url)
        try:
            return await action(database)
        finally:
            await database.dispose()

    try:
        _sqlite_opens(settings.effective_database_url)
        return asyncio.run(run())
    except Exception as exc:
        _stop_if_unreachable(settings, exc, "failed")
        raise


@db_app.command("upgrade")
def db_upgrade() -> None:
    """Apply all database migrations."""

    async def upgrade(database: Database) -> tuple[str | None, str | None]:
        before = await database.current_revision()
        await database.upgrade()
        return before, await database.current_revision()

    before, after = _on_database(upgrade)
    console.print(f"database at revision {after} (was {before or 'empty'})")


@db_app.command("current")
def db_current() -> None:
    """Show the database revision and the one this version needs."""

    async def revisions(database: Database) -> tuple[str | None, str | None]:
        return await database.current_revision(), await database.head_revision()

    current, head = _on_database(revisions)
    typer.echo(f"current: {current or 'empty'}\nneeded:  {head}")


# -- demo ----------------------------------------------------------------------


@app.command()
def demo(
    port: Annotated[int, typer.Option(help="TCP port.", min=1, max=65535)] = 8080,
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    no_serve: Annotated[
        bool, typer.Option("--no-serve", help="Seed and describe, but do not serve.")
    ] = False,
) -> None:
    """Seed the store with synthetic studies (when empty), write demo.json, and serve."""
    import os

    if "GATEWAY_PUBLIC_URL" not in os.environ:
        os.environ["GATEWAY_PUBLIC_URL"] = f"http://{host}:{port}"
    from gateway import demo as demo_seeding  # the whole service stack: only when asked

    settings = _settings()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    summary = asyncio.run(demo_seeding.seed_demo(settings))
    target = settings.data_dir / "demo.json"
    target.write_text(json.dumps(summary, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    typer.echo(json.dumps(summary, indent=2, ensure_ascii=False))
    console.print(f"[green]demo ready[/green]: {summary['fhir_base']} (details in {target})")
    for line in demo_seeding.demo_lines(summary):
        console.print(line, soft_wrap=True)
    if not no_serve:
        _serve(settings, host, port, 1)


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)
