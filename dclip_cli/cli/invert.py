"""``dclip invert``: DDIM-invert images to latents and report how well they reconstruct."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from dclip_cli.cli.options import (
    CheckpointOpt,
    CompileOpt,
    DomainOpt,
    ImagesArg,
    JsonOpt,
    OutputOpt,
    OverwriteOpt,
    Precision,
    PrecisionOpt,
    RequireFaceOpt,
    T0Opt,
)
from dclip_cli.cli.settings import YesOpt

EXAMPLES = """
Examples:

  dclip invert face.jpg --domain face

  dclip invert photos/ --domain church --t0 500 --inv-steps 40 -o latents/

  dclip invert cat.png --checkpoint my_unet.safetensors --arch-config unet.json -o cat.safetensors --json
"""

InvertStepsOpt = Annotated[
    int | None,
    typer.Option(
        "--inv-steps",
        min=2,
        help="Points in the DDIM inversion sequence (the reconstruction retraces it). Default: preset (40).",
    ),
]
#: ``--steps`` meant inversion steps here but generation steps in edit/mix/translate: accepted for one release
OldStepsOpt = Annotated[
    int | None,
    typer.Option("--steps", min=2, hidden=True, help="Deprecated: use --inv-steps."),
]
ArchConfigOpt = Annotated[
    Path | None,
    typer.Option(
        "--arch-config",
        exists=True,
        dir_okay=False,
        readable=True,
        help="JSON/TOML/YAML architecture settings for --checkpoint (ddim YAML model block or create_model args).",
    ),
]


def invert_command(
    ctx: typer.Context,
    images: ImagesArg,
    domain: DomainOpt = None,
    checkpoint: CheckpointOpt = None,
    arch_config: ArchConfigOpt = None,
    t0: T0Opt = None,
    inv_steps: InvertStepsOpt = None,
    old_steps: OldStepsOpt = None,
    output: OutputOpt = None,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="Images inverted together.")] = 1,
    require_face: RequireFaceOpt = False,
    json_output: JsonOpt = False,
    overwrite: OverwriteOpt = False,
    precision: PrecisionOpt = Precision.auto,
    compile: CompileOpt = False,
    yes: YesOpt = False,
) -> None:
    """Invert images to DDIM latents (.safetensors) and save their reconstructions."""
    import json

    from rich.markup import escape
    from rich.table import Table

    from dclip_cli import api, console
    from dclip_cli.cli._common import get_state, load_registry_with_warnings, tune_runtime
    from dclip_cli.cli.display import Display
    from dclip_cli.cli.settings import long_runs_policy, printing_outputs

    if arch_config is not None and checkpoint is None:
        raise typer.BadParameter(
            "--arch-config describes a --checkpoint file; pass one.", param_hint="'--arch-config'"
        )
    if domain is None and checkpoint is None:
        raise typer.BadParameter(
            "choose a model with --domain NAME (see 'dclip presets list') or --checkpoint PATH.",
            param_hint="'--domain' / '--checkpoint'",
        )
    if old_steps is not None:
        if inv_steps is not None and inv_steps != old_steps:
            raise typer.BadParameter(
                f"--steps {old_steps} and --inv-steps {inv_steps} disagree; pass only --inv-steps.",
                param_hint="'--steps'",
            )
        console.warn(
            "'dclip invert --steps' is deprecated and will be removed in the next release: --steps means "
            "generation steps in every other command. Use --inv-steps."
        )
        inv_steps = old_steps
    state = get_state(ctx)
    tune_runtime(state)  # first: under torchrun it also decides what this rank prints
    load_registry_with_warnings()
    with Display() as display, printing_outputs(display, lambda r: [r.latent, r.reconstruction]) as progress:
        report = api.invert_images(
            images, domain=domain, checkpoint=checkpoint, arch_config=arch_config,
            config=api.RunConfig(
                sampling=api.Sampling(t0=t0, inv_steps=inv_steps), outputs=api.Outputs(output=output, overwrite=overwrite),
                runtime=api.Runtime(device=state.device, precision=precision.value, compile=compile,
                                    batch_size=batch_size, require_face=require_face,
                                    long_runs=long_runs_policy(yes, display)),
            ),
            progress=progress,
        )  # fmt: skip

    if json_output:
        console.out.print(
            json.dumps(report.to_dict(), indent=2), markup=False, highlight=False, soft_wrap=True
        )
        return
    if not console.is_quiet():
        table = Table(
            title=f"Inverted {len(report.images)} image(s) to t0 = {report.t0} with {report.steps} steps "
            f"({report.arch}, {report.image_size}px, {report.seconds:.1f} s)"
        )
        table.add_column("image", style="bold")
        table.add_column("latent")
        table.add_column("reconstruction")
        table.add_column("MSE", justify="right")
        table.add_column("PSNR (dB)", justify="right")
        for r in report.images:
            table.add_row(
                escape(str(r.image)),
                escape(str(r.latent)),
                escape(str(r.reconstruction)),
                f"{r.mse:.5f}",
                f"{r.psnr:.2f}",
            )
        console.err.print(table)
    for r in report.images:
        console.out.print(str(r.latent), markup=False, highlight=False, soft_wrap=True)
        console.out.print(str(r.reconstruction), markup=False, highlight=False, soft_wrap=True)


def register(app: typer.Typer) -> None:
    app.command("invert", epilog=EXAMPLES)(invert_command)
