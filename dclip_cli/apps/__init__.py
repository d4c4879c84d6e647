"""The applications: ``invert``, ``edit``, ``mix``, ``translate`` and ``score`` as library functions.

Each application is one module built on shared pieces: the settings records (:mod:`.config`), the session (loaded
networks, device, precision; :mod:`.session`), inputs and domain detection (:mod:`.inputs`), edit-model resolution
(:mod:`.resolve`: library -> official -> fine-tune now) and the batch loop with sidecars (:mod:`.pipeline`). The
CLI (``dclip_cli.cli``) and the web UI call these; they never print.
"""

from dclip_cli.apps.config import (
    ALL_METRICS,
    AutoFinetune,
    Outputs,
    RunConfig,
    Runtime,
    Sampling,
    SamplingSettings,
    parse_metrics,
    parse_sweep,
    resolve_t0,
)
from dclip_cli.apps.edit import edit_images
from dclip_cli.apps.invert import InvertedImage, InvertReport, invert_images
from dclip_cli.apps.mix import member_names, mix_images
from dclip_cli.apps.pipeline import ImageResult, RunReport
from dclip_cli.apps.schedule import MixEntry, format_mix_schedule, parse_mix_schedule
from dclip_cli.apps.score import score_images
from dclip_cli.apps.session import Session
from dclip_cli.apps.translate import translate_images

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
