"""Rich consoles and progress adapters for the CLI.

Results go to ``out`` (stdout); progress, logs and warnings go to ``err`` (stderr). The library never imports this
module: it reports progress as events (:mod:`dclip_cli.progress`), which ``dclip_cli.cli.display`` renders.
"""

from __future__ import annotations

import os
from typing import Any

from rich.console import Console, ConsoleOptions, RenderResult
from rich.measure import Measurement
from rich.progress import (
    BarColumn,
    Progress,
    ProgressColumn,
    SpinnerColumn,
    Task,
    TaskProgressColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Column
from rich.text import Text

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


class _LabelCell:
    """A label and its status text: on one line when both fit the cell, else the status on its own line below;
    a label longer than the cell wraps instead of being cut."""

    def __init__(self, label: Text, status: Text) -> None:
        self.label, self.status = label, status

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        if not self.status.plain:
            yield self.label
        elif self.label.cell_len + 2 + self.status.cell_len <= options.max_width:
            yield Text.assemble(self.label, "  ", self.status)
        else:
            yield Text.assemble(self.label, "\n", self.status)

    def __rich_measure__(self, console: Console, options: ConsoleOptions) -> Measurement:
        words = [*self.label.plain.split(), *self.status.plain.split()] or [""]
        longest = max(len(w) for w in words)
        full = self.label.cell_len + (2 + self.status.cell_len if self.status.plain else 0)
        return Measurement(min(longest, options.max_width), min(full, options.max_width))


class _LabelColumn(ProgressColumn):
    """The task's label followed by its status text (``12/40``, ``3.1/455.0 MB``, the loss), see :class:`_LabelCell`."""

    def render(self, task: Task) -> _LabelCell:  # type: ignore[override]
        status = task.fields.get("status", "")
        return _LabelCell(Text.from_markup(task.description), Text.from_markup(status, style="dim"))


def make_progress() -> Progress:
    """A Rich ``Progress`` on stderr: spinner, label and status text (such as ``12/40`` or ``3.1/455.0 MB``), bar,
    percentage, elapsed and remaining time. The label wraps rather than being cut and the times never shrink, so
    the display stays readable in an 80-column terminal."""
    columns: list[Any] = [
        SpinnerColumn(table_column=Column(no_wrap=True, width=1)),
        _LabelColumn(table_column=Column(ratio=3, overflow="fold")),
        BarColumn(bar_width=None, table_column=Column(ratio=1, min_width=5)),
        TaskProgressColumn(table_column=Column(no_wrap=True, min_width=4, justify="right")),
        TimeElapsedColumn(table_column=Column(no_wrap=True, min_width=7)),
        TimeRemainingColumn(table_column=Column(no_wrap=True, min_width=7)),
    ]
    return Progress(*columns, console=err, disable=_quiet, transient=False, expand=True)
