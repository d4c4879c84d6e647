"""dclip: DiffusionCLIP as a command-line tool and a small Python API.

The public API is exported lazily so that ``import dclip_cli`` (and ``dclip --help``) does not import torch. No
public name is also the name of a submodule, so every name resolves to what the docs say whatever was imported
before (``tests/test_public_api.py`` checks this in fresh interpreters).
"""

from __future__ import annotations

import importlib
from typing import Any

from dclip_cli._version import __version__

# public name -> (module that defines it, its name there)
_EXPORTS: dict[str, tuple[str, str]] = {
    "DclipError": ("dclip_cli.errors", "DclipError"),
    "Event": ("dclip_cli.progress", "Event"),
    # applications and their settings
    "invert_images": ("dclip_cli.apps.invert", "invert_images"),
    "edit_images": ("dclip_cli.apps.edit", "edit_images"),
    "mix_images": ("dclip_cli.apps.mix", "mix_images"),
    "translate_images": ("dclip_cli.apps.translate", "translate_images"),
    "score_images": ("dclip_cli.apps.score", "score_images"),
    "parse_mix_schedule": ("dclip_cli.apps.schedule", "parse_mix_schedule"),
    "Sampling": ("dclip_cli.apps.config", "Sampling"),
    "Outputs": ("dclip_cli.apps.config", "Outputs"),
    "Runtime": ("dclip_cli.apps.config", "Runtime"),
    "AutoFinetune": ("dclip_cli.apps.config", "AutoFinetune"),
    "RunConfig": ("dclip_cli.apps.config", "RunConfig"),
    "Session": ("dclip_cli.apps.session", "Session"),
    # fine-tuning
    "FinetuneConfig": ("dclip_cli.training.config", "FinetuneConfig"),
    "finetune": ("dclip_cli.training.loop", "finetune"),
    "run_finetune": ("dclip_cli.training.job", "run_finetune"),
    "TextEdit": ("dclip_cli.textedit", "TextEdit"),
    "save_artifact": ("dclip_cli.artifacts", "save_artifact"),
    "load_artifact": ("dclip_cli.artifacts", "load_artifact"),
    # presets and the model store
    "Preset": ("dclip_cli.presets.preset", "Preset"),
    "Edit": ("dclip_cli.presets.preset", "Edit"),
    "CheckpointSpec": ("dclip_cli.checkpoints.registry", "CheckpointSpec"),
    "get_registry": ("dclip_cli.presets.manager", "get_registry"),
    "fetch_checkpoint": ("dclip_cli.store.specs", "fetch"),
    "import_checkpoint": ("dclip_cli.store.manage", "import_file"),
    "list_models": ("dclip_cli.store.manage", "list_models"),
    "load_clip": ("dclip_cli.store.weights", "load_clip"),
    # runtime
    "resolve_device": ("dclip_cli.device", "resolve_device"),
    "resolve_precision": ("dclip_cli.precision", "resolve_precision"),
    "optimize_model": ("dclip_cli.precision", "optimize_model"),
    "estimate_seconds": ("dclip_cli.precision", "estimate_seconds"),
    # the method
    "load_diffusion_model": ("dclip_cli.models.build", "load_diffusion_model"),
    "build_model": ("dclip_cli.models.build", "build_model"),
    "timestep_sequence": ("dclip_cli.diffusion.schedule", "timestep_sequence"),
    "invert": ("dclip_cli.diffusion.ddim", "invert"),
    "generate": ("dclip_cli.diffusion.ddim", "generate"),
    "blend": ("dclip_cli.diffusion.mixing", "blend"),
    "mix": ("dclip_cli.diffusion.mixing", "mix"),
    "DirectionalCLIPLoss": ("dclip_cli.losses.clip", "DirectionalCLIPLoss"),
    # images
    "load_image": ("dclip_cli.images", "load_image"),
    "prepare": ("dclip_cli.images", "prepare"),
    "load_and_prepare": ("dclip_cli.images", "load_and_prepare"),
    "to_tensor": ("dclip_cli.images", "to_tensor"),
    "to_pil": ("dclip_cli.images", "to_pil"),
    "save_image": ("dclip_cli.images", "save_image"),
    "image_grid": ("dclip_cli.images", "image_grid"),
    "sample_image_path": ("dclip_cli.images", "sample_image_path"),
}

__all__ = ["__version__", *sorted(_EXPORTS)]


def __getattr__(name: str) -> Any:
    target = _EXPORTS.get(name)
    if target is None:
        raise AttributeError(f"module 'dclip_cli' has no attribute {name!r}")
    module, attr = target
    value = getattr(importlib.import_module(module), attr)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
