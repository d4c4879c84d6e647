"""The root ``dclip`` Typer app: global options, command registration and the error boundary."""

from __future__ import annotations

import importlib
import typing
from pathlib import Path
from typing import Annotated, Any

import typer
from typer.core import TyperArgument, TyperGroup

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


def _metavar(param: Any) -> str:
    """What a value of ``param`` is, for help (``PATH``, ``FILE``, ``TEXT``, ``N``, ``a|b``); ``""`` for flags.

    Works with Typer's own parameter types (``type_descriptor``, Typer >= 0.2x) and with click's (older Typer).
    """
    if getattr(param, "is_flag", False) or getattr(param, "count", False):
        return ""
    desc = getattr(param, "type_descriptor", None)
    if desc is not None:
        if desc.is_choice:
            return "|".join(str(getattr(c, "value", c)) for c in desc.choices or ())
        if desc.is_path:
            return {"file": "FILE", "dir": "DIR"}.get(desc.path_type, "PATH")
        annotation = desc.annotation
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if typing.get_origin(annotation) is not None and len(args) == 1:  # list[int], int | None
            annotation = args[0]
        kind = {int: "integer", float: "float"}.get(annotation, "text")
    else:
        click_type: Any = getattr(param, "type", None)
        if getattr(click_type, "choices", None):
            return "|".join(str(getattr(c, "value", c)) for c in click_type.choices)
        if hasattr(click_type, "dir_okay"):
            return "FILE" if not click_type.dir_okay else ("DIR" if not click_type.file_okay else "PATH")
        kind = str(getattr(click_type, "name", "text"))
    if kind.startswith("integer"):
        return "N"
    if kind.startswith("float"):
        return "NUMBER"
    return "TEXT"


class _Argument(TyperArgument):
    """An argument shown the classic way in usage lines (``IMAGE...``, not ``{images}...``) and without a Python type
    in help."""

    def _usage_display_name(self) -> str:
        name = self.metavar or (self.name or "").upper()
        if self.metavar is None and self.nargs != 1:
            name += "..."
        return name if self.required else f"[{name}]"

    def display_type_rich(self, ctx: Any) -> str | None:
        return None


def _name_values(command: Any) -> None:
    """Give every parameter of ``command`` (and of its sub-commands) a metavar that says what its value is: flags
    look like flags (no ``<bool>``, so ``--json true`` does not look valid), values are ``PATH``, ``TEXT``, ``N``."""
    for param in command.params:
        if isinstance(param, TyperArgument) and not isinstance(param, _Argument):
            param.__class__ = _Argument
            if param.metavar is None:
                param.metavar = (param.name or "").upper() + ("..." if param.nargs != 1 else "")
        elif getattr(param, "param_type_name", "") == "option" and param.metavar is None:
            param.metavar = _metavar(param)
    original = command.get_help_option

    def get_help_option(ctx: Any) -> Any:  # --help is made when help is asked for: a flag too
        option = original(ctx)
        if option is not None and option.metavar is None:
            option.metavar = ""
        return option

    command.get_help_option = get_help_option
    for sub in getattr(command, "commands", {}).values():
        _name_values(sub)


class DclipGroup(TyperGroup):
    """The root command group: the single place where exceptions become messages and exit codes."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        _name_values(self)

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
    "ui",
    "doctor",
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
            metavar="DEVICE",
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
