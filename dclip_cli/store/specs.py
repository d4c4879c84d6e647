"""Checkpoint names: the specs the core and the plugins register, and fetching by name.

The core's specs (:mod:`dclip_cli.checkpoints.builtin`: CLIP, facenet, the LPIPS trunks) come first; preset plugins
add theirs through the ``register_checkpoints`` hook (``dclip_cli.presets.manager.get_registry().checkpoints``). A
plugin cannot replace a core name.
"""

from __future__ import annotations

import difflib
import os
from pathlib import Path

from dclip_cli.checkpoints import cache, download
from dclip_cli.checkpoints.builtin import CORE_SPECS
from dclip_cli.checkpoints.registry import CheckpointSpec
from dclip_cli.distributed import current
from dclip_cli.errors import UnknownCheckpointError
from dclip_cli.presets.manager import get_registry
from dclip_cli.progress import ProgressCallback, Reporter
from dclip_cli.store.shared_cache import shared_fetch


def all_specs() -> dict[str, CheckpointSpec]:
    """Every known spec by name: the core's first, then the plugins' (a plugin cannot replace a core name)."""
    specs = dict(CORE_SPECS)
    for name, spec in get_registry().checkpoints.items():
        specs.setdefault(name, spec)
    return specs


def get_spec(name: str) -> CheckpointSpec:
    """Return the spec registered as ``name`` (or with ``name`` among its aliases, such as ``ViT-B/16``).

    Raises:
        ConfigError: ``name`` is not a valid name (for example it contains ``..``).
        UnknownCheckpointError: nothing is registered under that name.
    """
    cache.validate_name(name)
    specs = all_specs()
    if name in specs:
        return specs[name]
    for spec in specs.values():
        if name in spec.aliases:
            return spec
    known = sorted(specs) + sorted(a for s in specs.values() for a in s.aliases)
    close = difflib.get_close_matches(name, known, n=3)
    hint = f"Did you mean {', '.join(close)}? " if close else ""
    raise UnknownCheckpointError(
        f"No checkpoint named {name!r} is registered.",
        hint=hint + "Run 'dclip models list' to see the registered checkpoints.",
    )


def find_spec(name: str) -> CheckpointSpec | None:
    """Like :func:`get_spec`, but ``None`` for an unknown name."""
    try:
        return get_spec(name)
    except UnknownCheckpointError:
        return None


def fetch(
    name_or_spec: str | CheckpointSpec,
    *,
    progress: Reporter | ProgressCallback | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    offline: bool | None = None,
    settings: download.DownloadSettings | None = None,
) -> Path:
    """The cached file of a registered checkpoint, downloaded and verified first when needed
    (:func:`dclip_cli.checkpoints.download.fetch` of its spec). Under torchrun only local rank 0 of each node
    downloads; the other ranks wait for its file (:func:`dclip_cli.store.shared_cache.shared_fetch`).

    Raises:
        UnknownCheckpointError: no registry entry has that name; and as :func:`download.fetch`.
    """
    spec = name_or_spec if isinstance(name_or_spec, CheckpointSpec) else get_spec(name_or_spec)
    ctx = current()

    def get() -> Path:
        return download.fetch(
            spec, cache_dir=cache_dir, progress=progress, offline=offline, settings=settings
        )

    return shared_fetch(spec, ctx, get, cache_dir) if ctx.active else get()


def manual_hint(spec: CheckpointSpec) -> str:
    """The hint telling a user how to get ``spec``'s file by hand."""
    return download.manual_hint(spec)
