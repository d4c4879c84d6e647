"""The root ``dclip`` Typer app: global options, command registration and the error boundary."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Annotated

import typer
from typer.core import TyperGroup

from dclip_cli._version import __version__
from dclip_cli.cli._common import State


def _passthrough() -> tuple[type[BaseException], ...]:
    """Exceptions that carry their own exit code (usage errors, --help, Exit, Abort)."""
    kinds: list[type[BaseException]] = [typer.Exit, typer.Abort, SystemExit]
    kinds += [k for k in vars(typer.exceptions).values() if isinstance(k, type) and issubclass(k, Exception)]
    try:  # Typer releases that run on the standalone click package
        import click

        kinds += [click.ClickException, click.exceptions.Exit, click.exceptions.Abort]
    except ImportError:
        pass
    return tuple(kinds)


_PASSTHROUGH = _passthrough()


class DclipGroup(TyperGroup):
    """The root command group: the single place where exceptions become messages and exit codes."""

    def invoke(self, ctx: typer.Context):  # type: ignore[override]  # noqa: ANN201
        try:
            return super().invoke(ctx)
        except _PASSTHROUGH:
            raise
        except BaseException as exc:  # noqa: BLE001 - translated once, here
            from dclip_cli.cli.errors import report

            ctx.exit(report(exc))


#: command modules under ``dclip_cli.cli``, in ``--help`` order; each defines ``register(app)``.
COMMANDS: tuple[str, ...] = (
    "edit",
    "finetune",
    "mix",
    "translate",
    "invert",
    "score",
    "models",
    "presets",
    "plugins",
)

app = typer.Typer(
    name="dclip",
    cls=DclipGroup,
    help="Edit real images with text using DiffusionCLIP: invert, fine-tune, edit, mix and translate.",
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode="rich",
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version_callback(value: bool) -> None:
    if value:
        typer.echo(f"dclip {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    ctx: typer.Context,
    device: Annotated[
        str,
        typer.Option(
            "--device",
            help="Compute device: auto (cuda, then mps, then cpu), cpu, cuda, cuda:N or mps.",
            envvar="DCLIP_DEVICE",
        ),
    ] = "auto",
    cache_dir: Annotated[
        Path | None,
        typer.Option(
            "--cache-dir",
            file_okay=False,
            help="Checkpoint cache directory (default: $DCLIP_CACHE, else the user cache directory).",
        ),
    ] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Show more detail on stderr.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Show only warnings and errors.")] = False,
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_version_callback, is_eager=True, help="Show the version and exit."
        ),
    ] = False,
) -> None:
    """Edit real images with text using DiffusionCLIP."""
    from dclip_cli import console

    if device.split(":", 1)[0].lower() not in ("auto", "cpu", "cuda", "mps"):
        raise typer.BadParameter(
            f"{device!r} is not a device; use auto, cpu, cuda, cuda:N or mps.", param_hint="'--device'"
        )
    ctx.obj = State(device=device, cache_dir=cache_dir, verbose=verbose, quiet=quiet)
    console.configure(quiet=quiet, verbose=verbose)
    if cache_dir is not None:
        try:
            from dclip_cli.checkpoints import cache

            cache.set_cache_dir_override(cache_dir)
        except (ImportError, AttributeError):  # pragma: no cover - until the store lands
            import os

            os.environ["DCLIP_CACHE"] = str(cache_dir)


for _name in COMMANDS:
    importlib.import_module(f"dclip_cli.cli.{_name}").register(app)


def main() -> None:
    """Console-script entry point."""
    from dclip_cli.cli.errors import install_sigterm_handler

    install_sigterm_handler()
    app()
