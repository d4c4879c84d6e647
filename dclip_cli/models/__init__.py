"""Diffusion networks: the DDPM and ADM UNets behind one eps-model interface, and their safe loading.

Names are imported on first use, so that ``dclip_cli.models.configs`` (plain data, read by preset plugins) can be
imported without torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "ADM_AFHQ_CONFIG": "dclip_cli.models.configs",
    "ADM_IMAGENET512_CONFIG": "dclip_cli.models.configs",
    "DDPM_256_CONFIG": "dclip_cli.models.configs",
    "ADMUNet": "dclip_cli.models.adm_unet",
    "DDPMUNet": "dclip_cli.models.ddpm_unet",
    "DiffusionModel": "dclip_cli.models.protocol",
    "EpsModel": "dclip_cli.models.protocol",
    "build_model": "dclip_cli.models.build",
    "check_arch_keys": "dclip_cli.models.build",
    "check_state_dict": "dclip_cli.models.build",
    "detect_arch": "dclip_cli.models.build",
    "infer_config": "dclip_cli.models.build",
    "load_diffusion_model": "dclip_cli.models.build",
    "load_weights": "dclip_cli.models.build",
    "model_from_state_dict": "dclip_cli.models.build",
    "normalize_config": "dclip_cli.models.build",
    "save_diffusion_model": "dclip_cli.models.build",
    "load_checkpoint": "dclip_cli.models.io",
    "load_state_dict_file": "dclip_cli.models.io",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
