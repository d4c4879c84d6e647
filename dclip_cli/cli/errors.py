"""Error translation at the CLI boundary: one table from exception type to exit code and hint.

Called once, in ``app.main()``. A :class:`DclipError` becomes one red line plus its hint on stderr and exit code 1;
``DCLIP_DEBUG=1`` adds the traceback. Usage errors keep Typer's exit code 2.
"""

from __future__ import annotations

import os
import sys
import traceback
from collections.abc import Callable

from dclip_cli.errors import DclipError

EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130
EXIT_TERMINATED = 143  # 128 + SIGTERM


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread by ``dclip``'s handler so that cleanup runs as for Ctrl-C (temporary files
    removed, partial downloads kept for resuming) before the process exits."""


def _raise_terminated(signum: int, frame: object) -> None:
    import signal

    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # a second SIGTERM ends the process at once
    raise Terminated()


def install_sigterm_handler() -> None:
    """Turn SIGTERM into :class:`Terminated` (main thread of the ``dclip`` process only)."""
    import signal
    import threading

    if threading.current_thread() is threading.main_thread() and hasattr(signal, "SIGTERM"):
        signal.signal(signal.SIGTERM, _raise_terminated)


def debug_enabled() -> bool:
    return os.environ.get("DCLIP_DEBUG", "") not in ("", "0")


def _format_dclip(exc: BaseException) -> tuple[str, str | None]:
    assert isinstance(exc, DclipError)
    return exc.message, exc.hint


def _format_memory(exc: BaseException) -> tuple[str, str | None]:
    return (
        f"Out of memory: {str(exc).splitlines()[0] if str(exc) else 'the device ran out of memory'}.",
        "Use a smaller --batch-size, --precision bf16/fp16, the efficient fine-tuning mode, or --device cpu.",
    )


def _format_os(exc: BaseException) -> tuple[str, str | None]:
    assert isinstance(exc, OSError)
    from dclip_cli.fileio import free_bytes, is_disk_full

    where = f" ({exc.filename})" if getattr(exc, "filename", None) else ""
    if is_disk_full(exc):
        free = free_bytes(exc.filename) if getattr(exc, "filename", None) else None
        left = f" {free / 1e6:.0f} MB are free there." if free is not None else ""
        return (
            f"The disk is full: {exc.strerror or exc}{where}.{left}",
            "Free some disk space and run the command again, or write elsewhere (-o, DCLIP_DATA, DCLIP_CACHE).",
        )
    return f"{exc.strerror or exc}{where}.", "Check the path and its permissions."


def _format_safetensors(exc: BaseException) -> tuple[str, str | None]:
    """safetensors' own error type (not an OSError): a damaged file, or a full disk while saving one."""
    from dclip_cli.fileio import is_disk_full

    if is_disk_full(exc):
        return (
            f"The disk is full: a .safetensors file could not be written ({exc}).",
            "Free some disk space and run the command again, or write elsewhere (-o, DCLIP_DATA, DCLIP_CACHE).",
        )
    return (
        f"A .safetensors file could not be read or written: {exc}.",
        "The file may be truncated or damaged; fetch, fine-tune or copy it again.",
    )


#: exception type -> formatter returning (message, hint); the first matching entry wins.
FORMATTERS: list[tuple[type[BaseException], Callable[[BaseException], tuple[str, str | None]]]] = [
    (DclipError, _format_dclip),
    (MemoryError, _format_memory),
    (OSError, _format_os),
]


def _is_cuda_oom(exc: BaseException) -> bool:
    return type(exc).__name__ == "OutOfMemoryError"


def report(exc: BaseException) -> int:
    """Print ``exc`` for a user and return the exit code."""
    from rich.markup import escape

    from dclip_cli import console, distributed

    who = escape(console.prefix() or distributed.log_prefix())  # "[rank R] " on torchrun's other ranks
    if isinstance(exc, KeyboardInterrupt):
        word = "Terminated" if isinstance(exc, Terminated) else "Interrupted"
        console.err.print(
            f"{who}[red]{word}.[/red] No half-written file was left behind (a partial download is kept and resumed "
            "next time)."
        )
        return EXIT_TERMINATED if isinstance(exc, Terminated) else EXIT_INTERRUPTED
    if distributed.current().active and distributed.is_collective_failure(exc):
        exc = distributed.rank_failure(exc, distributed.current())
    formatter: Callable[[BaseException], tuple[str, str | None]] | None = None
    if _is_cuda_oom(exc):
        formatter = _format_memory
    elif type(exc).__name__ == "SafetensorError":  # without importing safetensors here
        formatter = _format_safetensors
    else:
        for kind, fmt in FORMATTERS:
            if isinstance(exc, kind):
                formatter = fmt
                break
    hint: str | None
    if formatter is None:
        message = f"Unexpected error: {type(exc).__name__}: {exc}"
        hint = "This is a bug in dclip; run again with DCLIP_DEBUG=1 and report the traceback."
    else:
        message, hint = formatter(exc)
    if debug_enabled():
        console.err.print("".join(traceback.format_exception(exc)), markup=False, highlight=False)
    console.err.print(f"{who}[bold red]Error:[/bold red] {escape(message)}", highlight=False)
    if hint:
        console.err.print(f"{who}[dim]Hint:[/dim] {escape(hint)}", highlight=False)
    return EXIT_ERROR


def exit_with(exc: BaseException) -> None:
    sys.exit(report(exc))
