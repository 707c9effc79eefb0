"""``gateway transfers list | show | run``: pushes by STOW-RS, for staff and operators."""

from __future__ import annotations

import asyncio
import json
import signal
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from gateway.settings import ConfigError, Settings, load_settings
from gateway.store.models import TransferJob, as_utc

console = Console(stderr=True)
transfers_app = typer.Typer(
    help=(
        "Pushes of studies to organizations by STOW-RS: their progress and final status "
        "(done, partial, failed with the reason, cancelled), and the worker that sends them."
    ),
    no_args_is_help=True,
)


def _settings() -> Settings:
    try:
        return load_settings()
    except ConfigError as exc:
        console.print(f"[red]configuration error:[/red] {exc}")
        raise typer.Exit(2) from None


def describe(job: TransferJob) -> dict[str, Any]:
    return {
        "id": job.id,
        "to": f"{job.target_kind}/{job.target_id}",
        "send": job.send_id,
        "patient": job.patient_fhir_id,
        "studies": list(job.studies or []),
        "transform": job.transform,
        "status": job.status,
        "sent": job.sent,
        "refused": job.failed,
        "total": job.total,
        "tries": job.attempts,
        "last_error": job.last_error,
        "next_try": as_utc(job.next_try_at).isoformat(timespec="seconds"),
        "created": as_utc(job.created_at).isoformat(timespec="seconds"),
        "finished": as_utc(job.finished_at).isoformat(timespec="seconds")
        if job.finished_at
        else None,
    }


def _jobs(patient: str | None, limit: int) -> list[dict[str, Any]]:
    from gateway.store.database import Database
    from gateway.transfers.queue import TransferQueue

    settings = _settings()

    async def load() -> list[dict[str, Any]]:
        database = Database(settings.effective_database_url)
        try:
            await database.ensure_migrated()
            queue = TransferQueue(database.sessions)
            return [describe(j) for j in await queue.jobs(patient=patient, limit=limit)]
        finally:
            await database.dispose()

    return asyncio.run(load())


@transfers_app.command("list")
def transfers_list(
    patient: Annotated[str | None, typer.Option(help="Only this patient's (FHIR id).")] = None,
    limit: Annotated[int, typer.Option(min=1, max=10_000, help="At most this many.")] = 200,
    as_json: Annotated[bool, typer.Option("--json", help="JSON instead of a table.")] = False,
) -> None:
    """Pushes, newest first, with progress (instances stored / total) and status."""
    jobs = _jobs(patient, limit)
    if as_json:
        typer.echo(json.dumps(jobs, indent=2))
        return
    table = Table("id", "to", "status", "stored / total", "refused", "tries", "last error")
    for job in jobs:
        colour = {"done": "green", "partial": "yellow", "failed": "red"}.get(job["status"], "")
        status = f"[{colour}]{job['status']}[/{colour}]" if colour else job["status"]
        table.add_row(
            job["id"],
            job["to"],
            status,
            f"{job['sent']} / {job['total']}",
            str(job["refused"]),
            str(job["tries"]),
            job["last_error"],
        )
    Console().print(table)


@transfers_app.command("run")
def transfers_run(
    once: Annotated[
        bool, typer.Option("--once", help="Work until no push is due, then stop.")
    ] = False,
) -> None:
    """Run a transfer worker in the foreground (besides, or instead of, the one in
    `gateway serve`; any number may run on one database)."""
    from gateway.services import Services

    settings = _settings()

    async def run() -> int:
        services = Services.build(settings)
        await services.database.ensure_migrated()
        worked = 0
        try:
            if once:
                while await services.worker.run_once():
                    worked += 1
                return worked
            loop = asyncio.get_running_loop()
            stop = asyncio.Event()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, stop.set)
            services.worker.start()
            console.print("transfer worker running; Ctrl-C stops it")
            await stop.wait()
            return 0
        finally:
            await services.aclose()

    worked = asyncio.run(run())
    if once:
        console.print(f"worked on {worked} push(es)")


def register(app: typer.Typer) -> None:
    app.add_typer(transfers_app, name="transfers")
