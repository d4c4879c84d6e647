"""What the run commands print when they finish: output paths on stdout (or JSON), the metrics table on stderr,
and the inputs that were skipped; plus the small option helpers they share."""

from __future__ import annotations

import json
from typing import Any

import typer


def apply_quiet(ctx: typer.Context, quiet: bool) -> None:
    """Honour a command-level ``--quiet`` (the same as the global one)."""
    from dclip_cli import console
    from dclip_cli.cli._common import get_state

    state = get_state(ctx)
    if quiet:
        state.quiet = True
        console.configure(quiet=True, verbose=state.verbose)


def parse_option(param: str, parse: Any, value: Any) -> Any:
    """Run a library parser on an option value, turning its :class:`ConfigError` into a usage error (exit 2)."""
    from dclip_cli.errors import ConfigError

    try:
        return parse(value)
    except ConfigError as exc:
        message = exc.message + (f" {exc.hint}" if exc.hint else "")
        raise typer.BadParameter(message, param_hint=f"'{param}'") from None


#: column headers short enough for an 80-column table; the caption spells them out
_SHORT_HEADERS = {
    "clip_directional": "CLIP dir.",
    "clip_target": "CLIP target",
    "lpips": "LPIPS",
    "identity": "identity",
    "reconstruction_psnr": "recon. PSNR",
    "psnr": "PSNR",
}


def metrics_table(title: str, rows: list[tuple[str, dict[str, float]]]) -> Any:
    """A Rich table with one row per output and one column per metric present.

    Headers are short (``CLIP dir. ↑``) and explained in the caption, and long output names wrap instead of being
    cut, so the table reads in an 80-column terminal.
    """
    from rich.markup import escape
    from rich.table import Table

    from dclip_cli.metrics import METRICS

    keys = [k for k in METRICS if any(k in r for _, r in rows)] + sorted(
        {k for _, r in rows for k in r if k not in METRICS}
    )
    table = Table(title=title)
    table.add_column("output", style="bold", overflow="fold", min_width=12)
    legend = []
    for key in keys:
        label, higher = METRICS.get(key, (key, True))
        short = _SHORT_HEADERS.get(key, label)
        table.add_column(f"{short} {'↑' if higher else '↓'}", justify="right", overflow="fold")
        if not label.startswith(short):
            legend.append(f"{short} = {label}")
    for name, row in rows:
        table.add_row(escape(name), *(_fmt(row.get(k)) for k in keys))
    table.caption = escape("; ".join([*legend, "↑ higher is better, ↓ lower is better."]))
    table.caption_justify = "left"
    return table


def _fmt(value: float | None) -> str:
    if value is None:
        return "-"
    if value == float("inf"):
        return "inf"
    return f"{value:.4f}" if abs(value) < 10 else f"{value:.2f}"


def print_results(results: list[Any], *, as_json: bool) -> None:
    """Print the written outputs on stdout: one path per line (image, compare sheet, intermediates), or the
    sidecars as a JSON list."""
    from dclip_cli import console

    if as_json:
        console.out.print_json(json.dumps([r.manifest for r in results]))
        return
    for r in results:
        for path in [r.outputs.image, r.outputs.compare, *r.outputs.intermediates]:
            if path is not None:
                console.out.print(str(path), markup=False, highlight=False, soft_wrap=True)


def render_report(report: Any, *, as_json: bool, title: str) -> None:
    """Print a run's outputs (stdout), its metrics table (stderr) and skipped inputs; exit 1 if any failed."""
    from rich.markup import escape

    from dclip_cli import console

    print_results(report.results, as_json=as_json)
    if not console.is_quiet() and report.results and any(r.metrics for r in report.results):
        rows = [(r.outputs.image.name, r.metrics) for r in report.results]
        console.err.print(metrics_table(title, rows))
    if report.failed:
        names = ", ".join(escape(str(p)) for p, _ in report.failed)
        if not console.prefix():  # under torchrun rank 0 says it for all
            console.err.print(
                f"[bold red]Error:[/bold red] {len(report.failed)} of {len(report.failed) + len(report.results)} "
                f"input(s) could not be read and were skipped: {names}.",
                highlight=False,
            )
        raise typer.Exit(code=1)


def start_run(ctx: typer.Context, quiet: bool) -> None:
    """What every compute command does first: honour ``--quiet``, load the plugins (printing their warnings once)
    and tune the process for the device."""
    from dclip_cli.cli._common import get_state, load_registry_with_warnings, tune_runtime

    apply_quiet(ctx, quiet)
    tune_runtime(get_state(ctx))  # first: under torchrun it also decides what this rank prints
    load_registry_with_warnings()
