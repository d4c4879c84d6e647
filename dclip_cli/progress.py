"""The one progress protocol: what the library has to say, as events with a kind, a label and done/total.

Applications, the fine-tuning job and downloads never print. They send :class:`Event` records to a plain callback
(``progress=print`` works); the CLI renders them with Rich (``dclip_cli.cli.display``), the web UI binds them to its
progress bar, and library users may ignore them. :class:`Reporter` is the small helper the library uses to send
them. This module imports nothing heavy.

Kinds:

* ``info`` and ``warning``: a line of text in ``message``;
* ``progress``: ``done`` of ``total`` units of the task ``label`` (model calls, images, steps), ``status`` a short
  text shown beside the bar (the timestep, the loss);
* ``download``: ``done`` of ``total`` bytes of the file ``label``;
* ``output``: a result was written completely (``data``: the application's record of it, e.g. ``result``, an
  :class:`~dclip_cli.apps.pipeline.ImageResult`), so a caller stopped later still knows what was finished;
* fine-tuning adds ``step`` (one UNet call of training; ``done``/``total`` count the pair's steps), ``pair_start``,
  ``epoch_end`` and ``pair_end`` with their details in ``data``; each also carries ``done``/``total`` or a
  ``message``, so a display that knows only the generic kinds still shows them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

KINDS = ("info", "warning", "progress", "download", "output", "step", "pair_start", "epoch_end", "pair_end")


@dataclass(frozen=True)
class Event:
    """One thing the library reports.

    Args:
        kind: what happened (see the module docstring).
        label: the task a bar belongs to (``Inverting``, ``Fine-tuning smiling``) or the file being downloaded.
        done: units done so far (absolute, not an increment); ``None`` when not a measurable task.
        total: units in all, ``None`` when unknown.
        status: a short text for beside the bar.
        message: a line of text for ``info``, ``warning`` and the fine-tuning milestones.
        data: structured details (fine-tuning: epoch, losses, the pair, the run folder, ...).
    """

    kind: str
    label: str = ""
    done: float | None = None
    total: float | None = None
    status: str = ""
    message: str = ""
    data: Mapping[str, Any] = field(default_factory=dict)


ProgressCallback = Callable[[Event], None]


class Reporter:
    """Sends :class:`Event` records to ``callback`` (or nowhere when it is ``None``), keeping per-label counts so
    that library code can say "one more step" while the events always carry absolute ``done`` values.

    Args:
        callback: receives every event; it may raise ``KeyboardInterrupt`` to stop the work.
        prefix: put before every progress label (a fine-tuning run inside ``dclip edit`` uses ``"Fine-tuning: "``).
    """

    def __init__(self, callback: ProgressCallback | None = None, *, prefix: str = "") -> None:
        self.callback = callback
        self.prefix = prefix
        self._done: dict[str, float] = {}
        self._total: dict[str, float | None] = {}

    @classmethod
    def of(cls, progress: Reporter | ProgressCallback | None) -> Reporter:
        """``progress`` itself when it is a reporter, else a reporter around the callback."""
        return progress if isinstance(progress, Reporter) else cls(progress)

    def child(self, prefix: str) -> Reporter:
        """A reporter to the same callback whose progress labels start with ``prefix``."""
        return Reporter(self.callback, prefix=self.prefix + prefix)

    def emit(self, event: Event) -> None:
        if self.callback is not None:
            self.callback(event)

    def info(self, message: str) -> None:
        """A status line (which domain, which edit model, what was written)."""
        self.emit(Event("info", message=message))

    def warn(self, message: str) -> None:
        """Something the user should know that did not stop the work."""
        self.emit(Event("warning", message=message))

    def progress(
        self,
        label: str,
        *,
        advance: float = 1,
        done: float | None = None,
        total: float | None = None,
        status: str = "",
    ) -> None:
        """``advance`` more units of task ``label`` were done (or ``done`` in all); ``total`` sets its length."""
        key = self.prefix + label
        now = done if done is not None else self._done.get(key, 0) + advance
        self._done[key] = now
        if total is not None:
            self._total[key] = total
        self.emit(Event("progress", key, done=now, total=self._total.get(key), status=status))

    def done_of(self, label: str) -> float:
        """How many units of task ``label`` were reported so far."""
        return self._done.get(self.prefix + label, 0)

    def download(self, name: str) -> Callable[[int, int | None], None]:
        """An ``on_progress(done_bytes, total_bytes)`` function reporting the download of ``name``."""

        def on_progress(done: int, total: int | None) -> None:
            self.emit(Event("download", name, done=done, total=total))

        return on_progress


def collect(events: list[Event]) -> ProgressCallback:
    """A callback that appends every event to ``events`` (handy in tests and notebooks)."""
    return events.append
