"""``dclip mix``: multi-attribute editing by combining several edit models' noise along a timestep schedule."""

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
    T0Opt,
)

EXAMPLES = """
Examples:

  dclip mix photo.png --to curly_hair --to makeup

  dclip mix photo.png --to curly_hair --to makeup --schedule "300:0.5,0.5;0:0.3,0.7"

  dclip mix photo.png --to pixar --with-base --schedule "500:1,0;0:0.5,0.5"

  dclip mix photo.png --model a.safetensors --model b.safetensors --schedule "0:0.4,0.6" --domain face

The schedule lists THRESHOLD:WEIGHTS entries separated by ';'. At timestep t the first entry with THRESHOLD <= t
applies, so thresholds go down and the last one is 0. Members, in order: each --to, then each --model, then the
base model with --with-base; one weight per member (normalised to sum to 1).
"""


def mix_command(
    ctx: typer.Context,
    images: ImagesArg,
    to: Annotated[
        list[str] | None,
        typer.Option("--to", "-t", help="Edit to mix (named edit or free text); repeat for each member."),
    ] = None,
    model: Annotated[
        list[str] | None,
        typer.Option(
            "--model", "-m", help="Edit model file or name to mix; repeatable (after the --to members)."
        ),
    ] = None,
    with_base: Annotated[
        bool, typer.Option("--with-base", help="Add the base model as the last member.")
    ] = False,
    schedule: Annotated[
        str | None,
        typer.Option(
            "--schedule",
            "-s",
            help='Weights per timestep range, e.g. "300:0.5,0.5;0:0.3,0.7" (default: equal weights throughout).',
        ),
    ] = None,
    src: SrcOpt = None,
    domain: DomainOpt = None,
    t0: T0Opt = None,
    inv_steps: InvStepsOpt = None,
    steps: StepsOpt = None,
    eta: EtaOpt = 0.0,
    seed: SeedOpt = 0,
    latent: LatentOpt = None,
    batch_size: BatchSizeOpt = 4,
    compare: Annotated[
        bool, typer.Option("--compare", help="Also write input | reconstruction | mix side by side.")
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
    """Combine several edits in one image by mixing their models' noise along a timestep schedule."""
    from dclip_cli import api
    from dclip_cli.cli._common import get_state, load_registry_with_warnings, tune_runtime
    from dclip_cli.cli.edit import CliReporter, apply_quiet, parse_option, render_report
    from dclip_cli.editing import parse_metrics, parse_mix_schedule

    apply_quiet(ctx, quiet)
    targets, files = list(to or []), list(model or [])
    if not targets and not files:
        raise typer.BadParameter("give at least one --to (or --model) to mix.", param_hint="'--to'")
    # validate the whole schedule before anything is downloaded or loaded
    names = [*targets, *files, *(["base"] if with_base else [])]
    entries = None
    if schedule is not None:
        entries = parse_option(
            "--schedule", lambda text: parse_mix_schedule(text, len(names), member_names=names), schedule
        )
    metric_names = parse_option("--metrics", parse_metrics, metrics)
    load_registry_with_warnings()
    state = get_state(ctx)
    tune_runtime(state)
    with CliReporter() as reporter:
        report = api.mix_images(
            images,
            to=targets,
            models=files,
            with_base=with_base,
            schedule=entries,
            src=src,
            domain=domain,
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
    render_report(report, as_json=as_json, title=f"dclip mix: {' + '.join(names)}")


def register(app: typer.Typer) -> None:
    app.command("mix", epilog=EXAMPLES)(mix_command)
