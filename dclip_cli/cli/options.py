"""Option and argument aliases shared by the commands, so their help text is identical everywhere."""

from __future__ import annotations

import enum
from pathlib import Path
from typing import Annotated

import typer

ImagesArg = Annotated[
    list[Path],
    typer.Argument(
        exists=True,
        readable=True,
        help="Input image file(s) or directories of images.",
        show_default=False,
        metavar="IMAGE...",
    ),
]
ImageArg = Annotated[
    Path,
    typer.Argument(
        exists=True,
        dir_okay=False,
        readable=True,
        help="Input image file.",
        show_default=False,
        metavar="IMAGE",
    ),
]
DomainOpt = Annotated[
    str | None,
    typer.Option(
        "--domain",
        "--preset",
        "-d",
        metavar="PRESET",
        help="Preset (domain) name, e.g. face, dog, church, bedroom.",
    ),
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
    float,
    typer.Option(
        "--eta", min=0.0, max=1.0, help="DDIM eta for generation: 0 = deterministic, 1 = DDPM-like noise."
    ),
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
# -- editing applications (edit, mix, translate, score) ---------------------------------------------------------
SrcOpt = Annotated[
    str | None, typer.Option("--src", help="Source text for free-text targets (default: the preset's).")
]
StrengthOpt = Annotated[
    float,
    typer.Option(
        "--strength",
        min=0.0,
        max=1.0,
        help="Degree of change r: eps = r*edit + (1-r)*base (0..1; 1 = full edit).",
    ),
]
ModelOpt = Annotated[
    str | None,
    typer.Option(
        "--model",
        "-m",
        metavar="FILE|NAME",
        help="Edit model: a .safetensors/.pth file, a library name (face/pixar) or a registered checkpoint.",
    ),
]
LatentOpt = Annotated[
    Path | None,
    typer.Option(
        "--latent",
        exists=True,
        dir_okay=False,
        readable=True,
        help="Latent from 'dclip invert' (skips inversion).",
    ),
]
BatchSizeOpt = Annotated[int, typer.Option("--batch-size", "-b", min=1, help="Images per batch.")]
ClipModelOpt = Annotated[
    str,
    typer.Option(
        "--clip-model", metavar="NAME|FILE", help="CLIP model name (ViT-B/16, ViT-B/32) or OpenAI CLIP file."
    ),
]
MetricsOpt = Annotated[
    str,
    typer.Option(
        "--metrics",
        help="Metrics: auto (those costing no extra diffusion pass, skipped with a warning when unavailable), "
        "all, none, or a list of clip,lpips,identity,psnr (an error when one cannot be computed).",
    ),
]
FinetuneOpt = Annotated[
    bool,
    typer.Option(
        "--finetune/--no-finetune",
        help="Fine-tune an edit model now when none is found (else stop with an error).",
    ),
]
FinetuneSamplesOpt = Annotated[
    int,
    typer.Option("--finetune-samples", min=0, help="Base-model samples added when fine-tuning on the fly."),
]
QuietOpt = Annotated[
    bool, typer.Option("--quiet", "-q", help="Print only the output paths, warnings and errors.")
]
RequireFaceOpt = Annotated[
    bool,
    typer.Option(
        "--require-face",
        help="With a face-aligning preset (face), fail on images where no face is found instead of centre-cropping.",
    ),
]


class Precision(str, enum.Enum):
    """Values of ``--precision`` (resolved by ``dclip_cli.precision.resolve_precision``)."""

    auto = "auto"
    fp32 = "fp32"
    bf16 = "bf16"
    fp16 = "fp16"


class Checkpointing(str, enum.Enum):
    """Values of ``--checkpointing`` (resolved by ``dclip_cli.precision.resolve_checkpointing``)."""

    auto = "auto"
    on = "on"
    off = "off"


PrecisionOpt = Annotated[
    Precision,
    typer.Option(
        "--precision",
        case_sensitive=False,
        envvar="DCLIP_PRECISION",
        help="UNet compute precision: auto = bf16 on GPUs and CPUs with native bf16, fp16 on older GPUs, "
        "else fp32. The DDIM update, schedule and GroupNorm statistics always stay fp32.",
    ),
]
CompileOpt = Annotated[
    bool,
    typer.Option(
        "--compile/--no-compile",
        help="torch.compile the UNet (pays off on long GPU runs; compiling takes minutes on a CPU).",
    ),
]
CheckpointingOpt = Annotated[
    Checkpointing,
    typer.Option(
        "--checkpointing",
        case_sensitive=False,
        help="Gradient checkpointing of the UNet blocks while fine-tuning: less memory, about a third more "
        "compute. auto = on in the original mode, off in the efficient mode.",
    ),
]
