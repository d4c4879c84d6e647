"""Real-size smoke tests (slow): the built-in face preset end to end with a full-size CelebA-HQ DDPM (random
weights, 113,673,219 parameters) served through ``DCLIP_MIRROR``, MTCNN alignment of the shipped sample face,
inversion and an edit at 256x256. Run with ``DCLIP_RUN_SLOW=1`` (about a minute on a 2-core CPU)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from dclip_cli.cli.app import app
from dclip_cli.images import sample_image_path
from dclip_cli.latents import load_latent
from tests.support.tiny_clip import save_tiny_clip

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def mirror(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from dclip_cli.models import build_model
    from dclip_face import DDPM_256

    folder = tmp_path_factory.mktemp("mirror")
    torch.manual_seed(0)
    model = build_model("ddpm", DDPM_256)
    assert sum(p.numel() for p in model.parameters()) == 113_673_219
    torch.save(model.unet.state_dict(), folder / "celeba_hq.ckpt")
    save_tiny_clip(folder / "tiny_clip.pt")
    return folder


def test_face_preset_invert_and_edit_at_full_size(mirror: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("DCLIP_MIRROR", str(mirror))
    monkeypatch.setenv("DCLIP_PRECISION", "auto")
    runner = CliRunner()
    face = sample_image_path()
    result = runner.invoke(
        app, ["invert", str(face), "--domain", "face", "--inv-steps", "4", "-o", str(tmp_path)]
    )
    assert result.exit_code == 0, result.output
    x_lat, meta = load_latent(tmp_path / "face.latent.safetensors")
    assert x_lat.shape == (1, 3, 256, 256)
    assert meta["t0"] == 401 and meta["steps"] == 4 and meta["checkpoint"] == "celeba_hq"
    assert Image.open(tmp_path / "face.recon.png").size == (256, 256)

    monkeypatch.setenv("DCLIP_OFFLINE", "1")  # everything needed is cached now (CLIP is a local file)
    args = ["edit", str(face), "--to", "smiling", "--model", str(mirror / "celeba_hq.ckpt"),
            "--clip-model", str(mirror / "tiny_clip.pt"), "--steps", "4", "--inv-steps", "4",
            "--metrics", "psnr,clip", "-o", str(tmp_path / "edit"), "--compare"]  # fmt: skip
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "Using domain face detected by CLIP" in result.stderr  # auto-detection among the built-in presets
    doc = json.loads((tmp_path / "edit" / "face.smiling.json").read_text())
    assert doc["settings"]["domain"] == "face" and doc["settings"]["t0"] == 401
    assert doc["metrics"]["reconstruction_psnr"] > 5
    assert Image.open(tmp_path / "edit" / "face.smiling.compare.png").size[0] > 3 * 256
