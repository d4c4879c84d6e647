"""Losses for fine-tuning: directional CLIP (:mod:`.clip`), identity (:mod:`.identity`) and LPIPS (:mod:`.lpips`).

Submodules are imported on demand so that importing this package stays cheap (no open-clip, facenet-pytorch or
lpips until a loss is used).
"""

from __future__ import annotations

from typing import Any

_EXPORTS = {
    "ClipModel": "dclip_cli.losses.clip",
    "DirectionalCLIPLoss": "dclip_cli.losses.clip",
    "clip_term": "dclip_cli.losses.clip",
    "directional_similarity": "dclip_cli.losses.clip",
    "load_clip_file": "dclip_cli.losses.clip",
    "text_direction": "dclip_cli.losses.clip",
    "text_similarity": "dclip_cli.losses.clip",
    "zero_shot": "dclip_cli.losses.clip",
    "IdentityLoss": "dclip_cli.losses.identity",
    "build_facenet": "dclip_cli.losses.identity",
    "LPIPSLoss": "dclip_cli.losses.lpips",
    "IMAGENET_TEMPLATES": "dclip_cli.losses.templates",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
