"""The library layer the CLI calls: the applications, the fine-tuning job and the model store, in one place.

``dclip_cli.cli`` imports only this module (inside command bodies), ``errors``, ``console``, ``progress`` and the
settings records; everything here may import torch.
"""

from __future__ import annotations

from dclip_cli.apps import (
    AutoFinetune,
    Outputs,
    RunConfig,
    Runtime,
    Sampling,
    edit_images,
    invert_images,
    mix_images,
    score_images,
    translate_images,
)
from dclip_cli.artifacts import load_artifact, read_artifact, save_artifact
from dclip_cli.checkpoints.cache import checkpoint_path
from dclip_cli.device import resolve_device
from dclip_cli.images import image_grid, load_and_prepare, load_image, sample_image_path, save_image
from dclip_cli.precision import estimate_seconds, optimize_model, resolve_precision, tune_cpu_allocator
from dclip_cli.presets.manager import get_registry
from dclip_cli.store import (
    all_specs,
    fetch,
    get_spec,
    import_file,
    list_edits,
    list_models,
    manual_hint,
    model_path,
    remove,
    verify,
    verify_cached,
)
from dclip_cli.training import FinetuneConfig, finetune, run_finetune

fetch_checkpoint = fetch
import_checkpoint = import_file
remove_checkpoint = remove
verify_checkpoint = verify

__all__ = [
    "AutoFinetune",
    "FinetuneConfig",
    "Outputs",
    "RunConfig",
    "Runtime",
    "Sampling",
    "all_specs",
    "checkpoint_path",
    "edit_images",
    "estimate_seconds",
    "fetch_checkpoint",
    "finetune",
    "get_registry",
    "get_spec",
    "image_grid",
    "import_checkpoint",
    "invert_images",
    "list_edits",
    "list_models",
    "load_and_prepare",
    "load_artifact",
    "load_image",
    "manual_hint",
    "mix_images",
    "model_path",
    "optimize_model",
    "read_artifact",
    "remove_checkpoint",
    "resolve_device",
    "resolve_precision",
    "run_finetune",
    "sample_image_path",
    "save_artifact",
    "save_image",
    "score_images",
    "translate_images",
    "tune_cpu_allocator",
    "verify_cached",
    "verify_checkpoint",
]
