"""The edit library: fine-tuned edits stored as ``<data_dir>/edits/<preset>/<key>.safetensors``.

``dclip finetune`` and on-the-fly fine-tuning save into it; ``dclip edit`` looks in it before downloading an official
model or fine-tuning; ``dclip models list|rm|import`` manage it.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dclip_cli.checkpoints import cache

if TYPE_CHECKING:
    from dclip_cli.presets.preset import Preset

_PLAIN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]*(/[A-Za-z0-9][A-Za-z0-9_.\-]*)?")


def is_plain_name(name: str) -> bool:
    """Whether ``name`` can be a library or registry name (``face/pixar``), not a path."""
    return _PLAIN_NAME.fullmatch(name) is not None and ".." not in name


def find_match(
    preset: Preset,
    src_text: str,
    trg_text: str,
    *,
    base_sha256: str | None,
    t0: int | None,
    accept: Callable[[dict[str, Any]], bool] | None = None,
) -> Path | None:
    """The newest artifact in the edit library made for this preset's base with these texts and this t0.

    An artifact matches when its metadata records the same source and target text and the same t0 (any t0 when
    ``t0`` is ``None``), was made from the same base checkpoint (its SHA-256 when recorded, else the preset's
    checkpoint name), and ``accept(metadata)`` is true when given.
    """
    from dclip_cli.artifacts import read_artifact
    from dclip_cli.errors import DclipError

    matches: list[tuple[float, Path]] = []
    for name, path in cache.list_library():
        if not name.startswith(f"{preset.name}/"):
            continue
        try:
            info = read_artifact(path)
        except DclipError:
            continue
        meta = info.metadata
        if meta.get("src_text") != src_text or meta.get("trg_text") != trg_text:
            continue
        if meta.get("t0") is None or (t0 is not None and int(meta["t0"]) != t0):
            continue
        if accept is not None and not accept(meta):
            continue
        art_sha = meta.get("base_sha256")
        if art_sha and base_sha256:
            if art_sha != base_sha256:
                continue
        elif meta.get("base_checkpoint") not in (None, preset.checkpoint):
            continue
        matches.append((path.stat().st_mtime, path))
    return max(matches)[1] if matches else None


def free_name(preset: Preset, key: str, t0: int) -> str:
    """The library name for a new artifact of edit ``key``: ``<preset>/<key>``, or, when that name is taken (by an
    artifact with other settings), the first free ``<preset>/<key>_t<t0>[-n]``."""
    name = f"{preset.name}/{key}"
    if cache.find_library_file(name) is None:
        return name
    candidate, n = f"{name}_t{t0}", 2
    while cache.find_library_file(candidate) is not None:
        candidate, n = f"{name}_t{t0}-{n}", n + 1
    return candidate


def write_entry_meta(path: Path, name: str, origin: str = "finetune") -> None:
    """Record an artifact's SHA-256 beside it, as ``dclip models import`` does, so ``verify`` can check it."""
    from dclip_cli.fileio import sha256_file

    cache.write_meta(
        path, cache.FileMeta(sha256_file(path), path.stat().st_size, name, "dclip", origin, None, False)
    )
