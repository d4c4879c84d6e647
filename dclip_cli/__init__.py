"""dclip: DiffusionCLIP as a command-line tool and a small Python API.

The public API is exported lazily so that ``import dclip_cli`` (and ``dclip --help``) does not import torch.
"""

from __future__ import annotations

import importlib
from typing import Any

from dclip_cli._version import __version__

# public name -> module that defines it
_EXPORTS: dict[str, str] = {
    "DclipError": "dclip_cli.errors",
    "edit_images": "dclip_cli.editing",
    "mix_images": "dclip_cli.editing",
    "translate_images": "dclip_cli.editing",
    "score_images": "dclip_cli.editing",
    "parse_mix_schedule": "dclip_cli.editing",
    "FinetuneConfig": "dclip_cli.finetune",
    "finetune": "dclip_cli.finetune",
    "run_finetune": "dclip_cli.finetune",
    "save_artifact": "dclip_cli.artifacts",
    "load_artifact": "dclip_cli.artifacts",
    "Preset": "dclip_cli.presets.preset",
    "Edit": "dclip_cli.presets.preset",
    "CheckpointSpec": "dclip_cli.checkpoints.registry",
    "fetch_checkpoint": "dclip_cli.api",
    "import_checkpoint": "dclip_cli.api",
    "list_models": "dclip_cli.api",
    "get_registry": "dclip_cli.presets.manager",
    "resolve_device": "dclip_cli.device",
    "resolve_precision": "dclip_cli.precision",
    "optimize_model": "dclip_cli.precision",
    "estimate_seconds": "dclip_cli.precision",
    "load_diffusion_model": "dclip_cli.models.build",
    "build_model": "dclip_cli.models.build",
    "timestep_sequence": "dclip_cli.diffusion.schedule",
    "invert": "dclip_cli.diffusion.ddim",
    "generate": "dclip_cli.diffusion.ddim",
    "blend": "dclip_cli.diffusion.mixing",
    "mix": "dclip_cli.diffusion.mixing",
    "load_image": "dclip_cli.images",
    "prepare": "dclip_cli.images",
    "load_and_prepare": "dclip_cli.images",
    "to_tensor": "dclip_cli.images",
    "to_pil": "dclip_cli.images",
    "save_image": "dclip_cli.images",
    "image_grid": "dclip_cli.images",
    "sample_image_path": "dclip_cli.images",
    "load_clip": "dclip_cli.losses.clip",
    "DirectionalCLIPLoss": "dclip_cli.losses.clip",
}

__all__ = ["__version__", *sorted(_EXPORTS)]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'dclip_cli' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
