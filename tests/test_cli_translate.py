"""``dclip translate`` end to end: projection rounds with intermediates, then an edit; the math against an oracle."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from typer.testing import CliRunner

from dclip_cli.cli.app import app
from tests.support.editing import make_tiny32


def run(world, *args: str):
    # translate makes no reconstruction, so an explicit --metrics psnr would be an error: no metrics here
    common = [a if a != "psnr" else "none" for a in world.cli_args()]
    return CliRunner().invoke(app, ["translate", *common, str(world.image), "--domain", "tinyface", *args])


def png(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


def _oracle_rounds(image: Path, rounds: int, t0: int, seed: int) -> list[np.ndarray]:
    """K rounds of x <- DDIM_6(sqrt(abar[t0]) x + sqrt(1 - abar[t0]) eps) with the base model (reference 11.3)."""
    from dclip_cli.apps.config import image_seed
    from dclip_cli.diffusion.ddim import generate
    from dclip_cli.diffusion.schedule import alphas_cumprod
    from dclip_cli.fileio import sha256_file
    from dclip_cli.images import load_and_prepare, to_pil

    base = make_tiny32(0)
    x, _ = load_and_prepare(image, 32)
    # the noise of an image comes from --seed, the input file's content and the run (independent of batching)
    gen = torch.Generator().manual_seed(image_seed(seed, sha256_file(image), "translate/projection"))
    a = alphas_cumprod()[t0]  # FIX 11: alpha_bar[t0], not alpha_bar[t0 - 1]
    out = []
    with torch.no_grad():
        for _ in range(rounds):
            eps = torch.randn(x.shape, generator=gen)
            x = generate(base, a.sqrt() * x + (1 - a).sqrt() * eps, t0=t0, n_steps=6)
            out.append(np.asarray(to_pil(x)))
    return out


def test_translate_with_intermediates_matches_the_oracle(world) -> None:
    result = run(world, "--iterations", "3", "--save-intermediates", "--seed", "5", "--compare")
    assert result.exit_code == 0, result.output
    out = world.image.with_name("photo.translate.png")
    rounds = [world.image.with_name(f"photo.translate.round{i:02d}.png") for i in (1, 2, 3)]
    compare = world.image.with_name("photo.translate.compare.png")
    assert result.stdout.split() == [str(out), str(compare), *map(str, rounds)]
    oracle = _oracle_rounds(world.image, 3, 200, 5)
    for path, expected in zip(rounds, oracle, strict=True):
        assert np.abs(png(path).astype(int) - expected.astype(int)).max() <= 1
    assert np.array_equal(png(out), png(rounds[-1]))  # without --to the last projection is the result
    doc = json.loads(out.with_suffix(".json").read_text())
    s = doc["settings"]
    assert (s["iterations"], s["translation_steps"], s["t0"], s["q_sample_alpha_bar"]) == (
        3,
        6,
        200,
        "alpha_bar[t0]",
    )
    assert doc["outputs"]["intermediates"] == [str(p) for p in rounds]
    assert [m["role"] for m in doc["models"]] == ["base"]


def test_translate_then_edit(world) -> None:
    result = run(world, "--iterations", "2", "--to", "pixar", "-o", str(world.root / "out"))
    assert result.exit_code == 0, result.output
    out = world.root / "out" / "photo.translate-pixar.png"
    assert result.stdout.split() == [str(out)]
    doc = json.loads(out.with_suffix(".json").read_text())
    assert doc["settings"]["edit_model_source"] == "official" and doc["settings"]["t0"] == 201
    assert [m["role"] for m in doc["models"]] == ["base", "edit"]
    projection = run(world, "--iterations", "2", "-o", str(world.root / "proj"), "--t0", "201")
    assert projection.exit_code == 0
    assert not np.array_equal(png(out), png(world.root / "proj" / "photo.translate.png"))


def test_translate_bad_options(world) -> None:
    result = run(world, "--iterations", "0")
    assert result.exit_code == 2 and "--iterations" in result.stderr
    result = run(world, "--model", "x.safetensors")
    assert result.exit_code == 2 and "--model needs --to" in result.stderr
    (world.image.parent / "photo.translate.json").write_text("{}")
    result = run(world)
    assert result.exit_code == 1 and "photo.translate.json already exists" in result.stderr
    assert world.server.count("/tiny_base.ckpt") == 0
