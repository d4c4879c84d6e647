"""``dclip plugins [list|install|uninstall]``: the preset plugins, and adding or removing one."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer

from dclip_cli.cli.options import JsonOpt

EXAMPLES = """
Examples:

  dclip plugins

  dclip plugins install dclip-cats

  dclip plugins install ./my-plugin/            # a project folder or a wheel works too

  dclip plugins uninstall dclip-cats
"""

plugins_app = typer.Typer(
    help="List the preset plugins dclip loaded, and install or uninstall one.",
    invoke_without_command=True,
)

PackageArg = Annotated[
    str,
    typer.Argument(
        help="A package on PyPI (dclip-cats), a requirement (dclip-cats>=1.2), a wheel, a project folder or a URL.",
        show_default=False,
        metavar="PACKAGE",
    ),
]


_KINDS = {
    "presets": "preset",
    "checkpoints": "checkpoint",
    "aligners": "aligner",
    "identity_models": "identity model",
}


def _show(plugins: list[Any], title: str) -> None:
    from rich.markup import escape
    from rich.table import Table

    from dclip_cli import console

    table = Table(title=title, title_justify="left")
    table.add_column("name", style="bold", no_wrap=True)
    table.add_column("package", overflow="fold")
    table.add_column("registers", overflow="fold")
    table.add_column("status", overflow="fold")
    for p in plugins:
        package = " ".join(x for x in (p.distribution or p.module, p.version) if x)
        parts = [
            f"{len(names)} {_KINDS.get(kind, kind)}{'s' if len(names) != 1 else ''}"
            + (f" ({', '.join(names)})" if len(names) <= 3 else "")
            for kind, names in p.registered.items()
            if names
        ]
        table.add_row(
            escape(p.name),
            escape(package),
            escape("; ".join(parts) or ", ".join(p.hooks)),
            f"[red]failed: {escape(p.error)}[/red]" if p.error else "[green]ok[/green]",
        )
    console.out.print(table)


def list_plugins(as_json: JsonOpt = False) -> None:
    """List the preset plugins dclip loaded (name, package, version, what each registers)."""
    from dclip_cli import console
    from dclip_cli.cli._common import load_registry_with_warnings

    registry = load_registry_with_warnings()
    if as_json:
        console.out.print_json(json.dumps([p.to_dict() for p in registry.plugins]))
        return
    _show(registry.plugins, "dclip plugins")


@plugins_app.callback(invoke_without_command=True)
def plugins(ctx: typer.Context, as_json: JsonOpt = False) -> None:
    """List the preset plugins dclip loaded (the same as 'dclip plugins list'), or install or uninstall one."""
    if ctx.invoked_subcommand is None:
        list_plugins(as_json)


@plugins_app.command("install", epilog=EXAMPLES)
def install(
    package: PackageArg,
    upgrade: Annotated[bool, typer.Option("--upgrade", "-U", help="Upgrade it if it is installed.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Install a preset plugin into the environment dclip runs in (what 'pipx inject dclip' does) and show what it
    registered."""
    from rich.markup import escape

    from dclip_cli import console
    from dclip_cli.presets.install import install_plugin

    change = install_plugin(
        package, upgrade=upgrade, output=lambda line: console.info(f"[dim]{escape(line)}[/dim]")
    )
    if as_json:
        console.out.print_json(json.dumps(change.to_dict()))
    else:
        verb = "is already installed" if change.already else "was installed"
        console.info(escape(f"{package} {verb} ({', '.join(change.distributions)})."))
        _show(change.plugins, f"What {', '.join(change.distributions)} registers")
    for plugin in change.plugins:
        if plugin.error:
            console.warn(
                escape(f"The plugin {plugin.name!r} is installed but failed to load: {plugin.error}")
            )
    if change.excluded:
        console.warn(
            escape(f"DCLIP_LOAD_PLUGINS keeps {', '.join(change.excluded)} from loading; add it to use it.")
        )
    if any(p.error for p in change.plugins):
        raise typer.Exit(1)


@plugins_app.command("uninstall", epilog=EXAMPLES)
def uninstall(
    name: Annotated[
        str,
        typer.Argument(
            help="The plugin's package (dclip-cats) or plugin name.", show_default=False, metavar="NAME"
        ),
    ],
) -> None:
    """Uninstall a preset plugin from the environment dclip runs in."""
    from rich.markup import escape

    from dclip_cli import console
    from dclip_cli.presets.install import uninstall_plugin

    change = uninstall_plugin(name, output=lambda line: console.info(f"[dim]{escape(line)}[/dim]"))
    presets = [n for p in change.plugins for n in p.registered.get("presets", [])]
    what = f"; its presets {', '.join(presets)} are gone" if presets else ""
    console.info(escape(f"Uninstalled {', '.join(change.distributions)}{what}."))


def register(app: typer.Typer) -> None:
    plugins_app.command("list")(list_plugins)
    app.add_typer(plugins_app, name="plugins")
