"""``dclip presets list|show``: the installed domain presets."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from dclip_cli.cli.options import JsonOpt

presets_app = typer.Typer(help="List and inspect domain presets.", no_args_is_help=True)

EXAMPLES = """
Examples:

  dclip presets list

  dclip presets list --json

  dclip presets show face
"""


@presets_app.command("list", epilog=EXAMPLES)
def list_presets(as_json: JsonOpt = False) -> None:
    """List the installed presets (domains)."""
    from rich.table import Table

    from dclip_cli import console
    from dclip_cli.cli._common import load_registry_with_warnings

    registry = load_registry_with_warnings()
    presets = [registry.presets[name] for name in sorted(registry.presets)]
    if as_json:
        rows = [
            {
                "name": p.name,
                "description": p.description,
                "plugin": registry.preset_owner.get(p.name),
                "image_size": p.image_size,
                "checkpoint": p.checkpoint,
                "arch": p.arch,
                "t0": p.t0,
                "edits": sorted(p.edits),
            }
            for p in presets
        ]
        console.out.print_json(json.dumps(rows))
        return
    table = Table(title="dclip presets")
    table.add_column("name", style="bold")
    table.add_column("description")
    table.add_column("size", justify="right")
    table.add_column("checkpoint")
    table.add_column("t0", justify="right")
    table.add_column("edits", justify="right")
    table.add_column("plugin", style="dim")
    for p in presets:
        table.add_row(
            p.name,
            p.description,
            str(p.image_size),
            p.checkpoint,
            str(p.t0),
            str(len(p.edits)),
            registry.preset_owner.get(p.name, ""),
        )
    if not presets:
        console.warn("No presets are installed (DCLIP_LOAD_PLUGINS may exclude them).")
    console.out.print(table)


@presets_app.command("show", epilog=EXAMPLES)
def show_preset(
    name: Annotated[str, typer.Argument(help="Preset name, e.g. face.", show_default=False)],
    as_json: JsonOpt = False,
) -> None:
    """Show a preset's settings and named edits."""
    from rich.table import Table

    from dclip_cli import console
    from dclip_cli.cli._common import load_registry_with_warnings

    registry = load_registry_with_warnings()
    preset = registry.preset(name)
    if as_json:
        data = preset.to_dict()
        data["plugin"] = registry.preset_owner.get(preset.name)
        console.out.print_json(json.dumps(data))
        return
    settings = Table(title=f"preset {preset.name}: {preset.description}", show_header=False)
    settings.add_column("setting", style="bold")
    settings.add_column("value")
    for key in (
        "image_size", "checkpoint", "arch", "source_text", "domain_prompt", "t0", "n_inv_steps", "n_gen_steps",
        "n_train_steps", "lr", "clip_weight", "l1_weight", "id_weight", "lpips_weight", "finetune_mode",
        "epochs", "n_train_images", "preprocess", "aligner", "identity_model",
    ):  # fmt: skip
        settings.add_row(key, str(getattr(preset, key)))
    settings.add_row("plugin", registry.preset_owner.get(preset.name, ""))
    console.out.print(settings)
    edits = Table(title=f"{len(preset.edits)} named edits")
    edits.add_column("key", style="bold")
    edits.add_column("source")
    edits.add_column("target")
    edits.add_column("t0", justify="right")
    edits.add_column("official model")
    for key in sorted(preset.edits):
        e = preset.edits[key]
        edits.add_row(key, e.src, e.trg, str(e.t0 or ""), e.checkpoint or "")
    console.out.print(edits)


def register(app: typer.Typer) -> None:
    app.add_typer(presets_app, name="presets")
