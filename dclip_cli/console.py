"""Rich consoles and progress adapters for the CLI.

Results go to ``out`` (stdout); progress, logs and warnings go to ``err`` (stderr). The library never imports this
module: it reports progress through plain callbacks, which the adapters below turn into Rich displays.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)

_quiet = False
_verbose = False


def configure(*, quiet: bool = False, verbose: bool = False) -> None:
    """Set the verbosity chosen by the global ``--quiet`` / ``--verbose`` options."""
    global _quiet, _verbose
    _quiet, _verbose = quiet, verbose


def is_quiet() -> bool:
    return _quiet


def info(message: str) -> None:
    """A status line on stderr (hidden by ``--quiet``)."""
    if not _quiet:
        err.print(message, highlight=False)


def debug(message: str) -> None:
    """A detail line on stderr, shown only with ``--verbose``."""
    if _verbose and not _quiet:
        err.print(f"[dim]{message}[/dim]", highlight=False)


def warn(message: str) -> None:
    """A warning on stderr (shown even with ``--quiet``)."""
    err.print(f"[yellow]Warning:[/yellow] {message}", highlight=False)


def make_progress(*, transfer: bool = False) -> Progress:
    """A Rich ``Progress`` on stderr; ``transfer`` adds bytes, speed and ETA columns for downloads."""
    if transfer:
        columns: list[Any] = [
            TextColumn("[bold blue]{task.description}"),
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
        ]
    else:
        columns = [
            SpinnerColumn(),
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TaskProgressColumn(),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            TextColumn("{task.fields[status]}"),
        ]
    return Progress(*columns, console=err, disable=_quiet, transient=False)


@contextlib.contextmanager
def step_progress(description: str, total: int | None = None) -> Iterator[Callable[[dict[str, Any]], None]]:
    """Yield a ``callback(info)`` for the diffusion loops that advances one bar by one step per call.

    ``info`` may carry ``total`` (sets the bar length) and ``status`` (shown beside the bar).
    """
    with make_progress() as progress:
        task = progress.add_task(description, total=total, status="")

        def callback(info: dict[str, Any]) -> None:
            if info.get("total") is not None and progress.tasks[task].total != info["total"]:
                progress.update(task, total=info["total"])
            progress.update(task, advance=info.get("advance", 1), status=str(info.get("status", "")))

        yield callback


@contextlib.contextmanager
def download_progress(description: str) -> Iterator[Callable[[int, int | None], None]]:
    """Yield an ``on_progress(done_bytes, total_bytes_or_None)`` callback driving a download bar."""
    with make_progress(transfer=True) as progress:
        task = progress.add_task(description, total=None)

        def on_progress(done: int, total: int | None) -> None:
            progress.update(task, completed=done, total=total)

        yield on_progress
