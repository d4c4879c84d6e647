"""``dclip finetune``: fine-tune a diffusion model for text edits (DiffusionCLIP) and save the result."""

from __future__ import annotations

import enum
from pathlib import Path
from typing import Annotated

import typer

from dclip_cli.cli.options import (
    Checkpointing,
    CheckpointingOpt,
    CheckpointOpt,
    DomainOpt,
    EtaOpt,
    InvStepsOpt,
    OverwriteOpt,
    Precision,
    PrecisionOpt,
    SeedOpt,
    StepsOpt,
    T0Opt,
)
from dclip_cli.cli.settings import YesOpt

EXAMPLES = """
Examples:

  dclip finetune --domain church --text "gothic church"

  dclip finetune --domain face --edit smiling --edit angry --epochs 5

  dclip finetune --domain face --src "face" --trg "pixar face" --images photos/ -o pixar.safetensors

  dclip finetune --domain dog --text "bear" --mode efficient --samples 30 --save-dtype fp16

  dclip finetune --domain church --text "gothic church" --resume
"""


class Mode(str, enum.Enum):
    original = "original"
    efficient = "efficient"


class SaveDtype(str, enum.Enum):
    fp32 = "fp32"
    fp16 = "fp16"
    bf16 = "bf16"


_LOSS_ORDER = ("clip", "l1", "id", "lpips", "total")


def _format_losses(losses: dict[str, float] | None) -> str:
    if not losses:
        return ""
    return "  ".join(f"{k} {losses[k]:.4f}" for k in _LOSS_ORDER if k in losses)


def finetune_command(
    ctx: typer.Context,
    domain: DomainOpt = None,
    text: Annotated[
        list[str] | None,
        typer.Option("--text", "-t", help="Target text (repeatable); the source is --src or the preset's."),
    ] = None,
    edit: Annotated[
        list[str] | None, typer.Option("--edit", "-e", help="Named edit of the preset (repeatable).")
    ] = None,
    src: Annotated[str | None, typer.Option("--src", help="Source text (default: the preset's).")] = None,
    trg: Annotated[str | None, typer.Option("--trg", help="Target text (same as --text).")] = None,
    mode: Annotated[
        Mode | None,
        typer.Option("--mode", help="original: backprop through all steps; efficient: less GPU memory."),
    ] = None,
    epochs: Annotated[int | None, typer.Option("--epochs", min=1, help="Epochs. Default: preset.")] = None,
    lr: Annotated[
        float | None, typer.Option("--lr", min=0.0, help="Adam learning rate. Default: preset.")
    ] = None,
    t0: T0Opt = None,
    inv_steps: InvStepsOpt = None,
    train_steps: Annotated[
        int | None,
        typer.Option("--train-steps", min=2, help="Points in the training sequence. Default: 6."),
    ] = None,
    gen_steps: StepsOpt = None,
    clip_weight: Annotated[
        float | None, typer.Option("--clip-weight", min=0.0, help="CLIP loss weight.")
    ] = None,
    l1_weight: Annotated[float | None, typer.Option("--l1-weight", min=0.0, help="L1 loss weight.")] = None,
    id_weight: Annotated[
        float | None, typer.Option("--id-weight", min=0.0, help="Identity loss weight (faces).")
    ] = None,
    lpips_weight: Annotated[
        float | None, typer.Option("--lpips-weight", min=0.0, help="LPIPS weight.")
    ] = None,
    eta: EtaOpt = 0.0,
    images: Annotated[
        Path | None,
        typer.Option(
            "--images", exists=True, readable=True, help="Folder of training photos (or one image)."
        ),
    ] = None,
    samples: Annotated[
        int | None,
        typer.Option("--samples", min=0, help="Training images drawn from the base model. Default: preset."),
    ] = None,
    batch_size: Annotated[
        int,
        typer.Option("--batch-size", min=1, help="Images per optimizer batch (per process under torchrun)."),
    ] = 1,
    seed: SeedOpt = 0,
    clip_model: Annotated[
        str, typer.Option("--clip-model", help="CLIP model name (ViT-B/16, ViT-B/32) or OpenAI CLIP file.")
    ] = "ViT-B/16",
    save_dtype: Annotated[
        SaveDtype, typer.Option("--save-dtype", help="Precision of the saved weights.")
    ] = SaveDtype.fp32,
    resume: Annotated[
        bool, typer.Option("--resume", help="Continue from the last finished epoch of the same run.")
    ] = False,
    run_dir: Annotated[
        Path | None,
        typer.Option("--run-dir", file_okay=False, help="Run folder for previews and resumable state."),
    ] = None,
    previews: Annotated[
        int, typer.Option("--previews", min=0, help="Held-out samples previewed after each epoch.")
    ] = 4,
    checkpoint: CheckpointOpt = None,
    output: Annotated[
        Path | None,
        typer.Option(
            "--output", "-o", help="Artifact file (.safetensors) or folder. Default: the edit library."
        ),
    ] = None,
    library: Annotated[
        bool | None,
        typer.Option(
            "--library/--no-library", help="Also save into the edit library (default: only without -o)."
        ),
    ] = None,
    precision: PrecisionOpt = Precision.auto,
    checkpointing: CheckpointingOpt = Checkpointing.auto,
    overwrite: OverwriteOpt = False,
    yes: YesOpt = False,
) -> None:
    """Fine-tune the diffusion model of a domain for text edits and save the result."""
    from rich.markup import escape
    from rich.table import Table

    from dclip_cli import api, console, distributed
    from dclip_cli.cli._common import get_state, load_registry_with_warnings, tune_runtime
    from dclip_cli.cli.display import Display
    from dclip_cli.cli.settings import long_runs_policy
    from dclip_cli.progress import Event

    if domain is None:
        raise typer.BadParameter("choose a domain, for example --domain face.", param_hint="'--domain'")
    state = get_state(ctx)
    tune_runtime(state)  # first: under torchrun it also decides what this rank prints
    registry = load_registry_with_warnings()
    preset = registry.preset(domain)
    texts = list(text or [])
    if trg is not None:
        texts.append(trg)
    overrides = {
        "t0": t0,
        "n_inv_steps": inv_steps,
        "n_train_steps": train_steps,
        "n_gen_steps": gen_steps,
        "mode": mode.value if mode is not None else None,
        "epochs": epochs,
        "lr": lr,
        "clip_weight": clip_weight,
        "l1_weight": l1_weight,
        "id_weight": id_weight,
        "lpips_weight": lpips_weight,
        "eta": eta,
        "batch_size": batch_size * distributed.current().world_size,  # under torchrun: N x b in all
        "seed": seed,
        "precision": precision.value,
        "checkpointing": checkpointing.value,
    }
    saved: list[Path] = []  # artifacts of the edits finished so far, printed even if the run is interrupted

    def on_event(event: Event) -> None:
        if event.kind == "pair_end":
            saved.extend(event.data["result"].artifacts)
        display(event)

    try:
        with Display() as display:
            result = api.run_finetune(
                preset,
                edits=list(edit or []),
                texts=texts,
                src_text=src,
                images=images,
                n_samples=samples,
                overrides=overrides,
                checkpoint=checkpoint,
                clip_model=clip_model,
                device=state.device,
                output=output,
                library=library,
                save_dtype=save_dtype.value,
                overwrite=overwrite,
                run_dir=run_dir,
                resume=resume,
                n_preview=previews,
                long_runs=long_runs_policy(yes, display),
                progress=on_event,
            )
    except KeyboardInterrupt:
        for path in saved:
            console.out.print(str(path), markup=False, highlight=False, soft_wrap=True)
        raise

    if not console.is_quiet():
        table = Table(
            title=f"Fine-tuned {len(result.pairs)} edit(s) of {preset.name} in {result.seconds:.1f} s"
        )
        table.add_column("edit", style="bold")
        table.add_column("source -> target")
        table.add_column("epochs", justify="right")
        table.add_column("final losses")
        table.add_column("time", justify="right")
        table.add_column("artifact")
        for r in result.pairs:
            table.add_row(
                escape(r.pair.key),
                escape(f"{r.pair.src} -> {r.pair.trg}"),
                str(r.config.epochs),
                _format_losses(r.losses),
                f"{r.seconds:.1f} s",
                "\n".join(escape(str(p)) for p in r.artifacts),
            )
        console.err.print(table)
        console.info(
            f"{result.n_images} training image(s); latent cache: {result.cache_hits} hit(s), "
            f"{result.cache_misses} computed."
        )
    for path in result.artifacts:
        console.out.print(str(path), markup=False, highlight=False, soft_wrap=True)


def register(app: typer.Typer) -> None:
    app.command("finetune", epilog=EXAMPLES)(finetune_command)
