"""``dclip translate``: project strokes, paintings or other-domain images into a preset's domain, then edit."""

from __future__ import annotations

from typing import Annotated

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
    MetricsOpt,
    OutputOpt,
    OverwriteOpt,
    Precision,
    PrecisionOpt,
    QuietOpt,
    SeedOpt,
    SrcOpt,
    StepsOpt,
    StrengthOpt,
    T0Opt,
)

EXAMPLES = """
Examples:

  dclip translate sketch.png

  dclip translate sketch.png --domain face --iterations 12 --save-intermediates

  dclip translate painting.png --domain dog --to bear --compare

Each round noises the image to t0 and projects it back with a 6-step DDIM of the domain's base model; with --to the
projection is then inverted and generated with the edit model.
"""


def translate_command(
    ctx: typer.Context,
    images: ImagesArg,
    domain: DomainOpt = None,
    to: Annotated[
        str | None,
        typer.Option("--to", "-t", help="Then edit the projection: named edit or free text (optional)."),
    ] = None,
    src: SrcOpt = None,
    model: Annotated[
        str | None,
        typer.Option(
            "--model", "-m", help="Edit model file or name for --to (skips lookup and fine-tuning)."
        ),
    ] = None,
    iterations: Annotated[
        int, typer.Option("--iterations", "-k", min=1, help="Rounds of noising to t0 and 6-step projection.")
    ] = 10,
    save_intermediates: Annotated[
        bool, typer.Option("--save-intermediates", help="Write the image after every round.")
    ] = False,
    strength: StrengthOpt = 1.0,
    t0: T0Opt = None,
    inv_steps: InvStepsOpt = None,
    steps: StepsOpt = None,
    eta: EtaOpt = 0.0,
    seed: SeedOpt = 0,
    batch_size: BatchSizeOpt = 4,
    compare: Annotated[
        bool, typer.Option("--compare", help="Also write input | projection | edit side by side.")
    ] = False,
    output: OutputOpt = None,
    overwrite: OverwriteOpt = False,
    clip_model: ClipModelOpt = "ViT-B/16",
    metrics: MetricsOpt = "all",
    finetune: FinetuneOpt = True,
    finetune_samples: FinetuneSamplesOpt = 8,
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
    precision: PrecisionOpt = Precision.auto,
    compile: CompileOpt = False,
) -> None:
    """Translate strokes, paintings or unseen-domain images into a domain (and optionally edit them)."""
    from dclip_cli import api
    from dclip_cli.cli._common import get_state, load_registry_with_warnings, tune_runtime
    from dclip_cli.cli.edit import CliReporter, apply_quiet, parse_option, render_report
    from dclip_cli.editing import parse_metrics

    apply_quiet(ctx, quiet)
    metric_names = parse_option("--metrics", parse_metrics, metrics)
    if model is not None and to is None:
        raise typer.BadParameter("--model needs --to (the edit the model performs).", param_hint="'--model'")
    load_registry_with_warnings()
    state = get_state(ctx)
    tune_runtime(state)
    with CliReporter() as reporter:
        report = api.translate_images(
            images,
            to=to,
            src=src,
            domain=domain,
            model=model,
            iterations=iterations,
            save_intermediates=save_intermediates,
            strength=strength,
            t0=t0,
            n_inv_steps=inv_steps,
            n_gen_steps=steps,
            eta=eta,
            seed=seed,
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
        )
    render_report(report, as_json=as_json, title="dclip translate" + (f": {to}" if to else ""))


def register(app: typer.Typer) -> None:
    app.command("translate", epilog=EXAMPLES)(translate_command)
