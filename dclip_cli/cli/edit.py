"""``dclip edit``: edit images with text (a named edit or free text)."""

from __future__ import annotations

from typing import Annotated

import typer

from dclip_cli.cli.options import DomainOpt, ImagesArg, LatentOpt, ModelOpt, SrcOpt, StrengthOpt
from dclip_cli.cli.settings import RunSettings, run_and_render, run_options

EXAMPLES = """
Examples:

  dclip edit photo.png --to smiling

  dclip edit photo.png --to "face with curly hair" --domain face --compare

  dclip edit photos/ --to pixar -o edited/ --batch-size 8

  dclip edit photo.png --to smiling --sweep 0,0.25,0.5,0.75,1

  dclip edit photo.png --to gothic --domain church --strength 0.7 --t0 500 --steps 20

  dclip edit photo.png --to smiling --model my_smile.safetensors --latent photo.latent.safetensors
"""


@run_options(compare_help="Also write input | reconstruction | edit side by side.")
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
    model: ModelOpt = None,
    strength: StrengthOpt = 1.0,
    sweep: Annotated[
        str | None,
        typer.Option("--sweep", help="Several strengths, e.g. 0,0.25,0.5,0.75,1: writes a contact sheet."),
    ] = None,
    latent: LatentOpt = None,
    *,
    run: RunSettings,
) -> None:
    """Edit images with text: a named edit (--to smiling) or free text (--to "face with curly hair")."""
    from dclip_cli import api
    from dclip_cli.apps.config import parse_sweep
    from dclip_cli.cli.report import parse_option

    sweep_values = parse_option("--sweep", parse_sweep, sweep) if sweep is not None else None
    run_and_render(
        ctx, run, api.edit_images, images, title=f"dclip edit: {to}", to=to, src=src, domain=domain, model=model,
        strength=strength, sweep=sweep_values, latent=latent,
    )  # fmt: skip


def register(app: typer.Typer) -> None:
    app.command("edit", epilog=EXAMPLES)(edit_command)
