"""A tiny preset for fine-tuning tests: a 32x32 DDPM served by the local HTTP server and a tiny CLIP file.

Presets need ``image_size >= 32``, so this uses the tiny DDPM of :mod:`tests.support.tiny` at 32x32 (attention at
16x16). The preset is registered as a plugin object with :func:`dclip_cli.presets.manager.register_plugin`, and its
checkpoint spec points at a real HTTP server on 127.0.0.1, so ``dclip finetune --domain NAME`` runs the same code
path as with a real preset (download, sidecar, SHA-256, loading).
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from dclip_cli.checkpoints.registry import CheckpointSpec
from dclip_cli.models import DiffusionModel, build_model
from dclip_cli.presets.hookspecs import hookimpl
from dclip_cli.presets.manager import register_plugin, unregister_plugin
from dclip_cli.presets.preset import Edit, Preset
from tests.support.http_server import FileServer
from tests.support.tiny import tiny_ddpm_config
from tests.support.tiny_clip import save_tiny_clip

TINY32_CONFIG: dict[str, Any] = {**tiny_ddpm_config(), "resolution": 32, "attn_resolutions": [16]}


def make_tiny32(seed: int = 0) -> DiffusionModel:
    """The tiny DDPM at 32x32 with seeded N(0, 0.05²) weights (GroupNorm scales near 1), in eval mode."""
    model = build_model("ddpm", TINY32_CONFIG)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.unet.named_parameters():
            noise = torch.randn(p.shape, generator=gen) * 0.05
            p.copy_(1.0 + noise if ("norm" in name and name.endswith("weight")) else noise)
    return model.eval()


class _Plugin:
    def __init__(self, preset: Preset, spec: CheckpointSpec) -> None:
        self.preset, self.spec = preset, spec
        self.__name__ = f"tests.support.finetune.{preset.name}"

    @hookimpl
    def register_presets(self, register: Any) -> None:
        register(self.preset)

    @hookimpl
    def register_checkpoints(self, register: Any) -> None:
        register(self.spec)


@dataclass
class TinyPreset:
    """What :func:`tiny_preset` set up."""

    preset: Preset
    model: DiffusionModel
    checkpoint: Path
    sha256: str
    clip: Path
    server: FileServer


@contextlib.contextmanager
def tiny_preset(root: Path, name: str = "tinycat", **preset_fields: Any) -> Iterator[TinyPreset]:
    """Register preset ``name`` (32x32 tiny DDPM, source "cat", edit "tiger" with t0 201) for the block."""
    root.mkdir(parents=True, exist_ok=True)
    model = make_tiny32()
    checkpoint = root / f"{name}.ckpt"
    torch.save(model.unet.state_dict(), checkpoint)
    data = checkpoint.read_bytes()
    sha = hashlib.sha256(data).hexdigest()
    clip = save_tiny_clip(root / "tiny-clip.pt")
    fields: dict[str, Any] = {
        "name": name,
        "description": "A tiny test preset.",
        "image_size": 32,
        "checkpoint": f"{name}_base",
        "arch": "ddpm",
        "arch_config": TINY32_CONFIG,
        "source_text": "cat",
        "domain_prompt": "a photo of a cat",
        "t0": 200,
        "n_inv_steps": 3,
        "n_gen_steps": 3,
        "n_train_steps": 2,
        "lr": 1e-3,
        "epochs": 1,
        "n_train_images": 2,
        "edits": {"tiger": Edit(key="tiger", src="cat", trg="tiger", t0=201)},
    }
    fields.update(preset_fields)
    preset = Preset(**fields)
    with FileServer() as server:
        url = server.add(f"/{name}.ckpt", data)
        spec = CheckpointSpec(
            name=f"{name}_base", filename=f"{name}.ckpt", urls=(url,), sha256=sha, size=len(data),
            format="ddpm", arch="ddpm", arch_config=TINY32_CONFIG,
        )  # fmt: skip
        register_plugin(name, _Plugin(preset, spec))
        try:
            yield TinyPreset(preset, model, checkpoint, sha, clip, server)
        finally:
            unregister_plugin(name)
