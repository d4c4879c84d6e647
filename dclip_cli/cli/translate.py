"""``dclip translate``: project strokes, paintings or other-domain images into a preset's domain, then edit."""

from __future__ import annotations

from typing import Annotated

import typer

from dclip_cli.cli.options import DomainOpt, ImagesArg, ModelOpt, SrcOpt, StrengthOpt
from dclip_cli.cli.settings import RunSettings, run_and_render, run_options

EXAMPLES = """
Examples:

  dclip translate sketch.png

  dclip translate sketch.png --domain face --iterations 12 --save-intermediates

  dclip translate painting.png --domain dog --to bear --compare

Each round noises the image to t0 and projects it back with a 6-step DDIM of the domain's base model; with --to the
projection is then inverted and generated with the edit model.
"""


@run_options(compare_help="Also write input | projection | edit side by side.")
def translate_command(
    ctx: typer.Context,
    images: ImagesArg,
    domain: DomainOpt = None,
    to: Annotated[
        str | None,
        typer.Option("--to", "-t", help="Then edit the projection: named edit or free text (optional)."),
    ] = None,
    src: SrcOpt = None,
    model: ModelOpt = None,
    iterations: Annotated[
        int, typer.Option("--iterations", "-k", min=1, help="Rounds of noising to t0 and 6-step projection.")
    ] = 10,
    save_intermediates: Annotated[
        bool, typer.Option("--save-intermediates", help="Write the image after every round.")
    ] = False,
    strength: StrengthOpt = 1.0,
    *,
    run: RunSettings,
) -> None:
    """Translate strokes, paintings or unseen-domain images into a domain (and optionally edit them)."""
    from dclip_cli import api

    if model is not None and to is None:
        raise typer.BadParameter("--model needs --to (the edit the model performs).", param_hint="'--model'")
    run_and_render(
        ctx, run, api.translate_images, images, title="dclip translate" + (f": {to}" if to else ""), to=to, src=src,
        domain=domain, model=model, iterations=iterations, save_intermediates=save_intermediates, strength=strength,
    )  # fmt: skip


def register(app: typer.Typer) -> None:
    app.command("translate", epilog=EXAMPLES)(translate_command)
