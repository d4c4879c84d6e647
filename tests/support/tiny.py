"""Tiny seeded diffusion models for tests (CPU, well under a second per call).

``make_tiny_model("ddpm")`` is the DDPM UNet at ch = 32, ch_mult = (1, 2), one residual block, attention at 8×8,
for 16×16 images; ``make_tiny_model("adm")`` is the ADM UNet with the AFHQ block structure shrunk the same way
(learned sigma, scale-shift norm, ResBlock up/down, 32 channels per attention head). Weights are drawn from a seeded
generator (the ADM zero-initialised output layers are randomised too, so outputs depend on the input).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import torch

from dclip_cli.models import DiffusionModel, build_model, save_diffusion_model

TINY_SIZE = 16


@pytest.fixture(autouse=True, scope="module")
def torch_single_thread():
    """Run a test module's tiny models on one intra-op thread (import this fixture into the module).

    Tiny convolutions gain nothing from more threads, and on a shared, loaded CPU OpenMP threads spin and wait on
    each other: the same tests run 5-10x slower with two threads than with one.
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def tiny_ddpm_config() -> dict[str, Any]:
    """ddim YAML settings of the tiny DDPM (16×16)."""
    return {
        "resolution": TINY_SIZE,
        "in_channels": 3,
        "out_ch": 3,
        "ch": 32,
        "ch_mult": [1, 2],
        "num_res_blocks": 1,
        "attn_resolutions": [8],
        "dropout": 0.0,
        "resamp_with_conv": True,
    }


def tiny_adm_config() -> dict[str, Any]:
    """create_model settings of the tiny ADM (16×16, learned sigma)."""
    return {
        "image_size": TINY_SIZE,
        "num_channels": 32,
        "num_res_blocks": 1,
        "channel_mult": [1, 2],
        "attention_resolutions": [8],
        "num_heads": 4,
        "num_head_channels": 32,
        "num_heads_upsample": -1,
        "use_scale_shift_norm": True,
        "resblock_updown": True,
        "learn_sigma": True,
        "class_cond": False,
        "dropout": 0.0,
    }


def tiny_config(arch: str) -> dict[str, Any]:
    """Return the tiny configuration of ``arch`` (``"ddpm"`` or ``"adm"``)."""
    return tiny_ddpm_config() if arch == "ddpm" else tiny_adm_config()


def make_tiny_model(
    arch: str = "ddpm", seed: int = 0, config: dict[str, Any] | None = None
) -> DiffusionModel:
    """Build the tiny model of ``arch`` with weights drawn from ``torch.Generator().manual_seed(seed)``.

    Every tensor (zero-initialised ones included) gets N(0, 0.05²) weights; GroupNorm scales are near 1.
    Returned in eval mode on the CPU. ``config`` replaces the tiny configuration (e.g. a 32x32 variant).
    """
    model = build_model(arch, config if config is not None else tiny_config(arch))
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.unet.named_parameters():
            noise = torch.randn(p.shape, generator=gen) * 0.05
            if (
                "norm" in name or "in_layers.0" in name or "out_layers.0" in name or name.startswith("out.0")
            ) and (name.endswith("weight") and p.ndim == 1):
                p.copy_(1.0 + noise)
            else:
                p.copy_(noise)
    return model.eval()


def save_tiny_checkpoint(path: str | os.PathLike[str], arch: str = "ddpm", seed: int = 0) -> Path:
    """Save the tiny model's official-layout state dict.

    ``.safetensors`` paths get the self-describing header (arch and config); any other suffix is written with
    ``torch.save(state_dict)`` like the original checkpoints (load those with the tiny config, or rely on shape
    inference with ``resolution``/``image_size`` 16).
    """
    path = Path(path)
    model = make_tiny_model(arch, seed)
    if path.suffix == ".safetensors":
        return save_diffusion_model(path, model, overwrite=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.unet.state_dict(), path)
    return path
