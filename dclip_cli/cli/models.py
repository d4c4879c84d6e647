"""``dclip models list|fetch|verify|rm|path|import``: the checkpoint cache and the library of edits."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from dclip_cli.cli.options import JsonOpt, OverwriteOpt

models_app = typer.Typer(
    help="Manage checkpoints: list, download, verify, remove and import them.", no_args_is_help=True
)

EXAMPLES = """
Examples:

  dclip models list

  dclip models fetch celeba_hq clip-vit-b-16

  dclip models fetch --preset face

  dclip models verify

  dclip models import ~/Downloads/afhq_dog_4m.pt --as afhq_dog

  dclip models path celeba_hq

  DCLIP_OFFLINE=1 dclip edit face.png --domain face --to pixar
"""

NamesArg = Annotated[
    list[str] | None,
    typer.Argument(help="Checkpoint names, e.g. celeba_hq, clip-vit-b-16, face/pixar.", show_default=False),
]


def _human(size: int | None) -> str:
    if size is None:
        return "?"
    value = float(size)
    for unit in ("B", "kB", "MB", "GB"):
        if value < 1000 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{size} B"  # pragma: no cover


def _yes_no(value: bool | None) -> str:
    return "-" if value is None else ("yes" if value else "[red]CHANGED[/red]")


@models_app.command("list", epilog=EXAMPLES)
def list_models(as_json: JsonOpt = False) -> None:
    """List registered checkpoints (size, cached, verified, path) and the fine-tuned edits in the library."""
    from rich.markup import escape
    from rich.table import Table

    from dclip_cli import api, console
    from dclip_cli.checkpoints import cache
    from dclip_cli.cli._common import load_registry_with_warnings

    load_registry_with_warnings()
    rows = api.list_models()
    edits = api.list_edits()
    if as_json:
        data = {
            "cache_dir": str(cache.cache_dir()),
            "library_dir": str(cache.library_dir()),
            "models": [r.to_dict() for r in rows],
            "edits": [e.to_dict() for e in edits],
        }
        console.out.print_json(json.dumps(data))
        return
    table = Table(title=f"Checkpoints in {escape(str(cache.checkpoints_dir()))}")
    table.add_column("name", style="bold", overflow="fold")
    table.add_column("size", justify="right", no_wrap=True)
    table.add_column("cached")
    table.add_column("verified")
    table.add_column("path / source", overflow="fold")
    for r in rows:
        if r.cached:
            where = escape(str(r.path))
        elif r.downloadable:
            where = "[dim]download on first use[/dim]"
        else:
            where = "[yellow]manual download[/yellow]"
        table.add_row(
            escape(r.name) + ("" if r.registered else " [dim](unregistered)[/dim]"),
            _human(r.size),
            "yes" if r.cached else "no",
            _yes_no(r.verified) if r.cached else "",
            where,
        )
    console.out.print(table)
    lib = Table(title=f"Fine-tuned edits in {escape(str(cache.library_dir()))}")
    lib.add_column("name", style="bold", overflow="fold")
    lib.add_column("size", justify="right")
    lib.add_column("path", overflow="fold")
    for e in edits:
        lib.add_row(escape(e.name), _human(e.size), escape(str(e.path)))
    if edits:
        console.out.print(lib)
    else:
        console.info(escape(f"No fine-tuned edits in the library ({cache.library_dir()})."))


def _preset_checkpoints(preset_name: str) -> list[str]:
    from dclip_cli.cli._common import load_registry_with_warnings

    registry = load_registry_with_warnings()
    preset = registry.preset(preset_name)
    names = [preset.checkpoint, *getattr(preset, "extra_checkpoints", ())]
    ident = getattr(preset, "identity_model", None)
    if ident and ident in registry.identity_models:
        ckpt = getattr(registry.identity_models[ident], "checkpoint", None)
        if ckpt:
            names.append(ckpt)
    names += [e.checkpoint for e in preset.edits.values() if e.checkpoint]
    return list(dict.fromkeys(names))


@models_app.command("fetch", epilog=EXAMPLES)
def fetch(
    names: NamesArg = None,
    preset: Annotated[
        str | None,
        typer.Option(
            "--preset",
            "-p",
            help="Fetch everything a preset uses (base model, identity weights, official fine-tuned models).",
        ),
    ] = None,
    all_: Annotated[
        bool, typer.Option("--all", help="Fetch every registered checkpoint that has a URL.")
    ] = False,
) -> None:
    """Download checkpoints into the cache (verified; dropped connections resume; DCLIP_MIRROR first)."""
    from rich.markup import escape

    from dclip_cli import api, console
    from dclip_cli.cli._common import load_registry_with_warnings
    from dclip_cli.cli.display import Display
    from dclip_cli.errors import DclipError

    load_registry_with_warnings()
    targets = list(names or [])
    bulk = bool(preset or all_)
    if preset:
        targets += _preset_checkpoints(preset)
    if all_:
        targets += sorted(api.all_specs())
    if not targets:
        raise typer.BadParameter(
            "name at least one checkpoint, or use --preset or --all.", param_hint="NAMES"
        )
    specs = list({spec.name: spec for spec in (api.get_spec(name) for name in targets)}.values())
    failures: list[tuple[str, DclipError]] = []
    for spec in specs:
        if bulk and not spec.urls and not api.checkpoint_path(spec).is_file():
            console.warn(escape(f"{spec.name} needs a manual download: {api.manual_hint(spec)}"))
            continue
        cached = api.checkpoint_path(spec).is_file()
        try:
            with Display() as display:
                path = api.fetch_checkpoint(spec, progress=display)
        except DclipError as exc:
            if len(specs) == 1:
                raise
            failures.append((spec.name, exc))
            console.err.print(
                f"[red]Error:[/red] {escape(spec.name)}: {escape(exc.message)}", highlight=False
            )
            continue
        if cached:
            console.info(escape(f"{spec.name}: already cached"))
        console.out.print(str(path), highlight=False, soft_wrap=True)
    if failures:
        first_hint = failures[0][1].hint
        if first_hint:
            console.err.print(f"Hint: {first_hint}", highlight=False, markup=False)
        names_failed = ", ".join(name for name, _ in failures)
        console.err.print(f"[red]{len(failures)} checkpoint(s) failed:[/red] {names_failed}", highlight=False)
        raise typer.Exit(1)


@models_app.command("verify", epilog=EXAMPLES)
def verify(names: NamesArg = None, as_json: JsonOpt = False) -> None:
    """Re-hash cached checkpoints (all, or NAMES) against pinned and recorded SHA-256 values."""
    from rich.markup import escape
    from rich.table import Table

    from dclip_cli import api, console
    from dclip_cli.cli._common import load_registry_with_warnings

    load_registry_with_warnings()
    results = [api.verify_checkpoint(n) for n in names] if names else api.verify_cached()
    bad = [r for r in results if r.status in ("mismatch", "missing")]
    if as_json:
        console.out.print_json(json.dumps([r.to_dict() for r in results]))
    else:
        table = Table(title="Verification")
        table.add_column("name", style="bold", overflow="fold")
        table.add_column("status")
        table.add_column("checked against")
        table.add_column("sha256 / problem", overflow="fold")
        styles = {"ok": "green", "mismatch": "red", "missing": "red", "unchecked": "yellow"}
        for r in results:
            detail = (
                f"expected {r.expected}, found {r.actual}" if r.status == "mismatch" else (r.sha256 or "")
            )
            if r.status == "missing":
                detail = f"not cached; run 'dclip models fetch {r.name}'"
            table.add_row(
                escape(r.name), f"[{styles[r.status]}]{r.status}[/]", r.checked or "-", escape(detail)
            )
        if results:
            console.out.print(table)
        else:
            console.info("Nothing is cached yet.")
    if bad:
        console.err.print(
            f"[red]{len(bad)} file(s) failed verification.[/red] Remove them with 'dclip models rm NAME' and fetch "
            "them again.",
            highlight=False,
        )
        raise typer.Exit(1)


@models_app.command("rm", epilog=EXAMPLES)
def rm(
    names: Annotated[
        list[str], typer.Argument(help="Checkpoint or edit names to delete.", show_default=False)
    ],
) -> None:
    """Delete cached checkpoints (or library edits) and what dclip recorded about them."""
    from rich.markup import escape

    from dclip_cli import api, console

    api.get_registry()
    for name in names:
        removed = api.remove_checkpoint(name)
        if removed:
            for path in removed:
                console.info(escape(f"Removed {path}"))
        else:
            console.warn(escape(f"{name} is not cached; nothing to remove."))


@models_app.command("path", epilog=EXAMPLES)
def path(name: Annotated[str, typer.Argument(help="Checkpoint or edit name.", show_default=False)]) -> None:
    """Print the local path of a cached checkpoint or library edit."""
    from dclip_cli import api, console

    console.out.print(str(api.model_path(name)), highlight=False, soft_wrap=True)


@models_app.command("import", epilog=EXAMPLES)
def import_(
    file: Annotated[
        Path,
        typer.Argument(
            exists=True, dir_okay=False, readable=True, help="The downloaded file.", show_default=False
        ),
    ],
    name: Annotated[
        str,
        typer.Option(
            "--as",
            help="Registered checkpoint name (celeba_hq, face/pixar), or <preset>/<edit> for an edit of your own.",
            show_default=False,
        ),
    ],
    overwrite: OverwriteOpt = False,
    no_check: Annotated[
        bool, typer.Option("--no-check", help="Skip loading the file to check its format and keys.")
    ] = False,
) -> None:
    """Import a file you downloaded by hand (format, keys and pinned hash are checked)."""
    from rich.markup import escape

    from dclip_cli import api, console

    api.get_registry()
    dest = api.import_checkpoint(file, name, overwrite=overwrite, check=not no_check)
    console.info(escape(f"Imported {file} as {name}."))
    console.out.print(str(dest), highlight=False, soft_wrap=True)


def register(app: Any) -> None:
    app.add_typer(models_app, name="models")
