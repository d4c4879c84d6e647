"""Everything a preset plugin needs, in one import: ``from dclip_cli import plugin`` or
``from dclip_cli.plugin import hookimpl, Preset, Edit, CheckpointSpec``.

This module is the plugin author's interface to dclip (see ``plugins/README.md``); the built-in presets import
nothing else from dclip. It is cheap to import (no torch): architecture configurations are plain data, and
:func:`build_facenet` imports its network only when called.
"""

from __future__ import annotations

from typing import Any

from dclip_cli.checkpoints.registry import FORMATS, CheckpointSpec, Mirror
from dclip_cli.models.configs import ADM_AFHQ_CONFIG, ADM_IMAGENET512_CONFIG, DDPM_256_CONFIG
from dclip_cli.presets.hookspecs import hookimpl
from dclip_cli.presets.preset import Aligner, Edit, IdentityModel, Preset
from dclip_cli.presets.tables import EditRow, edits_from_table

#: The Google Drive folder of the official DiffusionCLIP fine-tuned models (for manual-download instructions).
DIFFUSIONCLIP_DRIVE_FOLDER = "https://drive.google.com/drive/folders/1Uwvm_gckanyRzQkVTLB6GLQbkSBoZDZF"


def drive_url(file_id: str) -> str:
    """The direct-download URL of a Google Drive file id (dclip follows Drive's confirmation page)."""
    return f"https://drive.google.com/uc?export=download&id={file_id}"


def build_facenet(weights_path: Any, device: Any = None) -> Any:
    """facenet-pytorch's InceptionResnetV1 (VGGFace2) with the given weights, wrapped to take aligned images
    (B, 3, S, S) in [-1, 1] and return L2-normalised 512-d embeddings; for ``IdentityModel(build=...)``."""
    from dclip_cli.losses.identity import build_facenet as build

    return build(weights_path, device)


__all__ = [
    "ADM_AFHQ_CONFIG",
    "ADM_IMAGENET512_CONFIG",
    "DDPM_256_CONFIG",
    "DIFFUSIONCLIP_DRIVE_FOLDER",
    "FORMATS",
    "Aligner",
    "CheckpointSpec",
    "Edit",
    "EditRow",
    "IdentityModel",
    "Mirror",
    "Preset",
    "build_facenet",
    "drive_url",
    "edits_from_table",
    "hookimpl",
]
