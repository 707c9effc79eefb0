"""Sending DICOM files to the archive (STOW-RS), for `gateway import` and the demo."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from pydicom import Dataset, dcmread
from pydicom.errors import InvalidDicomError
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from gateway.dicomweb.upstream import Upstream
from gateway.errors import GatewayError

IMPORT_BATCH = 16


@dataclass
class ImportReport:
    stored: int = 0
    failed: dict[str, str] = field(default_factory=dict)


def dicom_files(paths: Sequence[Path]) -> Iterator[Path]:
    for path in paths:
        if path.is_dir():
            yield from (p for p in sorted(path.rglob("*")) if p.is_file())
        else:
            yield path


async def import_files(
    upstream: Upstream,
    files: Sequence[Path],
    progress: Progress | None = None,
    edit: Callable[[Dataset], None] | None = None,
) -> ImportReport:
    """STOW-RS each readable DICOM file, in small batches; collect every failure.
    ``edit`` changes each dataset before it is sent (the patient ID reconciled)."""
    report = ImportReport()
    task = progress.add_task("Importing", total=len(files)) if progress else None
    batch: list[tuple[Path, Dataset]] = []

    async def flush() -> None:
        if not batch:
            return
        try:
            result = await upstream.store_instances([ds for _, ds in batch])
            report.stored += len(result.stored)
            by_uid = {str(ds.SOPInstanceUID): path for path, ds in batch}
            for uid, reason in result.failed.items():
                report.failed[str(by_uid.get(uid, uid))] = reason
        except GatewayError as exc:
            for path, _ in batch:
                report.failed[str(path)] = exc.message
        if progress and task is not None:
            progress.advance(task, len(batch))
        batch.clear()

    for path in files:
        try:
            dataset = dcmread(path)
            if "SOPInstanceUID" not in dataset or not getattr(dataset, "file_meta", None):
                raise InvalidDicomError("no SOP Instance UID or file meta information")
            if edit is not None:
                edit(dataset)
            batch.append((path, dataset))
        except (InvalidDicomError, ValueError, EOFError):
            report.failed[str(path)] = "not a DICOM Part 10 file"
            if progress and task is not None:
                progress.advance(task)
        except OSError as exc:
            report.failed[str(path)] = f"cannot read it ({exc.strerror or exc})"
            if progress and task is not None:
                progress.advance(task)
        if len(batch) >= IMPORT_BATCH:
            await flush()
    await flush()
    return report


def progress_bar(console: Console) -> Progress:
    return Progress(
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=False,
    )
