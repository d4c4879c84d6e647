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
    where = f" ({exc.filename})" if getattr(exc, "filename", None) else ""
    return f"{exc.strerror or exc}{where}.", "Check the path and its permissions."


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
        console.err.print(f"{who}[red]Interrupted.[/red] Nothing partial was left behind.")
        return EXIT_INTERRUPTED
    if distributed.current().active and distributed.is_collective_failure(exc):
        exc = distributed.rank_failure(exc, distributed.current())
    formatter: Callable[[BaseException], tuple[str, str | None]] | None = None
    if _is_cuda_oom(exc):
        formatter = _format_memory
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
