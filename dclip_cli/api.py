"""The library layer the CLI calls: thin functions over the core modules.

``dclip_cli.cli`` imports only this module, ``errors``, ``console`` and the config records; everything here may
import torch.
"""

from __future__ import annotations

from dclip_cli.artifacts import load_artifact, read_artifact, save_artifact
from dclip_cli.checkpoints.cache import checkpoint_path
from dclip_cli.checkpoints.download import fetch as fetch_checkpoint
from dclip_cli.checkpoints.download import manual_hint
from dclip_cli.checkpoints.store import (
    all_specs,
    get_spec,
    list_edits,
    list_models,
    model_path,
    verify_cached,
)
from dclip_cli.checkpoints.store import import_file as import_checkpoint
from dclip_cli.checkpoints.store import remove as remove_checkpoint
from dclip_cli.checkpoints.store import verify as verify_checkpoint
from dclip_cli.device import resolve_device
from dclip_cli.editing import edit_images, mix_images, score_images, translate_images
from dclip_cli.finetune import FinetuneConfig, finetune, run_finetune
from dclip_cli.images import image_grid, load_and_prepare, load_image, sample_image_path, save_image
from dclip_cli.latents import invert_images
from dclip_cli.precision import estimate_seconds, optimize_model, resolve_precision, tune_cpu_allocator
from dclip_cli.presets.manager import get_registry

__all__ = [
    "edit_images",
    "mix_images",
    "score_images",
    "translate_images",
    "FinetuneConfig",
    "finetune",
    "load_artifact",
    "read_artifact",
    "run_finetune",
    "save_artifact",
    "all_specs",
    "checkpoint_path",
    "fetch_checkpoint",
    "get_registry",
    "get_spec",
    "image_grid",
    "import_checkpoint",
    "invert_images",
    "list_edits",
    "list_models",
    "load_and_prepare",
    "load_image",
    "manual_hint",
    "model_path",
    "remove_checkpoint",
    "resolve_device",
    "resolve_precision",
    "optimize_model",
    "estimate_seconds",
    "tune_cpu_allocator",
    "sample_image_path",
    "save_image",
    "verify_cached",
    "verify_checkpoint",
]
