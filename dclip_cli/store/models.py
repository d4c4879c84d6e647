"""Diffusion models with their provenance: the one loader of base models, and edit models loaded on a base.

Every command that needs a base model (``invert``, ``finetune``, ``edit``, ``mix``, ``translate``) loads it here:
fetched through the store (or a local ``--checkpoint``), loaded strictly, tagged with the SHA-256 of its file (the
key of the latent cache and the check that an edit model belongs to it).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dclip_cli.progress import ProgressCallback, Reporter
from dclip_cli.store.specs import fetch

if TYPE_CHECKING:
    from dclip_cli.presets.preset import Preset

#: how each source of an edit model is named in messages
SOURCE_WORDS = {
    "model-file": "the file given with --model",
    "model-name": "the model named with --model",
    "library": "your edit library",
    "official": "the official DiffusionCLIP checkpoint",
    "finetuned": "a model fine-tuned just now",
}


@dataclass
class LoadedModel:
    """A diffusion model together with where it came from (for messages and the sidecars).

    Args:
        model: the eps-model (:class:`~dclip_cli.models.DiffusionModel`).
        role: ``base`` or ``edit``.
        name: registry name, library name or file name.
        path: file it was loaded from (``None`` for a model fine-tuned and not saved).
        sha256: SHA-256 of that file.
        source: how it was obtained: ``preset``, ``checkpoint`` (a local base file), ``model-file``,
            ``model-name``, ``library``, ``official`` or ``finetuned``.
        t0: return step it was fine-tuned for, when known.
        src_text: source text it was fine-tuned with, when known.
        trg_text: target text, when known.
    """

    model: Any
    role: str
    name: str
    path: Path | None
    sha256: str | None
    source: str
    t0: int | None = None
    src_text: str | None = None
    trg_text: str | None = None

    def record(self, role: str | None = None) -> dict[str, Any]:
        """The model's entry in a sidecar's ``models`` list."""
        from dclip_cli.manifest import model_record

        extra: dict[str, Any] = {"source": self.source}
        if self.role != "base":
            extra.update({"t0": self.t0, "src_text": self.src_text, "trg_text": self.trg_text})
        return model_record(role or self.role, self.name, path=self.path, sha256=self.sha256, **extra)

    def describe(self) -> str:
        """One sentence saying which edit model is used and where it came from."""
        where = SOURCE_WORDS.get(self.source, self.source)
        path = f" ({self.path})" if self.path is not None else ""
        t0 = f", t0 {self.t0}" if self.t0 is not None else ""
        return f"Edit model: {where}{path}{t0}."


def known_sha256(path: str | os.PathLike[str]) -> str:
    """SHA-256 of a checkpoint: from the cache's record when it matches the file's size, else hashed."""
    from dclip_cli.checkpoints import cache
    from dclip_cli.fileio import sha256_file

    file = Path(path)
    meta = cache.read_meta(file)
    if meta is not None and meta.sha256 and meta.size == file.stat().st_size:
        return str(meta.sha256)
    return sha256_file(file)


def load_base(
    preset: Preset | None,
    *,
    checkpoint: str | os.PathLike[str] | None = None,
    arch: str | None = None,
    arch_config: dict[str, Any] | None = None,
    device: Any = None,
    progress: Reporter | ProgressCallback | None = None,
) -> LoadedModel:
    """Load a base diffusion model: the preset's checkpoint (fetched into the cache), or a local ``checkpoint``.

    Args:
        preset: gives the checkpoint name and, without ``checkpoint``, the architecture.
        checkpoint: a local file used instead of the preset's.
        arch: architecture of ``checkpoint`` (``None``: detected from its keys).
        arch_config: architecture settings of ``checkpoint`` (``None``: from its metadata or shapes).
        device: where to put it.
        progress: receives the download events.

    Returns:
        The model in eval mode without gradients, its ``sha256`` attribute set to the file's SHA-256.
    """
    from dclip_cli.models import load_diffusion_model

    if checkpoint is not None:
        path = Path(checkpoint).expanduser()
        name, source = path.name, "checkpoint"
    else:
        if preset is None:
            raise TypeError("load_base needs a preset or a checkpoint")
        path = fetch(preset.checkpoint, progress=progress)
        name, source = preset.checkpoint, "preset"
        arch, arch_config = preset.arch, dict(preset.arch_config)
    Reporter.of(progress).info(f"Loading the base model {name}.")
    model = load_diffusion_model(path, arch=arch, config=arch_config, device=device)
    sha = known_sha256(path)
    model.sha256 = sha  # lets artifacts check that an edit model belongs to this base
    model.requires_grad_(False)
    model.eval()
    return LoadedModel(model, "base", name, path, sha, source)


def load_edit(
    path: str | os.PathLike[str],
    base: LoadedModel,
    *,
    name: str,
    source: str,
    sha256: str | None = None,
) -> LoadedModel:
    """Load a fine-tuned artifact (dclip ``.safetensors`` or official ``.pth``) on ``base``.

    Raises:
        IncompatibleModelError: the artifact was made for another base or architecture.
        CheckpointError: the file is missing or unreadable, or its metadata is damaged.
    """
    from dclip_cli.artifacts import load_artifact
    from dclip_cli.store.library import read_entry

    file = Path(path)
    read_entry(
        file
    )  # a damaged metadata block is a CheckpointError naming the file, not a crash while loading
    model = load_artifact(file, base.model, base_sha256=base.sha256)
    model.requires_grad_(False)
    meta = getattr(getattr(model, "artifact", None), "metadata", {}) or {}
    t0 = meta.get("t0")
    return LoadedModel(
        model,
        "edit",
        name,
        file,
        sha256 or known_sha256(file),
        source,
        t0=int(t0) if t0 is not None else None,
        src_text=meta.get("src_text"),
        trg_text=meta.get("trg_text"),
    )
