"""Rich consoles and progress adapters for the CLI.

Results go to ``out`` (stdout); progress, logs and warnings go to ``err`` (stderr). The library never imports this
module: it reports progress as events (:mod:`dclip_cli.progress`), which ``dclip_cli.cli.display`` renders.
"""

from __future__ import annotations

import os
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    Progress,
    SpinnerColumn,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)

_quiet = False
_verbose = False
_prefix = ""  # "[rank R] " on the ranks other than 0 of a torchrun job


def configure(*, quiet: bool = False, verbose: bool = False) -> None:
    """Set the verbosity chosen by the global ``--quiet`` / ``--verbose`` options."""
    global _quiet, _verbose
    _quiet, _verbose = quiet or bool(_prefix), verbose


def configure_rank(rank: int) -> None:
    """Under torchrun: ranks other than 0 print no results and no progress, only warnings and errors, each
    prefixed with ``[rank R]`` (rank 0 prints as a single process does)."""
    global out, _quiet, _prefix
    if rank == 0:
        return
    _prefix, _quiet = f"[rank {rank}] ", True
    out = Console(file=open(os.devnull, "w"), soft_wrap=True)  # noqa: SIM115 - lives as long as the process


def prefix() -> str:
    """What starts this process's warning and error lines: ``"[rank R] "`` on torchrun's other ranks, else ``""``."""
    return _prefix


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
    err.print(f"{_prefix}[yellow]Warning:[/yellow] {message}", highlight=False)


def make_progress() -> Progress:
    """A Rich ``Progress`` on stderr: description, bar, percentage, elapsed and remaining time, and a status text
    (the display puts counts such as ``12/40`` or ``3.1/455.0 MB`` there)."""
    columns: list[Any] = [
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        TaskProgressColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[status]}"),
    ]
    return Progress(*columns, console=err, disable=_quiet, transient=False)
