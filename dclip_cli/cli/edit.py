"""``dclip edit``: edit images with text (named edit or free text), and the display helpers ``mix``, ``translate``
and ``score`` share."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer

from dclip_cli.cli.options import (
    BatchSizeOpt,
    ClipModelOpt,
    CompileOpt,
    DomainOpt,
    EtaOpt,
    FinetuneOpt,
    FinetuneSamplesOpt,
    ImagesArg,
    InvStepsOpt,
    JsonOpt,
    LatentOpt,
    MetricsOpt,
    OutputOpt,
    OverwriteOpt,
    Precision,
    PrecisionOpt,
    QuietOpt,
    RequireFaceOpt,
    SeedOpt,
    SrcOpt,
    StepsOpt,
    StrengthOpt,
    T0Opt,
)

EXAMPLES = """
Examples:

  dclip edit photo.png --to smiling

  dclip edit photo.png --to "face with curly hair" --domain face --compare

  dclip edit photos/ --to pixar -o edited/ --batch-size 8

  dclip edit photo.png --to smiling --sweep 0,0.25,0.5,0.75,1

  dclip edit photo.png --to gothic --domain church --strength 0.7 --t0 500 --steps 20

  dclip edit photo.png --to smiling --model my_smile.safetensors --latent photo.latent.safetensors
"""

_PHASE_LABELS = {
    "fine-tuning": "Fine-tuning",
    "fine-tuning: load": "Loading training images",
    "fine-tuning: sample": "Drawing samples",
    "fine-tuning: invert": "Inverting training images",
    "inversion": "Inverting",
    "reconstruction": "Reconstructing",
    "generation": "Generating",
    "translation": "Projecting",
}


class CliReporter:
    """The Rich side of :class:`dclip_cli.editing.Reporter`: one progress display on stderr across downloads,
    fine-tuning, inversion and generation, with status lines printed above it. ``--quiet`` hides all but warnings.
    """

    def __init__(self) -> None:
        from dclip_cli import console

        self.console = console
        self.display = console.make_progress()
        self.tasks: dict[str, Any] = {}

    def __enter__(self) -> CliReporter:
        self.display.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.display.__exit__(*exc)  # type: ignore[arg-type]

    # the Reporter interface (duck-typed, so dclip_cli.editing need not be imported at module level)
    def info(self, message: str) -> None:
        from rich.markup import escape

        if not self.console.is_quiet():
            self.display.console.print(escape(message), highlight=False)

    def warn(self, message: str) -> None:
        from rich.markup import escape

        self.display.console.print(f"[yellow]Warning:[/yellow] {escape(message)}", highlight=False)

    def progress_task(self, key: str, description: str, total: float | None) -> Any:
        task = self.tasks.get(key)
        if task is None:
            task = self.display.add_task(description, total=total, status="")
            self.tasks[key] = task
        elif total is not None:
            self.display.update(task, total=total)
        return task

    def progress(self, phase: str, *, advance: int = 1, total: int | None = None, status: str = "") -> None:
        task = self.progress_task(phase, _PHASE_LABELS.get(phase, phase), total)
        self.display.update(task, advance=advance, status=status)

    def download(self, name: str) -> Any:
        def on_progress(done: int, total: int | None) -> None:
            task = self.progress_task(f"download:{name}", f"Downloading {name}", total)
            mb = f"{done / 1e6:.1f}" + (f"/{total / 1e6:.1f}" if total else "") + " MB"
            self.display.update(task, completed=done, status=mb)

        return on_progress


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


def metrics_table(title: str, rows: list[tuple[str, dict[str, float]]]) -> Any:
    """A Rich table with one row per output and one column per metric present."""
    from rich.markup import escape
    from rich.table import Table

    from dclip_cli.metrics import METRICS

    keys = [k for k in METRICS if any(k in r for _, r in rows)] + sorted(
        {k for _, r in rows for k in r if k not in METRICS}
    )
    table = Table(title=title)
    table.add_column("output", style="bold")
    for key in keys:
        label, higher = METRICS.get(key, (key, True))
        table.add_column(f"{label} {'↑' if higher else '↓'}", justify="right")
    for name, row in rows:
        table.add_row(escape(name), *(_fmt(row.get(k)) for k in keys))
    return table


def _fmt(value: float | None) -> str:
    if value is None:
        return "-"
    if value == float("inf"):
        return "inf"
    return f"{value:.4f}" if abs(value) < 10 else f"{value:.2f}"


def render_report(report: Any, *, as_json: bool, title: str) -> None:
    """Print a run's outputs (stdout), its metrics table (stderr) and skipped inputs; exit 1 if any failed."""
    from rich.markup import escape

    from dclip_cli import console

    if as_json:
        console.out.print_json(json.dumps([r.manifest for r in report.results]))
    else:
        for r in report.results:
            for path in [r.outputs.image, r.outputs.compare, *r.outputs.intermediates]:
                if path is not None:
                    console.out.print(str(path), markup=False, highlight=False, soft_wrap=True)
    if not console.is_quiet() and report.results and any(r.metrics for r in report.results):
        rows = [(r.outputs.image.name, r.metrics) for r in report.results]
        console.err.print(metrics_table(title, rows))
    if report.failed:
        names = ", ".join(escape(str(p)) for p, _ in report.failed)
        console.err.print(
            f"[bold red]Error:[/bold red] {len(report.failed)} of {len(report.failed) + len(report.results)} "
            f"input(s) could not be read and were skipped: {names}.",
            highlight=False,
        )
        raise typer.Exit(code=1)


def edit_command(
    ctx: typer.Context,
    images: ImagesArg,
    to: Annotated[
        str,
        typer.Option(
            "--to",
            "-t",
            help="Named edit of the preset (smiling, pixar) or free target text.",
            show_default=False,
        ),
    ],
    src: SrcOpt = None,
    domain: DomainOpt = None,
    model: Annotated[
        str | None,
        typer.Option(
            "--model",
            "-m",
            help="Edit model: a .safetensors/.pth file, a library name (face/pixar) or a registered checkpoint.",
        ),
    ] = None,
    strength: StrengthOpt = 1.0,
    sweep: Annotated[
        str | None,
        typer.Option("--sweep", help="Several strengths, e.g. 0,0.25,0.5,0.75,1: writes a contact sheet."),
    ] = None,
    t0: T0Opt = None,
    inv_steps: InvStepsOpt = None,
    steps: StepsOpt = None,
    eta: EtaOpt = 0.0,
    seed: SeedOpt = 0,
    latent: LatentOpt = None,
    batch_size: BatchSizeOpt = 4,
    compare: Annotated[
        bool, typer.Option("--compare", help="Also write input | reconstruction | edit side by side.")
    ] = False,
    output: OutputOpt = None,
    overwrite: OverwriteOpt = False,
    clip_model: ClipModelOpt = "ViT-B/16",
    metrics: MetricsOpt = "all",
    finetune: FinetuneOpt = True,
    finetune_samples: FinetuneSamplesOpt = 8,
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
    require_face: RequireFaceOpt = False,
    precision: PrecisionOpt = Precision.auto,
    compile: CompileOpt = False,
) -> None:
    """Edit images with text: a named edit (--to smiling) or free text (--to "face with curly hair")."""
    from dclip_cli import api
    from dclip_cli.cli._common import get_state, load_registry_with_warnings, tune_runtime
    from dclip_cli.editing import parse_metrics, parse_sweep

    apply_quiet(ctx, quiet)
    sweep_values = parse_option("--sweep", parse_sweep, sweep) if sweep is not None else None
    metric_names = parse_option("--metrics", parse_metrics, metrics)
    load_registry_with_warnings()
    state = get_state(ctx)
    tune_runtime(state)
    with CliReporter() as reporter:
        report = api.edit_images(
            images,
            to=to,
            src=src,
            domain=domain,
            model=model,
            strength=strength,
            sweep=sweep_values,
            t0=t0,
            n_inv_steps=inv_steps,
            n_gen_steps=steps,
            eta=eta,
            seed=seed,
            latent=latent,
            batch_size=batch_size,
            compare=compare,
            output=output,
            overwrite=overwrite,
            metrics=metric_names,
            allow_finetune=finetune,
            finetune_samples=finetune_samples,
            device=state.device,
            clip_model=clip_model,
            precision=precision.value,
            compile=compile,
            reporter=reporter,
            require_face=require_face,
        )
    render_report(report, as_json=as_json, title=f"dclip edit: {to}")


def register(app: typer.Typer) -> None:
    app.command("edit", epilog=EXAMPLES)(edit_command)
