"""``gateway deid IN_DIR OUT_DIR``: de-identify a folder of DICOM files for one project."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Annotated

import typer
from pydicom import dcmread
from pydicom.errors import InvalidDicomError
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from gateway.research.annex_e import Option
from gateway.research.deid import Deidentified, Profile, ProfileError, deidentify
from gateway.research.pseudonyms import ProjectKey, ProjectKeyError

console = Console(stderr=True)
# Clean Graphics is in the table but the engine refuses it (curves and overlays are removed).
_BY_NAME = {o.cli_name: o for o in Option if o is not Option.CLEAN_GRAPHICS}


def deid(
    in_dir: Annotated[Path, typer.Argument(help="Folder of DICOM files (searched recursively).")],
    out_dir: Annotated[Path, typer.Argument(help="Where the de-identified files go.")],
    project_key_file: Annotated[
        Path,
        typer.Option(
            "--project-key-file",
            help="The project's secret (at least 32 bytes): same key, same pseudonyms.",
        ),
    ],
    option: Annotated[
        list[str] | None,
        typer.Option(
            "--option",
            help="An Annex E option, repeatable: " + ", ".join(_BY_NAME) + ".",
        ),
    ] = None,
    accept_burned_in: Annotated[
        bool,
        typer.Option("--accept-burned-in", help="Keep images that may show burned-in annotation."),
    ] = False,
) -> None:
    """De-identify DICOM files (PS3.15 Annex E Basic Profile and the chosen options)."""
    unknown = [name for name in option or [] if name not in _BY_NAME]
    if unknown:
        console.print(f"[red]unknown option:[/red] {escape(', '.join(unknown))}")
        raise typer.Exit(2)
    try:
        key = ProjectKey.from_file(project_key_file)
        profile = Profile(frozenset(_BY_NAME[n] for n in option or []), accept_burned_in)
    except (OSError, ProjectKeyError, ProfileError) as exc:
        console.print(f"[red]cannot start:[/red] {escape(str(exc))}")
        raise typer.Exit(2) from None
    if not in_dir.is_dir():
        console.print(f"[red]no such folder:[/red] {escape(str(in_dir))}")
        raise typer.Exit(2)
    files = sorted(p for p in in_dir.rglob("*") if p.is_file())
    written, excluded, failed = 0, Counter[str](), dict[str, str]()
    with _progress() as progress:
        task = progress.add_task("De-identifying", total=len(files))
        for path in files:
            progress.advance(task)
            try:
                dataset = dcmread(path)
            except (InvalidDicomError, ValueError, EOFError, OSError):
                failed[str(path)] = "not a readable DICOM Part 10 file"
                continue
            result = deidentify(dataset, key, profile)
            if not isinstance(result, Deidentified):
                excluded[result.reason] += 1
                continue
            copy = result.dataset
            target = out_dir / str(copy.get("StudyInstanceUID", "study"))
            target = target / str(copy.get("SeriesInstanceUID", "series"))
            target.mkdir(parents=True, exist_ok=True)
            name = f"{copy.get('SOPInstanceUID', path.stem)}.dcm"
            copy.save_as(target / name, enforce_file_format=True)
            written += 1
    console.print(f"de-identified {written} of {len(files)} files into {escape(str(out_dir))}")
    for reason, count in sorted(excluded.items()):
        console.print(f"excluded {count}: {escape(reason)}", soft_wrap=True)
    for name, reason in sorted(failed.items()):
        console.print(f"[red]failed[/red] {escape(name)}: {reason}", soft_wrap=True)
    if failed:
        raise typer.Exit(1)


def _progress() -> Progress:
    return Progress(
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=console,
    )


def register(app: typer.Typer) -> None:
    app.command("deid")(deid)
