"""``dclip mix`` end to end: valid schedules, and every kind of invalid one refused before any download."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from dclip_cli.cli.app import app


def run(world, *args: str):
    return CliRunner().invoke(
        app, ["mix", *world.cli_args(), str(world.image), "--domain", "tinyface", *args]
    )


def plain(text: str) -> str:
    """The text of a Rich usage panel without its border and line wrapping."""
    return " ".join(re.sub(r"[│╭╮╰╯─]", " ", text).split())


def png(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


def test_mix_with_schedule_and_base(world) -> None:
    result = run(world, "--to", "pixar", "--to", "smiling", "--with-base", "--schedule", "150:1,0,1;0:0.2,0.8,0",
                 "--compare")  # fmt: skip
    assert result.exit_code == 0, result.output
    out = world.image.with_name("photo.mix-pixar+smiling+base.png")
    compare = world.image.with_name("photo.mix-pixar+smiling+base.compare.png")
    assert result.stdout.split() == [str(out), str(compare)]
    assert "fine-tuning one now" in result.stderr  # smiling had no model yet; pixar is official
    doc = json.loads(out.with_suffix(".json").read_text())
    s = doc["settings"]
    assert s["members"] == ["pixar", "smiling", "base"] and s["with_base"] is True
    assert s["schedule"] == "150:1,0,1;0:0.2,0.8,0"
    assert s["schedule_normalized"] == [
        {"threshold": 150, "weights": [0.5, 0.0, 0.5]},
        {"threshold": 0, "weights": pytest.approx([0.2, 0.8, 0.0])},
    ]
    roles = [m["role"] for m in doc["models"]]
    assert roles == ["base", "mix-member", "mix-member", "mix-member"]
    assert [m["source"] for m in doc["models"][1:]] == ["official", "finetuned", "preset"]
    assert "reconstruction_psnr" in doc["metrics"]


def test_mix_of_one_model_with_all_weight_equals_the_edit(world) -> None:
    """A schedule giving the pixar model all the weight is exactly ``dclip edit --to pixar``."""
    mixed = run(world, "--to", "pixar", "--to", "smiling", "--schedule", "0:1,0", "--no-finetune")
    # smiling has no model and --no-finetune forbids making one
    assert mixed.exit_code == 1 and "No fine-tuned model for smiling" in mixed.stderr
    mixed = run(world, "--to", "pixar", "--with-base", "--schedule", "0:1,0", "-o", str(world.root / "m.png"))
    assert mixed.exit_code == 0, mixed.output
    edit = CliRunner().invoke(
        app, ["edit", *world.cli_args(), str(world.image), "--domain", "tinyface", "--to", "pixar", "-o",
              str(world.root / "e.png")],
    )  # fmt: skip
    assert edit.exit_code == 0, edit.output
    assert np.array_equal(png(world.root / "m.png"), png(world.root / "e.png"))


def test_model_members_set_t0_when_they_agree(world) -> None:
    """``--model`` members fine-tuned at one t0 (here the official tiny/pixar, t0 201; the preset says 200) run at
    that t0, as ``dclip edit --model`` does."""
    mixed = run(
        world, "--model", "tiny/pixar", "--with-base", "--schedule", "0:1,0", "-o", str(world.root / "m.png")
    )
    assert mixed.exit_code == 0, mixed.output
    doc = json.loads((world.root / "m.json").read_text())
    assert doc["settings"]["t0"] == 201
    edit = CliRunner().invoke(
        app, ["edit", *world.cli_args(), str(world.image), "--domain", "tinyface", "--to", "pixar", "-o",
              str(world.root / "e.png")],
    )  # fmt: skip
    assert edit.exit_code == 0, edit.output
    assert np.array_equal(png(world.root / "m.png"), png(world.root / "e.png"))


@pytest.mark.parametrize(
    ("schedule", "message"),
    [
        ("", "The mixing schedule is empty."),
        ("300:0.5,0.5;", "Schedule entry 2 is empty (a trailing ';')."),
        ("300 0.5,0.5", "Schedule entry 1 \"300 0.5,0.5\" has no ':'"),
        ("x:0.5,0.5", 'the threshold "x" is not a whole number'),
        ("1000:1,1;0:1,1", "the threshold 1000 is outside 0..999"),
        ("0:1,1;300:1,1", "the threshold 300 is not below the previous one (0)"),
        (
            "300:1,1;100:1,1",
            'Schedule entry 2 "100:1,1" has threshold 100, but the last entry must have threshold 0',
        ),
        ("300:1;0:1,1", 'Schedule entry 1 "300:1" gives 1 weight for 2 models (pixar, smiling)'),
        ("0:1,1,1", "gives 3 weights for 2 models"),
        ("0:1,abc", 'weight 2 "abc" is not a number'),
        ("0:1,-1", "weight 2 (-1) is negative"),
        ("300:1,1;0:0,0", 'Schedule entry 2 "0:0,0": the weights sum to 0'),
    ],
)
def test_invalid_schedules_are_usage_errors_before_any_download(world, schedule: str, message: str) -> None:
    result = run(world, "--to", "pixar", "--to", "smiling", "--schedule", schedule)
    assert result.exit_code == 2, result.output
    assert "Invalid value for '--schedule'" in result.stderr
    assert message in plain(result.stderr)
    assert world.server.count("/tiny_base.ckpt") == 0 and world.server.count("/human_pixar_t201.pth") == 0
    assert sorted(p.name for p in world.image.parent.iterdir()) == ["photo.png"]


def test_mix_needs_members(world) -> None:
    result = run(world)
    assert result.exit_code == 2 and "give at least one --to" in result.stderr
