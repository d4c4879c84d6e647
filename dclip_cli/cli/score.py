"""``dclip score``: the edit metrics for any pair of images."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from dclip_cli.cli.options import ClipModelOpt, DomainOpt, JsonOpt, MetricsOpt

EXAMPLES = """
Examples:

  dclip score photo.png photo.smiling.png --src face --trg "smiling face"

  dclip score photo.png edited.png --src face --trg "pixar face" --domain face --json
"""


def score_command(
    ctx: typer.Context,
    source: Annotated[
        Path,
        typer.Argument(
            exists=True, dir_okay=False, readable=True, help="The original image.", show_default=False
        ),
    ],
    edited: Annotated[
        Path,
        typer.Argument(
            exists=True, dir_okay=False, readable=True, help="The edited image.", show_default=False
        ),
    ],
    src: Annotated[str, typer.Option("--src", help="Source text, e.g. face.", show_default=False)],
    trg: Annotated[str, typer.Option("--trg", help="Target text, e.g. 'smiling face'.", show_default=False)],
    domain: DomainOpt = None,
    size: Annotated[
        int | None,
        typer.Option(
            "--size", min=32, help="Compare at this size (default: the preset's with --domain, else 256)."
        ),
    ] = None,
    clip_model: ClipModelOpt = "ViT-B/16",
    metrics: MetricsOpt = "auto",
    as_json: JsonOpt = False,
) -> None:
    """Score an edit: CLIP directional and target similarity, LPIPS, identity (faces) and PSNR."""
    from dclip_cli import api, console
    from dclip_cli.apps.config import parse_metrics
    from dclip_cli.cli._common import get_state, load_registry_with_warnings
    from dclip_cli.cli.display import Display
    from dclip_cli.cli.report import metrics_table, parse_option

    metric_names = parse_option("--metrics", parse_metrics, metrics)
    load_registry_with_warnings()
    runtime = api.Runtime(device=get_state(ctx).device, clip_model=clip_model)
    with Display() as display:
        row = api.score_images(
            source, edited, src=src, trg=trg, domain=domain, size=size, metrics=metric_names, runtime=runtime,
            progress=display,
        )  # fmt: skip
    if as_json:
        console.out.print_json(json.dumps({k: (v if v != float("inf") else None) for k, v in row.items()}))
    else:
        console.out.print(metrics_table(f"{source.name} -> {edited.name}", [(edited.name, row)]))


def register(app: typer.Typer) -> None:
    app.command("score", epilog=EXAMPLES)(score_command)
