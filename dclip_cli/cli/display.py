"""The one display of dclip's progress events (:mod:`dclip_cli.progress`) on stderr.

Every command hands a :class:`Display` to the library as its ``progress`` callback: messages become lines (warnings
in yellow, shown even with ``--quiet``), and each task label gets one bar, created when its first event arrives, so a
cached download or a skipped phase shows nothing.
"""

from __future__ import annotations

from typing import Any

from rich.markup import escape

from dclip_cli import console
from dclip_cli.progress import Event


def _megabytes(done: float | None, total: float | None) -> str:
    text = f"{(done or 0) / 1e6:.1f}"
    return text + (f"/{total / 1e6:.1f}" if total else "") + " MB"


class Display:
    """A Rich progress display fed with :class:`~dclip_cli.progress.Event` records (use as a context manager)."""

    def __init__(self) -> None:
        self.progress = console.make_progress()
        self.tasks: dict[str, Any] = {}

    def __enter__(self) -> Display:
        self.progress.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.__exit__(*exc)  # type: ignore[arg-type]

    def print(self, text: str) -> None:
        """A line above the bars (hidden by ``--quiet``)."""
        if not console.is_quiet():
            self.progress.console.print(text, highlight=False)

    def __call__(self, event: Event) -> None:
        if event.kind == "warning":
            text = f"{console.prefix()}[yellow]Warning:[/yellow] {escape(event.message)}"
            self.progress.console.print(text, highlight=False)
        elif event.message:
            self.print(escape(event.message))
        if event.done is None:
            return
        if event.kind == "download":
            self._bar(
                f"download:{event.label}",
                f"Downloading {event.label}",
                event,
                _megabytes(event.done, event.total),
            )
        else:
            self._bar(event.label, event.label, event, event.status)

    def _bar(self, key: str, description: str, event: Event, status: str) -> None:
        task = self.tasks.get(key)
        if task is None:
            task = self.tasks[key] = self.progress.add_task(escape(description), total=event.total, status="")
        self.progress.update(task, completed=event.done, total=event.total, status=escape(status))
