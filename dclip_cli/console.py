"""Rich consoles and progress adapters for the CLI.

Results go to ``out`` (stdout); progress, logs and warnings go to ``err`` (stderr). The library never imports this
module: it reports progress as events (:mod:`dclip_cli.progress`), which ``dclip_cli.cli.display`` renders.
"""

from __future__ import annotations

from typing import Any

from rich.console import Console
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


class _LabelColumn(ProgressColumn):
    """The task's label with its status text (``12/40``, ``3.1/455.0 MB``, the loss) on a second line, so that a
    row fits 80 columns without cutting either."""

    def render(self, task: Task) -> Text:
        text = Text.from_markup(task.description)
        status = task.fields.get("status", "")
        if status:
            text.append("\n")
            text.append_text(Text.from_markup(status, style="dim"))
        return text


def make_progress() -> Progress:
    """A Rich ``Progress`` on stderr: spinner, label (with the status text, such as ``12/40`` or ``3.1/455.0 MB``,
    below it), bar, percentage, elapsed and remaining time. The label folds rather than being cut and the times
    never shrink, so the display stays readable in an 80-column terminal."""
    columns: list[Any] = [
        SpinnerColumn(table_column=Column(no_wrap=True, width=1)),
        _LabelColumn(table_column=Column(ratio=3, overflow="fold")),
        BarColumn(bar_width=None, table_column=Column(ratio=1, min_width=5)),
        TaskProgressColumn(table_column=Column(no_wrap=True, min_width=4, justify="right")),
        TimeElapsedColumn(table_column=Column(no_wrap=True, min_width=7)),
        TimeRemainingColumn(table_column=Column(no_wrap=True, min_width=7)),
    ]
    return Progress(*columns, console=err, disable=_quiet, transient=False, expand=True)
