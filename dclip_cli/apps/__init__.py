"""The applications: ``invert``, ``edit``, ``mix``, ``translate`` and ``score`` as library functions.

Each application is one module built on shared pieces: the settings records (:mod:`.config`), the session (loaded
networks, device, precision; :mod:`.session`), inputs and domain detection (:mod:`.inputs`), edit-model resolution
(:mod:`.resolve`: library -> official -> fine-tune now) and the batch loop with sidecars (:mod:`.pipeline`). The
CLI (``dclip_cli.cli``) and the web UI call these; they never print.
"""

from __future__ import annotations

import importlib
from typing import Any

# public name -> module of this package that defines it (imported on first use, so that the CLI can read the
# settings records in ``config`` without importing every application)
_EXPORTS = {
    "ALL_METRICS": "config",
    "AutoFinetune": "config",
    "Outputs": "config",
    "RunConfig": "config",
    "Runtime": "config",
    "Sampling": "config",
    "SamplingSettings": "config",
    "parse_metrics": "config",
    "parse_sweep": "config",
    "resolve_t0": "config",
    "edit_images": "edit",
    "InvertedImage": "invert",
    "InvertReport": "invert",
    "invert_images": "invert",
    "member_names": "mix",
    "mix_images": "mix",
    "ImageResult": "pipeline",
    "RunReport": "pipeline",
    "MixEntry": "schedule",
    "format_mix_schedule": "schedule",
    "parse_mix_schedule": "schedule",
    "score_images": "score",
    "Session": "session",
    "translate_images": "translate",
}

__all__ = [
    "ALL_METRICS",
    "AutoFinetune",
    "ImageResult",
    "InvertReport",
    "InvertedImage",
    "MixEntry",
    "Outputs",
    "RunConfig",
    "RunReport",
    "Runtime",
    "Sampling",
    "SamplingSettings",
    "Session",
    "edit_images",
    "format_mix_schedule",
    "invert_images",
    "member_names",
    "mix_images",
    "parse_metrics",
    "parse_mix_schedule",
    "parse_sweep",
    "resolve_t0",
    "score_images",
    "translate_images",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
