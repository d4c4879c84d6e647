"""Pieces the tabs of ``dclip ui`` share: the page context, error display, progress binding and formatting.

Nothing here calls dclip's library; every action goes through :mod:`dclip_cli.ui.backend`.
"""

from __future__ import annotations

import functools
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gradio as gr

from dclip_cli.ui import backend

#: Gradio concurrency ids: device jobs run one at a time; the library's file operations one at a time
DEVICE = "device"
LIBRARY = "library"
AUTO = "auto"

CSS = """
#dclip-title h1 { margin-bottom: 0; }
.dclip-status { min-height: 1.5em; }
/* results fill their box whatever their pixel size (the models work at 256x256, tests at 32x32) */
.dclip-result img { width: 100% !important; height: 100% !important; object-fit: contain; }
"""

# -- helpers ------------------------------------------------------------------------------------------------------


def error(exc: BaseException) -> gr.Error:
    if isinstance(exc, backend.UserError):
        text = exc.message + (f" Hint: {exc.hint}" if exc.hint else "")
        return gr.Error(text, duration=None, print_exception=False, title="dclip")
    if isinstance(exc, backend.Cancelled):
        return gr.Error(str(exc), duration=None, print_exception=False, title="Cancelled")
    return gr.Error(
        f"Unexpected error: {type(exc).__name__}: {exc} Hint: this is a bug in dclip; run 'dclip ui' with "
        "DCLIP_DEBUG=1 and report the traceback it prints.",
        duration=None,
        print_exception=False,
        title="dclip",
    )


def guard(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Show a failure as dclip's message and hint (``gr.Error``)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except gr.Error:
            raise
        except Exception as exc:
            debug(exc)
            raise error(exc) from None

    return wrapper


def debug(exc: BaseException) -> None:
    if os.environ.get("DCLIP_DEBUG", "") not in ("", "0"):
        import sys
        import traceback

        sys.stderr.write("".join(traceback.format_exception(exc)))


def bind(progress: Any) -> backend.OnEvent:
    """dclip's progress events -> Gradio's progress bar."""

    def on_event(event: backend.ProgressEvent) -> None:
        if event.kind == "progress" and event.total:
            unit = "bytes" if event.detail == "bytes" else "steps"
            progress((int(event.done), int(event.total)), desc=event.label, unit=unit)
        elif event.kind == "status":
            progress(None, desc=event.label)

    return on_event


def file_paths(files: Any) -> list[str]:
    """File component values (a path, a list of paths, or None) as a list of paths."""
    if files is None:
        return []
    if isinstance(files, (str, Path)):
        return [str(files)]
    out = []
    for f in files:
        out.append(str(f if isinstance(f, (str, Path)) else getattr(f, "name", f)))
    return out


def session_id(request: gr.Request | None) -> str:
    sid = getattr(request, "session_hash", None) if request is not None else None
    return str(sid or "anonymous")


def messages(out: backend.RunOutput) -> str:
    lines = [f"**Domain:** {out.domain}" + confidence(out.detection)]
    lines += [f"- {m}" for m in out.messages]
    lines += [f"- Skipped {name}: {why}" for name, why in out.skipped]
    lines.append(f"- Written to `{out.folder}`")
    return "\n".join(lines)


def confidence(detection: dict[str, Any] | None) -> str:
    if not detection or detection.get("method") != "clip":
        return ""
    return f" (detected by CLIP, {detection['confidence']:.0%} confidence)"


def metrics(out: backend.RunOutput) -> dict[str, dict[str, float]]:
    return {item.caption: {k: round(v, 4) for k, v in item.metrics.items()} for item in out.items}


def downloads(out: backend.RunOutput) -> list[str]:
    files: list[str] = []
    for item in out.items:
        files += [str(item.image), str(item.sidecar)]
        if item.compare is not None:
            files.append(str(item.compare))
    return files


def edit_names(info: backend.PresetInfo | None) -> list[str]:
    return [e.key for e in info.edits] if info is not None else []


def describe_edits(info: backend.PresetInfo | None) -> str:
    if info is None:
        return ""
    named = ", ".join(f"`{e.key}`" for e in info.edits) or "none"
    return (
        f"Named edits of **{info.name}**: {named}. Or type any target text (the source text is "
        f"'{info.source_text}')."
    )


@dataclass
class Page:
    """What every tab of the page needs: the settings of ``dclip ui``, the presets, and the shared helpers.

    Args:
        settings: the settings of every job (``dclip ui``'s flags).
        presets: the installed presets by name.
        roots: where uploaded files may come from (Gradio's upload folder and the sample image).
        default_domain: the domain preselected in the Edit, Mix and Translate tabs (``auto``: CLIP detection).
        ft_default: the domain preselected in the Fine-tune tab.
        jobs: the cancel flags of running fine-tuning jobs, by browser session.
    """

    settings: backend.Settings
    presets: dict[str, backend.PresetInfo]
    roots: list[Path]
    default_domain: str
    ft_default: str | None
    jobs: dict[str, threading.Event] = field(default_factory=dict)

    @property
    def names(self) -> list[str]:
        return list(self.presets)

    @property
    def domain_choices(self) -> list[tuple[str, str]]:
        return [("auto (detect with CLIP)", AUTO)] + [(n, n) for n in self.presets]

    def preset_of(self, name: str | None, detected: str | None = None) -> backend.PresetInfo | None:
        """The chosen preset, else the detected one, else the only one installed."""
        if name and name != AUTO:
            return self.presets.get(name)
        names = self.names
        return self.presets.get(detected or "") or (self.presets[names[0]] if len(names) == 1 else None)

    def stage(self, files: Any, request: gr.Request | None) -> list[Path]:
        """Copy the uploads into this browser session's folder (checked for size and dimensions)."""
        return backend.stage_uploads(
            self.settings, session_id(request), file_paths(files), allowed_roots=self.roots
        )


class Eta:
    """Estimated time left of the current progress label, from its rate so far."""

    def __init__(self) -> None:
        self.label = ""
        self.start = 0.0
        self.first = 0.0

    def describe(self, event: backend.ProgressEvent) -> str:
        now = time.monotonic()
        if event.label != self.label:
            self.label, self.start, self.first = event.label, now, event.done
        if not event.total:
            return f"{event.label}…"
        if event.detail == "bytes":
            text = f"{event.label}: {event.done / 1e6:.1f}/{event.total / 1e6:.1f} MB"
        else:
            text = f"{event.label}: {int(event.done)}/{int(event.total)}"
        rate_done = event.done - self.first
        if rate_done > 0 and now > self.start:
            left = (now - self.start) / rate_done * (event.total - event.done)
            text += f", about {seconds(left)} left"
        if event.detail and event.detail != "bytes":
            text += f" ({event.detail})"
        return text


def seconds(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def human(size: int) -> str:
    value = float(size)
    for unit in ("B", "kB", "MB", "GB"):
        if value < 1000 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{size} B"  # pragma: no cover
