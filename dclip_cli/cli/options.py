"""Option and argument aliases shared by the commands, so their help text is identical everywhere."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

ImagesArg = Annotated[
    list[Path],
    typer.Argument(
        exists=True, readable=True, help="Input image file(s) or directories of images.", show_default=False
    ),
]
ImageArg = Annotated[
    Path,
    typer.Argument(exists=True, dir_okay=False, readable=True, help="Input image file.", show_default=False),
]
DomainOpt = Annotated[
    str | None,
    typer.Option("--domain", "--preset", "-d", help="Preset (domain) name, e.g. face, dog, church, bedroom."),
]
T0Opt = Annotated[
    int | None,
    typer.Option("--t0", min=1, max=999, help="Return step t0 (1-999); higher edits more. Default: preset."),
]
InvStepsOpt = Annotated[
    int | None,
    typer.Option("--inv-steps", min=2, help="Points in the DDIM inversion sequence. Default: preset (40)."),
]
StepsOpt = Annotated[
    int | None,
    typer.Option("--steps", min=2, help="Points in the DDIM generation sequence. Default: preset (40)."),
]
EtaOpt = Annotated[
    float, typer.Option("--eta", min=0.0, help="DDIM eta for generation (0 = deterministic).")
]
SeedOpt = Annotated[int, typer.Option("--seed", help="Random seed (noise, sampling, training order).")]
OutputOpt = Annotated[
    Path | None,
    typer.Option("--output", "-o", help="Output file or directory (default: next to the input)."),
]
OverwriteOpt = Annotated[bool, typer.Option("--overwrite", help="Replace existing output files.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON on stdout.")]
CheckpointOpt = Annotated[
    Path | None,
    typer.Option(
        "--checkpoint",
        exists=True,
        dir_okay=False,
        readable=True,
        help="Local diffusion checkpoint to use instead of the preset's.",
    ),
]
