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
from dclip_cli.models import DiffusionModel
from dclip_cli.presets.hookspecs import hookimpl
from dclip_cli.presets.manager import register_plugin, unregister_plugin
from dclip_cli.presets.preset import Edit, IdentityModel, Preset
from tests.support.http_server import FileServer
from tests.support.tiny import make_tiny_model, tiny_ddpm_config
from tests.support.tiny_clip import save_tiny_clip

TINY32_CONFIG: dict[str, Any] = {**tiny_ddpm_config(), "resolution": 32, "attn_resolutions": [16]}


def make_tiny32(seed: int = 0) -> DiffusionModel:
    """The tiny DDPM at 32x32 (attention at 16x16), seeded as in :func:`tests.support.tiny.make_tiny_model`."""
    return make_tiny_model("ddpm", seed, config=TINY32_CONFIG)


class TinyFaceNet(torch.nn.Module):
    """A small seeded embedder standing in for facenet: (B, 3, S, S) in [-1, 1] -> (B, 16), any S >= 8."""

    def __init__(self, seed: int = 3) -> None:
        super().__init__()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.conv = torch.nn.Conv2d(3, 8, 3, stride=2)
            self.fc = torch.nn.Linear(8 * 4 * 4, 16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.nn.functional.adaptive_avg_pool2d(torch.tanh(self.conv(x)), 4)
        return self.fc(h.flatten(1))


def _build_tiny_face(weights: str | Path, device: Any = None) -> torch.nn.Module:
    net = TinyFaceNet()
    net.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    return net.to(device or "cpu").eval().requires_grad_(False)


class _Plugin:
    def __init__(self, preset: Preset, specs: list[CheckpointSpec], identity: IdentityModel | None) -> None:
        self.preset, self.specs, self.identity = preset, specs, identity
        self.__name__ = f"tests.support.finetune.{preset.name}"

    @hookimpl
    def register_presets(self, register: Any) -> None:
        register(self.preset)

    @hookimpl
    def register_checkpoints(self, register: Any) -> None:
        for spec in self.specs:
            register(spec)

    @hookimpl
    def register_identity_models(self, register: Any) -> None:
        if self.identity is not None:
            register(self.identity)


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
    """Register preset ``name`` (32x32 tiny DDPM, source "cat", edit "tiger" with t0 201) for the block.

    The plugin also registers an identity model ``<name>-face`` (:class:`TinyFaceNet`, weights served by the same
    server); set ``identity_model=f"{name}-face"`` and ``id_weight`` in ``preset_fields`` to use it.
    """
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
    face = root / f"{name}-face.pt"
    torch.save(TinyFaceNet().state_dict(), face)
    with FileServer() as server:
        url = server.add(f"/{name}.ckpt", data)
        face_url = server.add(f"/{name}-face.pt", face.read_bytes())
        specs = [
            CheckpointSpec(
                name=f"{name}_base", filename=f"{name}.ckpt", urls=(url,), sha256=sha, size=len(data),
                format="ddpm", arch="ddpm", arch_config=TINY32_CONFIG,
            ),
            CheckpointSpec(name=f"{name}-face", filename=f"{name}-face.pt", urls=(face_url,), format="facenet"),
        ]  # fmt: skip
        identity = IdentityModel(name=f"{name}-face", build=_build_tiny_face, checkpoint=f"{name}-face")
        register_plugin(name, _Plugin(preset, specs, identity))
        try:
            yield TinyPreset(preset, model, checkpoint, sha, clip, server)
        finally:
            unregister_plugin(name)
