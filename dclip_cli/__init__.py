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
    "Preset": "dclip_cli.presets.preset",
    "Edit": "dclip_cli.presets.preset",
    "CheckpointSpec": "dclip_cli.checkpoints.registry",
    "get_registry": "dclip_cli.presets.manager",
    "resolve_device": "dclip_cli.device",
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
