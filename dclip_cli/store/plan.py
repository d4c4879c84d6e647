"""Which files a preset's commands need, and which of them are here: ``dclip models fetch --preset`` (and its
``--dry-run``) and ``dclip doctor`` show the same plan.

A preset's commands need its base diffusion model; CLIP (fine-tuning, domain detection and the CLIP metrics), the
LPIPS trunk (the LPIPS metric and loss), the identity network when the preset has one, and the official fine-tuned
models of its named edits.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dclip_cli.checkpoints import cache
from dclip_cli.checkpoints.registry import CheckpointSpec
from dclip_cli.presets.manager import get_registry
from dclip_cli.store.specs import find_spec

#: the CLIP model the applications use unless told otherwise (``--clip-model``)
DEFAULT_CLIP = "clip-vit-b-16"
#: the LPIPS trunk of the metrics and the LPIPS loss
DEFAULT_LPIPS = "lpips-alex"


@dataclass
class PlannedFile:
    """One file of a plan.

    Args:
        name: registry name.
        filename: file name.
        role: why it is needed (``base model``, ``CLIP``, ``LPIPS``, ``identity``, ``official edit pixar``).
        size: bytes on disk when cached, else the registry's size (``None`` when unknown).
        approximate: ``size`` is an approximate registry size.
        cached: whether the file is here (in dclip's cache, or torch hub's copy for the LPIPS trunk).
        downloadable: whether the registry has a URL for it (else it needs a manual download).
        path: where it is (or will be).
        spec: the registry entry (``None`` when no installed plugin registers the name).
    """

    name: str
    filename: str
    role: str
    size: int | None
    approximate: bool
    cached: bool
    downloadable: bool
    path: Path | None
    spec: CheckpointSpec | None = None

    def to_dict(self) -> dict[str, Any]:
        d = {k: v for k, v in self.__dict__.items() if k != "spec"}
        d["path"] = str(self.path) if self.path is not None else None
        return d


def preset_needs(preset_name: str) -> list[tuple[str, str]]:
    """``(registry name, role)`` of every file the commands of ``preset_name`` need, base model first.

    Raises:
        UnknownPresetError: no installed preset has that name.
    """
    registry = get_registry()
    preset = registry.preset(preset_name)
    names = [(preset.checkpoint, "base model")]
    names += [(extra, "extra") for extra in preset.extra_checkpoints]
    names += [(DEFAULT_CLIP, "CLIP"), (DEFAULT_LPIPS, "LPIPS")]
    ident = registry.identity_models.get(preset.identity_model or "")
    if ident is not None and ident.checkpoint:
        names.append((ident.checkpoint, "identity"))
    names += [(e.checkpoint, f"official edit {e.key}") for e in preset.edits.values() if e.checkpoint]
    seen: set[str] = set()
    out = []
    for name, role in names:
        if name not in seen:
            seen.add(name)
            out.append((name, role))
    return out


def _torch_hub_dir() -> Path:
    """torch hub's folder, as ``torch.hub.get_dir()`` computes it, without importing torch when it is not loaded."""
    torch = sys.modules.get("torch")
    if torch is not None:
        return Path(torch.hub.get_dir())
    home = os.environ.get("TORCH_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or "~/.cache", "torch"
    )
    return Path(home).expanduser() / "hub"


def _lpips_hub_copy(spec: CheckpointSpec) -> Path | None:
    """torch hub's copy of an LPIPS trunk (``store.lpips_trunk`` uses it instead of downloading again; the spec's
    file name is torchvision's)."""
    if spec.format != "torchvision":
        return None
    path = _torch_hub_dir() / "checkpoints" / spec.filename
    return path if path.is_file() else None


def plan_file(name: str, role: str = "", cache_dir: str | os.PathLike[str] | None = None) -> PlannedFile:
    """The status of one registered file (a name no plugin registers: not cached, not downloadable)."""
    spec = find_spec(name)
    if spec is None:
        return PlannedFile(name, "", role, None, False, False, False, None)
    path = cache.checkpoint_path(spec, cache_dir)
    if not path.is_file():
        path = _lpips_hub_copy(spec) or path
    if path.is_file():
        return PlannedFile(
            spec.name, spec.filename, role, path.stat().st_size, False, True, bool(spec.urls), path, spec
        )
    size, approximate = spec.display_size
    return PlannedFile(spec.name, spec.filename, role, size, approximate, False, bool(spec.urls), path, spec)


def plan_preset(preset_name: str, cache_dir: str | os.PathLike[str] | None = None) -> list[PlannedFile]:
    """The files the commands of a preset need, each with its size and whether it is here."""
    return [plan_file(name, role, cache_dir) for name, role in preset_needs(preset_name)]


@dataclass
class PlanTotals:
    """Sums over a plan: bytes known, whether some are estimates, and how many files have no known size."""

    size: int
    approximate: bool
    unknown: int

    def text(self, fmt: Any) -> str:
        """``1.2 GB``, ``about 1.2 GB``, ``1.2 GB + 2 files of unknown size``."""
        words = ("about " if self.approximate else "") + fmt(self.size)
        if self.unknown:
            words += f" + {self.unknown} file{'s' if self.unknown != 1 else ''} of unknown size"
        return words


def totals(files: list[PlannedFile]) -> PlanTotals:
    known = [f for f in files if f.size is not None]
    return PlanTotals(
        sum(f.size or 0 for f in known), any(f.approximate for f in known), len(files) - len(known)
    )
