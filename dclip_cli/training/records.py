"""What a fine-tuning run records: the fingerprint that names its run folder, and the provenance stored in the
artifacts it saves (settings, texts, base, how it was trained and what its numerics depend on)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from torch import nn

from dclip_cli.latents import tensor_sha256
from dclip_cli.manifest import numerics_record
from dclip_cli.textedit import TextEdit
from dclip_cli.training.config import FinetuneConfig

__all__ = ["artifact_metadata", "default_run_dir", "numerics_record", "run_fingerprint", "weights_sha256"]


def run_fingerprint(
    *, preset: str, base_sha256: str, pair: TextEdit, config: FinetuneConfig, image_keys: Sequence[str]
) -> str:
    """A hash of everything that determines a run except the number of epochs (so ``--resume`` can extend one)."""
    settings = {k: v for k, v in config.to_dict().items() if k not in ("epochs", "n_gen_steps")}
    doc = {
        "preset": preset,
        "base_sha256": base_sha256,
        "src_text": pair.src,
        "trg_text": pair.trg,
        "settings": settings,
        "images": list(image_keys),
    }
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode("utf-8")).hexdigest()


def default_run_dir(preset: str, pair: TextEdit, fingerprint: str) -> Path:
    """``<data_dir>/runs/<preset>-<key>-<fingerprint[:10]>``."""
    from dclip_cli.checkpoints.cache import data_dir

    return data_dir() / "runs" / f"{preset}-{pair.key}-{fingerprint[:10]}"


def artifact_metadata(
    *,
    preset: str,
    pair: TextEdit,
    config: FinetuneConfig,
    base_checkpoint: str,
    base_sha256: str,
    clip_model: str,
    n_images: int,
    model: nn.Module | None = None,
) -> dict[str, Any]:
    """The provenance stored in an artifact (see :mod:`dclip_cli.artifacts`)."""
    meta: dict[str, Any] = {
        "preset": preset,
        "edit": pair.key,
        "base_checkpoint": base_checkpoint,
        "base_sha256": base_sha256,
        "src_text": pair.src,
        "trg_text": pair.trg,
        "t0": config.t0,
        "n_inv_steps": config.n_inv_steps,
        "n_train_steps": config.n_train_steps,
        "n_gen_steps": config.n_gen_steps,
        "mode": config.mode,
        "loss_weights": config.loss_weights(),
        "lr": config.lr,
        "lr_gamma": config.lr_gamma,
        "epochs": config.epochs,
        "batch_size": config.batch_size,
        "eta": config.eta,
        "seed": config.seed,
        "precision": config.precision,
        "checkpointing": config.checkpointing,
        "clip_model": clip_model,
        "n_train_images": n_images,
    }
    if model is not None:
        meta["arch"] = getattr(model, "arch", None)
        meta["arch_config"] = getattr(model, "config", None)
    return meta


def weights_sha256(model: nn.Module) -> str:
    """SHA-256 over a model's state dict (names, shapes and float32 bytes), for bases not loaded from a file."""
    h = hashlib.sha256()
    for name, value in model.state_dict().items():
        h.update(name.encode("utf-8"))
        h.update(tensor_sha256(value).encode("ascii"))
    return h.hexdigest()
