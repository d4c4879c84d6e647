"""``dclip models list|fetch|verify|rm|path|import``: the checkpoint cache and the library of edits."""

from __future__ import annotations

import json
import sys
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

  dclip models fetch --preset face --dry-run

  dclip models verify

  dclip models import ~/Downloads/afhq_dog_4m.pt --as afhq_dog

  dclip models rm face/smiling --yes

  dclip models path celeba_hq

  DCLIP_OFFLINE=1 dclip edit face.png --domain face --to pixar
"""

NamesArg = Annotated[
    list[str] | None,
    typer.Argument(
        help="Checkpoint names, e.g. celeba_hq, clip-vit-b-16, face/pixar.",
        show_default=False,
        metavar="NAME...",
    ),
]


def size_text(size: int | None, approximate: bool = False) -> str:
    """``351.0 MB``, ``~351.0 MB`` for a registry estimate, ``size unknown`` when nothing is known."""
    from dclip_cli.fileio import format_bytes

    if size is None:
        return "size unknown"
    return ("~" if approximate else "") + format_bytes(size)


def _interactive() -> bool:
    """Whether a person can answer a question (stdin and stderr are terminals)."""
    return sys.stdin.isatty() and sys.stderr.isatty()


@models_app.command("list", epilog=EXAMPLES)
def list_models(as_json: JsonOpt = False) -> None:
    """List registered checkpoints (size, cached, verified, path), partial downloads and the library's edits (with
    the settings they were trained with)."""
    from rich.markup import escape
    from rich.table import Table

    from dclip_cli import console, store
    from dclip_cli.checkpoints import cache
    from dclip_cli.cli._common import load_registry_with_warnings
    from dclip_cli.fileio import format_bytes

    load_registry_with_warnings()
    rows = store.list_models()
    edits = store.list_edits()
    partial = cache.list_partial()
    cached_bytes = sum(r.size or 0 for r in rows if r.cached)
    missing = [r for r in rows if not r.cached]
    totals = {
        "cached": cached_bytes,
        "not_cached": sum(r.size or 0 for r in missing if r.size is not None),
        "not_cached_approximate": any(r.approximate for r in missing),
        "not_cached_unknown": sum(1 for r in missing if r.size is None),
        "edits": sum(e.size for e in edits),
        "partial": sum(p.size for p in partial),
    }
    if as_json:
        data = {
            "cache_dir": str(cache.cache_dir()),
            "library_dir": str(cache.library_dir()),
            "models": [r.to_dict() for r in rows],
            "partial": [p.to_dict() for p in partial],
            "edits": [e.to_dict() for e in edits],
            "totals": totals,
        }
        console.out.print_json(json.dumps(data))
        return
    for e in edits:
        if e.problem:
            console.warn(
                escape(f"A damaged library edit: {e.problem} Remove it with 'dclip models rm {e.name}'.")
            )
    table = Table(title=f"Checkpoints in {escape(str(cache.checkpoints_dir()))}", title_justify="left")
    table.add_column("name", style="bold", no_wrap=True)
    table.add_column("size", justify="right", no_wrap=True)
    table.add_column("status", no_wrap=True)
    wide = console.out.width >= 120  # the file column only where it fits ('dclip models path NAME' prints it)
    if wide:
        table.add_column("file", overflow="fold")
    root = cache.checkpoints_dir()
    for r in rows:
        if r.cached:
            status = "cached" + {None: "", True: ", verified", False: ", [red]CHANGED[/red]"}[r.verified]
            if r.override:
                status += " [yellow](unpinned)[/yellow]"
        elif r.partial:
            status = f"[yellow]partial, {format_bytes(r.partial)}[/yellow]"
        elif r.downloadable:
            status = "[dim]download on first use[/dim]"
        else:
            status = "[yellow]manual download[/yellow]"
        try:
            where = r.path.relative_to(root).as_posix()
        except ValueError:
            where = str(r.path)
        cells = [escape(r.name) + ("" if r.registered else " [dim](unregistered)[/dim]")]
        cells += [size_text(r.size, r.approximate), status] + ([escape(where)] if wide else [])
        table.add_row(*cells)
    unknown = totals["not_cached_unknown"]
    to_get = ("about " if totals["not_cached_approximate"] else "") + format_bytes(totals["not_cached"])
    to_get += f" + {unknown} of unknown size" if unknown else ""
    table.caption = f"Cached: {format_bytes(cached_bytes)}; not cached: {to_get}."
    table.caption_justify = "left"
    console.out.print(table)
    if partial:
        part = Table(title="Partial downloads (the next fetch resumes them)", title_justify="left")
        part.add_column("name", style="bold", overflow="fold")
        part.add_column("received", justify="right", no_wrap=True)
        part.add_column("file", overflow="fold")
        for p in partial:
            got = format_bytes(p.size) + (f" of {format_bytes(p.total)}" if p.total else "")
            part.add_row(escape(p.name or p.relpath), got, escape(str(p.path)))
        part.caption = "Remove one with 'dclip models rm NAME'."
        part.caption_justify = "left"
        console.out.print(part)
    if not edits:
        console.info(escape(f"No fine-tuned edits in the library ({cache.library_dir()})."))
        return
    lib = Table(title=f"Fine-tuned edits in {escape(str(cache.library_dir()))}", title_justify="left")
    lib.add_column("name", style="bold", no_wrap=True)
    lib.add_column("size", justify="right", no_wrap=True)
    lib.add_column("trained with", overflow="fold")
    for e in edits:
        if e.problem:
            trained = "[red]unreadable[/red]"
        else:
            trained = (
                escape(e.training.summary() if e.training is not None else "") or "[dim]not recorded[/dim]"
            )
        lib.add_row(escape(e.name), format_bytes(e.size), trained)
    lib.caption = f"Total: {format_bytes(totals['edits'])}."
    lib.caption_justify = "left"
    console.out.print(lib)


def _plan_table(title: str, files: list[Any]) -> Any:
    from rich.markup import escape
    from rich.table import Table

    from dclip_cli.fileio import format_bytes
    from dclip_cli.store.plan import totals

    table = Table(title=title, title_justify="left")
    table.add_column("file", style="bold", overflow="fold", ratio=2)
    table.add_column("needed for", overflow="fold", ratio=2)
    table.add_column("size", justify="right", no_wrap=True)
    table.add_column("status", overflow="fold", ratio=2)
    for f in files:
        if f.cached:
            status = "[green]cached[/green]"
        elif f.spec is None:
            status = "[red]not registered[/red]"
        elif f.downloadable:
            status = "to download"
        else:
            status = "[yellow]manual download[/yellow]"
        table.add_row(
            escape(f"{f.name} ({f.filename})" if f.filename else f.name),
            escape(f.role),
            size_text(f.size, f.approximate),
            status,
        )
    todo = [f for f in files if not f.cached and f.downloadable]
    table.caption = (
        f"{len(files)} files, {totals(files).text(format_bytes)} in all; "
        f"{len(todo)} to download, {totals(todo).text(format_bytes)}."
    )
    table.caption_justify = "left"
    return table


@models_app.command("fetch", epilog=EXAMPLES)
def fetch(
    names: NamesArg = None,
    preset: Annotated[
        str | None,
        typer.Option(
            "--preset",
            "-p",
            metavar="PRESET",
            help="Fetch everything the preset's commands need: base model, CLIP, LPIPS trunk, identity weights and "
            "the official fine-tuned models.",
        ),
    ] = None,
    all_: Annotated[
        bool, typer.Option("--all", help="Fetch every registered checkpoint that has a URL.")
    ] = False,
    dry_run: Annotated[
        bool,
        typer.Option(
            "--dry-run", "-n", help="List the files, their sizes and what is cached; download nothing."
        ),
    ] = False,
) -> None:
    """Download checkpoints into the cache (verified; interrupted downloads resume; DCLIP_MIRROR first)."""
    from rich.markup import escape

    from dclip_cli import api, console, store
    from dclip_cli.cli._common import load_registry_with_warnings
    from dclip_cli.cli.display import Display
    from dclip_cli.errors import DclipError
    from dclip_cli.fileio import format_bytes
    from dclip_cli.store.plan import plan_file, plan_preset, totals

    load_registry_with_warnings()
    files = []
    if preset:
        files += plan_preset(preset)
    for name in [*(names or []), *(sorted(api.all_specs()) if all_ else [])]:
        files.append(plan_file(api.get_spec(name).name, "named" if name in (names or []) else "--all"))
    if not files:
        raise typer.BadParameter(
            "name at least one checkpoint, or use --preset or --all.", param_hint="NAME..."
        )
    files = list({f.name: f for f in files}.values())
    missing = [f.name for f in files if f.spec is None]
    if missing:
        for name in missing:
            api.get_spec(name)  # raises UnknownCheckpointError with suggestions
    bulk = bool(preset or all_)
    if dry_run:
        console.out.print(_plan_table("Files to fetch" + (f" for preset {preset}" if preset else ""), files))
        return
    todo = [f for f in files if not f.cached]
    if len(files) > 1:
        console.info(
            f"{len(files)} files; {len(todo)} to download ({totals(todo).text(format_bytes)}), "
            f"{len(files) - len(todo)} already cached."
        )
    failures: list[tuple[str, DclipError]] = []
    for f in files:
        spec = f.spec
        assert spec is not None
        if bulk and not spec.urls and not f.cached:
            console.warn(escape(f"{spec.name} needs a manual download: {store.manual_hint(spec)}"))
            continue
        try:
            if f.cached and f.path is not None and f.path != api.checkpoint_path(spec):
                path = f.path  # the LPIPS trunk torch hub already has
            else:
                with Display() as display:
                    path = api.fetch_checkpoint(spec, progress=display)
        except DclipError as exc:
            if len(files) == 1:
                raise
            failures.append((spec.name, exc))
            console.err.print(
                f"[red]Error:[/red] {escape(spec.name)}: {escape(exc.message)}", highlight=False
            )
            continue
        if f.cached:
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
        list[str],
        typer.Argument(help="Checkpoint or edit names to delete.", show_default=False, metavar="NAME..."),
    ],
    yes: Annotated[
        bool, typer.Option("--yes", "-y", help="Delete without asking (needed for library edits in scripts).")
    ] = False,
) -> None:
    """Delete cached checkpoints (or library edits with their fine-tuning run folders) and what dclip recorded about
    them. Asks first on a terminal; a library edit, which cannot be downloaded again, needs --yes in scripts."""
    from rich.markup import escape

    from dclip_cli import console, store
    from dclip_cli.cli._common import load_registry_with_warnings
    from dclip_cli.errors import ConfigError
    from dclip_cli.fileio import format_bytes

    load_registry_with_warnings()
    plans = [store.plan_removal(name) for name in names]
    for plan in plans:
        if not plan.files and not plan.folders:
            console.warn(escape(f"{plan.name} is not cached; nothing to remove."))
    plans = [p for p in plans if p.files or p.folders]
    if not plans:
        return
    edits = [p for p in plans if p.kind == "edit"]
    if not yes and _interactive():
        for plan in plans:
            what = "your fine-tuned edit" if plan.kind == "edit" else "the cached checkpoint"
            console.err.print(f"{escape(plan.name)}: {what}, {format_bytes(plan.size)}", highlight=False)
            for path in [*plan.files, *plan.folders]:
                console.err.print(f"  {escape(str(path))}", highlight=False)
        again = " Edits cannot be downloaded again." if edits else ""
        if not typer.confirm(f"Delete {format_bytes(sum(p.size for p in plans))}?{again}", err=True):
            console.info("Nothing was deleted.")
            raise typer.Exit(1)
    elif not yes and edits:
        raise ConfigError(
            f"{', '.join(p.name for p in edits)} {'is a fine-tuned edit' if len(edits) == 1 else 'are fine-tuned edits'}"
            f" ({format_bytes(sum(p.size for p in edits))}) that cannot be downloaded again; nothing was deleted.",
            hint="Pass --yes to delete without asking.",
        )
    for plan in plans:
        for path in store.remove(plan.name):
            console.info(escape(f"Removed {path}"))


@models_app.command("path", epilog=EXAMPLES)
def path(
    name: Annotated[str, typer.Argument(help="Checkpoint or edit name.", show_default=False, metavar="NAME")],
) -> None:
    """Print the local path of a cached checkpoint or library edit."""
    from dclip_cli import api, console

    console.out.print(str(api.model_path(name)), highlight=False, soft_wrap=True)


@models_app.command("import", epilog=EXAMPLES)
def import_(
    file: Annotated[
        Path,
        typer.Argument(
            exists=True,
            dir_okay=False,
            readable=True,
            help="The downloaded file.",
            show_default=False,
            metavar="FILE",
        ),
    ],
    name: Annotated[
        str,
        typer.Option(
            "--as",
            metavar="NAME",
            help="Registered checkpoint name (celeba_hq, face/pixar), or <preset>/<edit> for an edit of your own.",
            show_default=False,
        ),
    ],
    overwrite: OverwriteOpt = False,
    no_check: Annotated[
        bool, typer.Option("--no-check", help="Skip loading the file to check its format and keys.")
    ] = False,
    allow_unpinned: Annotated[
        bool,
        typer.Option(
            "--allow-unpinned",
            help="Accept a file whose SHA-256 differs from the registry's pinned one (a copy you trust); it is "
            "recorded as unpinned.",
        ),
    ] = False,
) -> None:
    """Import a file you downloaded by hand (format, keys, metadata and pinned hash are checked)."""
    from rich.markup import escape

    from dclip_cli import api, console, store
    from dclip_cli.checkpoints import cache

    api.get_registry()
    dest = store.import_file(
        file, name, check=not no_check, overwrite=overwrite, allow_unpinned=allow_unpinned
    )
    console.info(escape(f"Imported {file} as {name}."))
    meta = cache.read_meta(dest)
    if meta is not None and meta.override:
        console.warn(
            escape(
                f"{file} does not have the pinned SHA-256 of {name}; it was recorded as unpinned (sha256 "
                f"{meta.sha256}). 'dclip models rm {name}' removes it."
            )
        )
    console.out.print(str(dest), highlight=False, soft_wrap=True)


def register(app: Any) -> None:
    app.add_typer(models_app, name="models")
