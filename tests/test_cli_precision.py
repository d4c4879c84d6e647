"""``--precision``, ``--checkpointing`` and ``DCLIP_PRECISION`` through the commands (issue 6), on tiny models.

The suite runs with ``DCLIP_PRECISION=fp32`` (tests/conftest.py); these tests ask for bf16 explicitly. bf16 runs
on every CPU (emulated where it is not native), so they do not depend on the machine.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from dclip_cli.artifacts import read_artifact
from dclip_cli.cli.app import app
from dclip_cli.latents import load_latent
from tests.support.finetune import tiny_preset

runner = CliRunner()


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


def test_invert_bf16_is_recorded_and_close_to_fp32(world) -> None:
    outs = {}
    for precision in ("fp32", "bf16"):
        out = world.root / precision
        result = runner.invoke(
            app,
            ["invert", str(world.image), "--domain", "tinyface", "--precision", precision, "-o", str(out)],
        )
        assert result.exit_code == 0, result.output
        x_lat, meta = load_latent(out / "photo.latent.safetensors")
        assert meta["precision"] == precision
        outs[precision] = (x_lat, np.asarray(Image.open(out / "photo.recon.png")))
    lat32, rec32 = outs["fp32"]
    lat16, rec16 = outs["bf16"]
    assert not np.array_equal(rec32, rec16)  # bf16 really ran
    assert _psnr(rec32, rec16) > 30, _psnr(rec32, rec16)
    assert float((lat32 - lat16).abs().max()) < 0.2


def test_edit_precision_from_flag_and_environment(world, monkeypatch: pytest.MonkeyPatch) -> None:
    args = ["edit", str(world.image), "--to", "pixar", "--domain", "tinyface", *world.cli_args()]
    result = runner.invoke(app, [*args, "-o", str(world.root / "a"), "--precision", "bf16"])
    assert result.exit_code == 0, result.output
    doc = json.loads((world.root / "a" / "photo.pixar.json").read_text())
    assert doc["settings"]["precision"] == "bf16"
    monkeypatch.setenv("DCLIP_PRECISION", "fp32")
    result = runner.invoke(app, [*args, "-o", str(world.root / "b")])
    assert result.exit_code == 0, result.output
    assert json.loads((world.root / "b" / "photo.pixar.json").read_text())["settings"]["precision"] == "fp32"
    a = np.asarray(Image.open(world.root / "a" / "photo.pixar.png"))
    b = np.asarray(Image.open(world.root / "b" / "photo.pixar.png"))
    assert _psnr(a, b) > 30


def test_bad_precision_is_a_usage_error(world) -> None:
    result = runner.invoke(app, ["invert", str(world.image), "--domain", "tinyface", "--precision", "fp8"])
    assert result.exit_code == 2
    assert "fp8" in result.stderr


def test_finetune_bf16_with_checkpointing_and_fp16_refused(tmp_path: Path) -> None:
    with tiny_preset(tmp_path / "preset") as tiny:
        base = ["--device", "cpu", "finetune", "--domain", "tinycat", "--text", "tiger", "--samples", "1",
                "--previews", "0", "--clip-model", str(tiny.clip)]  # fmt: skip
        result = runner.invoke(
            app,
            [*base, "--precision", "bf16", "--checkpointing", "on", "-o", str(tmp_path / "a.safetensors")],
        )
        assert result.exit_code == 0, result.output
        info = read_artifact(tmp_path / "a.safetensors")
        config = info.metadata["config"] if "config" in info.metadata else info.metadata
        text = json.dumps(config)
        assert '"precision": "bf16"' in text and '"checkpointing": "on"' in text
        result = runner.invoke(app, [*base, "--precision", "fp16", "-o", str(tmp_path / "b.safetensors")])
        assert result.exit_code == 1
        assert "fp16" in result.stderr and "bf16" in result.stderr
        assert not (tmp_path / "b.safetensors").exists()


def test_estimated_time_is_announced_for_long_cpu_runs(world, monkeypatch: pytest.MonkeyPatch) -> None:
    """The threshold is lowered so that the tiny model's run counts as long; the estimate is printed on stderr."""
    from dclip_cli import precision

    monkeypatch.setattr(precision, "ESTIMATE_MIN_SECONDS", 0.0)
    result = runner.invoke(
        app, ["edit", str(world.image), "--to", "pixar", "--domain", "tinyface", *world.cli_args(),
              "-o", str(world.root / "est")],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert re.search(r"Estimated time: about \d+ s on this CPU in fp32 \(inverting and editing 1 image\(s\)\)\.",
                     result.stderr)  # fmt: skip
    assert "Estimated" not in result.stdout
    result = runner.invoke(
        app, ["invert", str(world.image), "--domain", "tinyface", "-o", str(world.root / "inv")]
    )
    assert result.exit_code == 0, result.output
    assert "Estimated time:" in result.stderr


def test_finetune_announces_its_estimate(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from dclip_cli import precision

    monkeypatch.setattr(precision, "ESTIMATE_MIN_SECONDS", 0.0)
    with tiny_preset(tmp_path / "preset") as tiny:
        result = runner.invoke(
            app, ["--device", "cpu", "finetune", "--domain", "tinycat", "--text", "tiger", "--samples", "1",
                  "--previews", "0", "--clip-model", str(tiny.clip), "-o", str(tmp_path / "a.safetensors")],
        )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "Estimated time: about" in result.stderr and "on this CPU in fp32" in result.stderr
    assert "1 epoch(s) on 1 image(s) for 1 edit(s)" in result.stderr
