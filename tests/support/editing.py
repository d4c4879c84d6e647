"""A tiny world for end-to-end tests of ``dclip edit``, ``mix``, ``translate`` and ``score``.

:func:`tiny_world` installs a test preset plugin (``register_plugin``) with two presets, ``tinyface`` and
``tinychurch``, both on a tiny seeded 32x32 DDPM whose checkpoint (and an "official" fine-tuned model of the named
edit ``pixar``) is served by the local HTTP server of ``tests.support.http_server``, plus a tiny CLIP file for
``--clip-model``. Only this plugin is loaded (``DCLIP_LOAD_PLUGINS`` is empty), so domain detection chooses
between the two tiny presets.
"""

from __future__ import annotations

import functools
import hashlib
import io
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from dclip_cli.checkpoints.registry import CheckpointSpec
from dclip_cli.models import DiffusionModel
from dclip_cli.presets.hookspecs import hookimpl
from dclip_cli.presets.preset import Edit, Preset
from tests.support.tiny import make_tiny_model

TINY32_CONFIG: dict[str, Any] = {
    "resolution": 32,
    "in_channels": 3,
    "out_ch": 3,
    "ch": 32,
    "ch_mult": [1, 2],
    "num_res_blocks": 1,
    "attn_resolutions": [],
    "dropout": 0.0,
    "resamp_with_conv": True,
}
PLUGIN_NAME = "tiny-editing"


def make_tiny32(seed: int = 0) -> DiffusionModel:
    """The tiny DDPM at 32x32 without attention, seeded as in :func:`tests.support.tiny.make_tiny_model`."""
    return make_tiny_model("ddpm", seed, config=TINY32_CONFIG)


@functools.cache
def checkpoint_bytes(seed: int) -> bytes:
    """The tiny model's state dict as ``torch.save`` bytes (an official-layout ``.ckpt`` / ``.pth``)."""
    buf = io.BytesIO()
    torch.save(make_tiny32(seed).unet.state_dict(), buf)
    return buf.getvalue()


def write_image(path: Path, seed: int = 0, size: tuple[int, int] = (40, 36)) -> Path:
    """A random RGB PNG (non-square, so the centre crop is exercised)."""
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr, mode="RGB").save(path)
    return path


def tiny_preset(name: str, prompt: str, **overrides: Any) -> Preset:
    values: dict[str, Any] = dict(
        name=name,
        description=f"tiny test preset {name}",
        image_size=32,
        checkpoint="tiny_base",
        arch="ddpm",
        arch_config=TINY32_CONFIG,
        source_text="face",
        domain_prompt=prompt,
        t0=200,
        n_inv_steps=3,
        n_gen_steps=3,
        n_train_steps=2,
        lr=1e-3,
        epochs=1,
        n_train_images=1,
        edits={
            "smiling": Edit("smiling", "face", "smiling face"),
            "angry": Edit("angry", "face", "angry face"),
            "pixar": Edit("pixar", "face", "pixar face", t0=201, checkpoint="tiny/pixar"),
        },
    )
    values.update(overrides)
    return Preset(**values)


class TinyPlugin:
    """A preset plugin object registered with ``register_plugin``."""

    def __init__(self, presets: list[Preset], specs: list[CheckpointSpec]) -> None:
        self.presets = presets
        self.specs = specs

    @hookimpl
    def register_presets(self, register: Any) -> None:
        for p in self.presets:
            register(p)

    @hookimpl
    def register_checkpoints(self, register: Any) -> None:
        for s in self.specs:
            register(s)


@dataclass
class TinyWorld:
    """What :func:`tiny_world` set up."""

    root: Path
    server: Any
    clip: Path
    image: Path
    images: list[Path] = field(default_factory=list)

    def cli_args(self) -> list[str]:
        """Options every command of these tests needs: the tiny CLIP, CPU-cheap metrics."""
        return ["--clip-model", str(self.clip), "--metrics", "psnr", "--finetune-samples", "1"]


def make_specs(server: Any) -> list[CheckpointSpec]:
    base = checkpoint_bytes(0)
    official = checkpoint_bytes(7)
    return [
        CheckpointSpec(
            name="tiny_base",
            filename="tiny_base.ckpt",
            urls=(server.add("/tiny_base.ckpt", base),),
            sha256=hashlib.sha256(base).hexdigest(),
            size=len(base),
            format="ddpm",
            arch="ddpm",
            arch_config=TINY32_CONFIG,
        ),
        CheckpointSpec(
            name="tiny/pixar",
            filename="human_pixar_t201.pth",
            urls=(server.add("/human_pixar_t201.pth", official),),
            sha256=hashlib.sha256(official).hexdigest(),
            size=len(official),
            format="finetuned",
            arch="ddpm",
            base="tiny_base",
            t0=201,
        ),
    ]


def install(presets: list[Preset], specs: list[CheckpointSpec], monkeypatch: Any) -> None:
    """Load only a test plugin with ``presets`` and ``specs``."""
    from dclip_cli.presets import manager

    monkeypatch.setenv("DCLIP_LOAD_PLUGINS", "")
    manager.register_plugin(PLUGIN_NAME, TinyPlugin(presets, specs))


def setup_world(
    root: Path, server: Any, monkeypatch: Any, clip: Path, presets: list[Preset] | None = None
) -> TinyWorld:
    """Install the tiny presets (served by ``server``) and write one input image under ``root``."""
    if presets is None:
        presets = [
            tiny_preset("tinyface", "a photo of a face"),
            tiny_preset("tinychurch", "a photo of a dog"),
        ]
    install(presets, make_specs(server), monkeypatch)
    image = write_image(root / "in" / "photo.png")
    return TinyWorld(root=root, server=server, clip=clip, image=image, images=[image])


@pytest.fixture(scope="module")
def clip_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny CLIP saved once per test module (for ``--clip-model``)."""
    from tests.support.tiny_clip import save_tiny_clip

    return save_tiny_clip(tmp_path_factory.mktemp("clip") / "tiny_clip.pt")


@pytest.fixture
def world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, clip_file: Path) -> Iterator[TinyWorld]:
    """The tiny presets served by a local HTTP server, with one input image (see :func:`setup_world`)."""
    from tests.support.http_server import FileServer

    with FileServer() as server:
        yield setup_world(tmp_path, server, monkeypatch, clip_file)
