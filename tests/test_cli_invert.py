"""``dclip invert`` end to end on tiny models, and its bad-input cases with exit codes and messages."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from dclip_cli import __version__
from dclip_cli.cli.app import app
from dclip_cli.diffusion.ddim import generate
from dclip_cli.images import load_and_prepare
from dclip_cli.latents import load_latent
from dclip_cli.models import load_diffusion_model
from tests.support.tiny import save_tiny_checkpoint, tiny_ddpm_config, torch_single_thread  # noqa: F401

runner = CliRunner()


class Payload:
    """An arbitrary object: a pickle holding it needs code to load."""


def _png(path: Path, size: tuple[int, int] = (48, 40), seed: int = 0) -> Path:
    rng = np.random.RandomState(seed)
    Image.fromarray((rng.rand(size[1], size[0], 3) * 255).astype("uint8")).save(path)
    return path


@pytest.fixture
def tiny_ckpt(tmp_path: Path) -> Path:
    return save_tiny_checkpoint(tmp_path / "models" / "tiny.safetensors", "ddpm", seed=0)


def _run(*args: str):
    return runner.invoke(app, ["invert", *args], env={"COLUMNS": "200"})


def test_invert_checkpoint_end_to_end(tmp_path: Path, tiny_ckpt: Path) -> None:
    img = _png(tmp_path / "photo.png")
    result = _run(str(img), "--checkpoint", str(tiny_ckpt), "--t0", "100", "--inv-steps", "5")
    assert result.exit_code == 0, result.output
    latent, recon = tmp_path / "photo.latent.safetensors", tmp_path / "photo.recon.png"
    assert result.stdout.splitlines()[-2:] == [str(latent), str(recon)]
    assert "PSNR" in result.output and "MSE" in result.output
    x_lat, meta = load_latent(latent)
    assert x_lat.shape == (1, 3, 16, 16)
    assert meta["model_sha256"] == hashlib.sha256(tiny_ckpt.read_bytes()).hexdigest()
    assert meta["image_sha256"] == hashlib.sha256(img.read_bytes()).hexdigest()
    assert (meta["t0"], meta["steps"], meta["dclip_version"]) == (100, 5, __version__)
    assert Image.open(recon).size == (16, 16)
    # the latent regenerates the saved reconstruction (up to PNG quantisation) and is close to the input
    model = load_diffusion_model(tiny_ckpt)
    with torch.no_grad():
        x_rec = generate(model, x_lat, t0=100, n_steps=5).clamp(-1, 1)
    png = torch.from_numpy(np.asarray(Image.open(recon), dtype=np.float32)).permute(2, 0, 1) / 127.5 - 1
    assert (x_rec[0] - png).abs().max() <= 2 / 255 + 1e-6
    x0, _ = load_and_prepare(img, 16)
    assert float(meta["mse"]) == pytest.approx(
        float(((x_rec + 1) / 2 - (x0 + 1) / 2).pow(2).mean()), rel=1e-3
    )
    assert not list(tmp_path.glob("*.incomplete"))


def test_invert_json_and_output_dir_with_folder_input(tmp_path: Path, tiny_ckpt: Path) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    _png(folder / "a.png", seed=1)
    _png(folder / "b.jpg", seed=2)
    out = tmp_path / "out"
    result = _run(str(folder), "--checkpoint", str(tiny_ckpt), "--t0", "50", "--inv-steps", "3", "-o", str(out),
                  "--json", "--batch-size", "2")  # fmt: skip
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert (data["t0"], data["steps"], data["arch"], data["image_size"]) == (50, 3, "ddpm", 16)
    assert [Path(r["latent"]).name for r in data["images"]] == [
        "a.latent.safetensors",
        "b.latent.safetensors",
    ]
    for r in data["images"]:
        assert Path(r["latent"]).parent == out and Path(r["reconstruction"]).is_file()
        assert r["psnr"] == pytest.approx(10 * np.log10(1 / r["mse"]), rel=1e-6)


def test_invert_with_arch_config_for_plain_checkpoint(tmp_path: Path) -> None:
    ckpt = save_tiny_checkpoint(tmp_path / "tiny.ckpt", "adm", seed=1)
    cfg = tmp_path / "arch.json"
    from tests.support.tiny import tiny_adm_config

    cfg.write_text(json.dumps({"arch": "adm", **tiny_adm_config()}))
    img = _png(tmp_path / "x.png")
    result = _run(str(img), "--checkpoint", str(ckpt), "--arch-config", str(cfg), "--t0", "80", "--inv-steps", "3",
                  "-o", str(tmp_path / "lat.safetensors"))  # fmt: skip
    assert result.exit_code == 0, result.output
    assert load_latent(tmp_path / "lat.safetensors")[1]["arch"] == "adm"
    assert (tmp_path / "lat.recon.png").is_file()
    # a ddim-style YAML model block describes DDPM checkpoints
    ddpm = save_tiny_checkpoint(tmp_path / "d.ckpt", "ddpm")
    yml = tmp_path / "celeba.yml"
    model = {k: v for k, v in tiny_ddpm_config().items() if k != "resolution"}
    yml.write_text(
        json.dumps({"data": {"image_size": 16}, "model": {**model, "type": "simple", "ema": True}})
    )
    result = _run(str(img), "--checkpoint", str(ddpm), "--arch-config", str(yml), "--inv-steps", "2", "-o",
                  str(tmp_path / "d.safetensors"))  # fmt: skip
    assert result.exit_code == 0, result.output
    assert load_latent(tmp_path / "d.safetensors")[1]["t0"] == 400  # the original CLI default


def test_invert_domain_fetches_preset_checkpoint(tmp_path: Path) -> None:
    from tests.support.finetune import tiny_preset

    img = _png(tmp_path / "cat.png", size=(64, 64))
    with tiny_preset(tmp_path / "preset", name="tinyinv") as tp:
        result = _run(str(img), "--domain", "tinyinv", "-o", str(tmp_path / "out"))
    assert result.exit_code == 0, result.output
    x_lat, meta = load_latent(tmp_path / "out" / "cat.latent.safetensors")
    assert x_lat.shape == (1, 3, 32, 32)
    assert (meta["t0"], meta["steps"]) == (tp.preset.t0, tp.preset.n_inv_steps)
    assert meta["model_sha256"] == tp.sha256 and meta["checkpoint"] == "tinyinv_base"


def test_existing_outputs_need_overwrite(tmp_path: Path, tiny_ckpt: Path) -> None:
    img = _png(tmp_path / "p.png")
    args = (str(img), "--checkpoint", str(tiny_ckpt), "--t0", "20", "--steps", "2")
    assert _run(*args).exit_code == 0
    before = load_latent(tmp_path / "p.latent.safetensors")
    again = _run(*args)
    assert again.exit_code == 1
    assert (
        "p.latent.safetensors already exists (and 1 more)" in again.output and "--overwrite" in again.output
    )
    assert _run(*args, "--overwrite").exit_code == 0
    after = load_latent(tmp_path / "p.latent.safetensors")
    assert torch.equal(after[0], before[0]) and after[1] == before[1]  # deterministic


def _bad_files(tmp_path: Path) -> dict[str, Path]:
    text = tmp_path / "notes.png"
    text.write_text("this is not an image")
    good = _png(tmp_path / "good.png")
    truncated = tmp_path / "trunc.png"
    truncated.write_bytes(good.read_bytes()[:200])
    small = _png(tmp_path / "small.png", size=(20, 20))
    evil = tmp_path / "evil.pt"
    torch.save({"w": torch.zeros(1), "obj": Payload()}, evil)
    other = tmp_path / "other.pt"
    torch.save({"fc.weight": torch.zeros(2, 2)}, other)
    bad_cfg = tmp_path / "wrong.json"
    bad_cfg.write_text(json.dumps({**tiny_ddpm_config(), "ch": 64}))
    return {"text": text, "good": good, "truncated": truncated, "small": small, "evil": evil, "other": other,
            "bad_cfg": bad_cfg}  # fmt: skip


@pytest.mark.parametrize(
    ("case", "code", "message"),
    [
        ("no_model", 2, "choose a model with --domain NAME"),
        ("missing_image", 2, "does not exist"),
        ("not_image", 1, "is not an image file that Pillow can read"),
        ("truncated", 1, "truncated or corrupt"),
        ("too_small", 1, "only 20x20 pixels"),
        ("unknown_domain", 1, "nosuchdomain"),
        ("unsafe_ckpt", 1, "arbitrary code"),
        ("not_a_model", 1, "neither a DDPM nor an ADM"),
        ("wrong_config", 1, "wrong shape(s)"),
        ("arch_config_alone", 2, "--arch-config describes a --checkpoint"),
        ("bad_t0", 2, "less than or equal to 999"),
        ("bad_steps", 2, "--inv-steps"),
        ("file_output_many", 1, "names one file but 2 images were given"),
        ("bad_output_suffix", 1, "does not end in .safetensors"),
    ],
)
def test_bad_inputs(tmp_path: Path, tiny_ckpt: Path, case: str, code: int, message: str) -> None:
    f = _bad_files(tmp_path)
    ck = ("--checkpoint", str(tiny_ckpt))
    args = {
        "no_model": (str(f["good"]),),
        "missing_image": (str(tmp_path / "nope.png"), *ck),
        "not_image": (str(f["text"]), *ck),
        "truncated": (str(f["truncated"]), *ck),
        "too_small": (str(f["small"]), *ck),
        "unknown_domain": (str(f["good"]), "--domain", "nosuchdomain"),
        "unsafe_ckpt": (str(f["good"]), "--checkpoint", str(f["evil"])),
        "not_a_model": (str(f["good"]), "--checkpoint", str(f["other"])),
        "wrong_config": (str(f["good"]), *ck, "--arch-config", str(f["bad_cfg"])),
        "arch_config_alone": (str(f["good"]), "--arch-config", str(f["bad_cfg"])),
        "bad_t0": (str(f["good"]), *ck, "--t0", "1000"),
        "bad_steps": (str(f["good"]), *ck, "--inv-steps", "1"),
        "file_output_many": (str(f["good"]), str(f["small"]), *ck, "-o", str(tmp_path / "x.safetensors")),
        "bad_output_suffix": (str(f["good"]), *ck, "-o", str(tmp_path / "x.pt")),
    }[case]
    result = _run(*args)
    output = " ".join(re.sub("[│╭╮╰╯─]", " ", result.output).split())
    assert result.exit_code == code, result.output
    assert message in output
    assert not list(tmp_path.glob("*.latent.safetensors"))


def test_old_steps_spelling_still_works_with_a_deprecation_warning(tmp_path: Path, tiny_ckpt: Path) -> None:
    """Issue 12: --steps means generation steps everywhere; in invert it is a deprecated alias of --inv-steps for
    one release."""
    img = _png(tmp_path / "a.png")
    old = _run(str(img), "--checkpoint", str(tiny_ckpt), "--t0", "20", "--steps", "3", "--json")
    assert old.exit_code == 0, old.output
    assert "'dclip invert --steps' is deprecated" in old.stderr and "Use --inv-steps" in old.stderr
    assert json.loads(old.stdout)["steps"] == 3
    clash = _run(str(img), "--checkpoint", str(tiny_ckpt), "--steps", "3", "--inv-steps", "4", "--overwrite")
    assert clash.exit_code == 2 and "disagree" in clash.output
    help_text = _run("--help").stdout
    assert "--inv-steps" in help_text and "--steps" not in help_text.replace("--inv-steps", "")
