"""``dclip mix``: multi-attribute editing by combining several edit models' noise along a timestep schedule."""

from __future__ import annotations

from typing import Annotated

import typer

from dclip_cli.cli.options import DomainOpt, ImagesArg, LatentOpt, SrcOpt
from dclip_cli.cli.settings import RunSettings, run_and_render, run_options

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


@run_options(compare_help="Also write input | reconstruction | mix side by side.")
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
    latent: LatentOpt = None,
    *,
    run: RunSettings,
) -> None:
    """Combine several edits in one image by mixing their models' noise along a timestep schedule."""
    from dclip_cli import api
    from dclip_cli.apps.mix import member_names
    from dclip_cli.apps.schedule import parse_mix_schedule
    from dclip_cli.cli.report import parse_option

    targets, files = list(to or []), list(model or [])
    if not targets and not files:
        raise typer.BadParameter("give at least one --to (or --model) to mix.", param_hint="'--to'")
    # validate the whole schedule before anything is downloaded or loaded
    names = member_names(targets, files, with_base)
    entries = None
    if schedule is not None:
        entries = parse_option(
            "--schedule", lambda text: parse_mix_schedule(text, len(names), member_names=names), schedule
        )
    run_and_render(
        ctx, run, api.mix_images, images, title=f"dclip mix: {' + '.join(names)}", to=targets, models=files,
        with_base=with_base, schedule=entries, src=src, domain=domain, latent=latent,
    )  # fmt: skip


def register(app: typer.Typer) -> None:
    app.command("mix", epilog=EXAMPLES)(mix_command)
