"""``dclip plugins``: the loaded preset plugins."""

from __future__ import annotations

import json

import typer

from dclip_cli.cli.options import JsonOpt


def plugins(as_json: JsonOpt = False) -> None:
    """List the preset plugins dclip loaded (name, package, version, hooks)."""
    from rich.table import Table

    from dclip_cli import console
    from dclip_cli.cli._common import load_registry_with_warnings

    registry = load_registry_with_warnings()
    if as_json:
        console.out.print_json(json.dumps([p.to_dict() for p in registry.plugins]))
        return
    table = Table(title="dclip plugins")
    for col in ("name", "module", "distribution", "version", "hooks", "status"):
        table.add_column(col)
    for p in registry.plugins:
        table.add_row(
            p.name,
            p.module,
            p.distribution or "",
            p.version or "",
            ", ".join(p.hooks),
            "[red]failed[/red]" if p.error else "[green]ok[/green]",
        )
    console.out.print(table)


def register(app: typer.Typer) -> None:
    app.command("plugins")(plugins)
