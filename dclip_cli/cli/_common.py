"""State shared by all commands: the global options of ``@app.callback()``."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import typer


@dataclass
class State:
    """Global options, stored on ``ctx.obj`` by the root callback."""

    device: str = "auto"
    cache_dir: Path | None = None
    verbose: bool = False
    quiet: bool = False


def get_state(ctx: typer.Context) -> State:
    """Return the global options of this invocation (defaults when a command is invoked directly)."""
    root = ctx.find_root()
    obj = root.obj
    if not isinstance(obj, State):
        obj = State()
        root.obj = obj
    return obj


def load_registry_with_warnings():  # noqa: ANN201 - returns dclip_cli.presets.manager.Registry
    """Load the preset registry and print each plugin warning once on stderr."""
    from dclip_cli import console
    from dclip_cli.presets.manager import get_registry

    registry = get_registry()
    if not getattr(registry, "_warned", False):
        for message in registry.warnings:
            console.warn(message)
        registry._warned = True  # type: ignore[attr-defined]
    return registry


def tune_runtime(state: State) -> None:
    """Per-process speed settings for a compute command (imports torch: call it inside command bodies).

    On the CPU, glibc is told to keep freed memory mapped (see ``dclip_cli.precision.tune_cpu_allocator``):
    re-faulting activations otherwise costs up to 1.7x on UNet forwards.
    """
    from dclip_cli.device import resolve_device
    from dclip_cli.precision import tune_cpu_allocator

    join_torchrun(state)
    if resolve_device(state.device).type == "cpu":
        tune_cpu_allocator()


def join_torchrun(state: State) -> None:
    """Under torchrun: join the job (:func:`dclip_cli.distributed.setup`, which refuses a contradicting
    ``--device``), take the rank's device, print as rank 0 or as another rank (``console.configure_rank``) and stop
    like an interrupted run when torchrun sends SIGTERM. Nothing happens outside torchrun."""
    from dclip_cli import console, distributed

    ctx = distributed.setup(state.device)
    if ctx.active:
        state.device = str(ctx.device)
        console.configure_rank(ctx.rank)
        distributed.stop_on_sigterm()
