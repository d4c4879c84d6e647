"""Issue 14 end to end: ``torchrun --nproc-per-node 2 -m dclip_cli ...`` (gloo, one CPU thread per rank) on the tiny
presets, against the same command in one process.

Each rank is a real process: the presets reach them as an installed plugin distribution (``tests.support.torchrun``)
whose checkpoints the test's local HTTP server serves; the one-process references run in this process on the same
presets. Every torchrun launch costs ~10-15 s of process start-up on the 2-core CI box.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from typer.testing import CliRunner

from dclip_cli.cli.app import app
from tests.support.editing import make_specs, tiny_preset, write_image
from tests.support.torchrun import Torchrun, kill_rank, write_plugin

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="reads torchrun's workers from /proc")


@pytest.fixture
def ranks(world: Any) -> Torchrun:
    """The tiny world's presets and checkpoints as a plugin the ranks load; their own cache and data folders."""
    presets = [tiny_preset("tinyface", "a photo of a face"), tiny_preset("tinychurch", "a photo of a dog")]
    plugin = write_plugin(world.root / "plugin", presets, make_specs(world.server))
    return Torchrun(plugin, world.root / "ranks", timeout=20)


def _photos(folder: Path, n: int) -> Path:
    for i in range(n):
        write_image(folder / f"img{i}.png", seed=10 + i)
    return folder


def _png(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB")).astype(np.int16)


def _one_process(*args: str) -> Any:
    result = CliRunner().invoke(app, ["--device", "cpu", *args])
    assert result.exit_code == 0, result.output
    return result


def _check_ok(done: Any) -> None:
    assert done.returncode == 0, done.stderr[-4000:]
    assert "[rank 1]" not in done.stderr  # rank 1 had nothing to warn about, and printed nothing else


def test_edit_under_torchrun_matches_one_process(world: Any, ranks: Torchrun) -> None:
    """5 inputs in batches of 2 on 2 ranks (batches 1 and 3 on rank 0, batch 2 on rank 1), with the edit model
    fine-tuned on the fly (once, over both ranks): the same pixels as one process; rank 0 prints every output in
    input order; the base checkpoint is downloaded once."""
    photos = _photos(world.root / "photos", 5)
    args = [
        "edit",
        str(photos),
        "--to",
        "smiling",
        "--domain",
        "tinyface",
        "--batch-size",
        "2",
        *world.cli_args(),
    ]
    done = ranks.run(["--device", "cpu", *args, "-o", str(world.root / "out")])
    _check_ok(done)
    outputs = [world.root / "out" / f"img{i}.smiling.png" for i in range(5)]
    assert done.stdout.split() == [str(p) for p in outputs]
    assert done.stderr.count("fine-tuning one now") == 1
    assert world.server.count("/tiny_base.ckpt") == 1
    assert [p.name for p in (ranks.home / "data" / "edits" / "tinyface").glob("*.safetensors")] == [
        "smiling.safetensors"
    ]
    docs = [json.loads(p.with_suffix(".json").read_text()) for p in outputs]
    assert {d["settings"]["edit_model_source"] for d in docs} == {"finetuned"}

    _one_process(*args, "-o", str(world.root / "ref"))
    for out in outputs:
        assert np.array_equal(_png(out), _png(world.root / "ref" / out.name)), out.name
    # the quick fine-tune's global batch holds one image (rank 1 runs a weight-0 stand-in): bit for bit the same
    ours = load_file(str(ranks.home / "data" / "edits" / "tinyface" / "smiling.safetensors"))
    theirs = load_file(str(Path(os.environ["DCLIP_DATA"]) / "edits" / "tinyface" / "smiling.safetensors"))
    assert all(torch.equal(ours[k], theirs[k]) for k in theirs)


@pytest.mark.parametrize(
    "command",
    [
        ["mix", "--to", "pixar", "--with-base", "--schedule", "150:1,1;0:0.3,0.7", "--eta", "0.5"],
        ["translate", "--iterations", "2", "--seed", "3"],
    ],
    ids=["mix-eta", "translate"],
)
def test_mix_and_translate_under_torchrun_match_one_process(
    world: Any, ranks: Torchrun, command: list[str]
) -> None:
    """Random noise (η > 0 in mix, the q-sample of translation) comes from per-image seeds, so sharding the
    inputs over ranks changes no pixel. Translate runs through the ``dclip`` entry point (``--no-python``)."""
    photos = _photos(world.root / "photos", 5)
    args = [*command, str(photos), "--domain", "tinyface", "--batch-size", "2", *world.cli_args()]
    if command[0] == "translate":
        args += ["--metrics", "none"]  # an explicit PSNR is an error where nothing is reconstructed
    script = Path(sys.executable).with_name("dclip") if command[0] == "translate" else None
    if script is not None and not script.is_file():
        script = None  # no console script in this environment: -m dclip_cli runs the same program
    done = ranks.run(["--device", "cpu", *args, "-o", str(world.root / "out")], script=script)
    _check_ok(done)
    outputs = [Path(p) for p in done.stdout.split()]
    assert [p.name.split(".")[0] for p in outputs] == [f"img{i}" for i in range(5)]
    _one_process(*args, "-o", str(world.root / "ref"))
    for out in outputs:
        assert np.array_equal(_png(out), _png(world.root / "ref" / out.name)), out.name


def _weights(path: Path) -> torch.Tensor:
    state = load_file(str(path))
    return torch.cat([state[k].flatten().double() for k in sorted(state)])


def test_finetune_under_torchrun_killed_resumed_and_equal_to_one_process(world: Any, ranks: Torchrun) -> None:
    """2 ranks x batch 1 = one process x batch 2. A rank killed mid-run ends the job (non-zero, well within the
    collective timeout) and leaves the last finished epoch; ``--resume`` under torchrun finishes it; rank 0 alone
    writes the run folder and the artifact. The model then equals the one-process one as far as floating point
    allows: Adam moves weights whose true gradient is zero (here the biases and time projections in front of the
    one-channel GroupNorm groups of the tiny UNet) by about the learning rate on rounding noise, so the test
    compares the share of weights within 1e-4, the losses, and the edits the two models make."""
    photos = _photos(world.root / "photos", 4)
    run_dir, artifact = world.root / "run", world.root / "tuned.safetensors"
    args = ["finetune", "--domain", "tinyface", "--text", "smiling face", "--images", str(photos), "--samples", "0",
            "--clip-model", str(world.clip), "--l1-weight", "0.5", "--previews", "0"]  # fmt: skip
    job = ranks.start(["--device", "cpu", *args, "--epochs", "50", "--batch-size", "1", "-o", str(artifact),
                       "--run-dir", str(run_dir)])  # fmt: skip
    try:
        while not (run_dir / "state.pt").exists():
            assert job.poll() is None, job.communicate()[1][-4000:]
            time.sleep(0.05)
        kill_rank(job.pid, 1)
        killed = time.monotonic()
        _, err = job.communicate(timeout=60)
    finally:
        if job.poll() is None:
            job.kill()
    assert job.returncode != 0 and time.monotonic() - killed < ranks.timeout
    assert "Rank 0 lost the other ranks" in err or "Interrupted" in err
    state = torch.load(run_dir / "state.pt", weights_only=True)
    epochs = int(state["epochs_done"]) + 1
    assert 2 <= epochs < 50 and not artifact.exists()
    assert not list(world.root.rglob("*.incomplete"))

    done = ranks.run(["--device", "cpu", *args, "--epochs", str(epochs), "--batch-size", "1", "-o", str(artifact),
                      "--run-dir", str(run_dir), "--resume"])  # fmt: skip
    _check_ok(done)
    assert done.stdout.split() == [str(artifact)]
    assert f"resuming after epoch {epochs - 1}" in done.stderr
    doc = json.loads((run_dir / "run.json").read_text())
    assert doc["status"] == "done" and doc["epochs_done"] == epochs and not (run_dir / "state.pt").exists()
    assert doc["settings"]["batch_size"] == 2  # 2 ranks x 1
    assert world.server.count("/tiny_base.ckpt") == 1

    ref_dir, ref = world.root / "ref-run", world.root / "ref.safetensors"
    _one_process(
        *args, "--epochs", str(epochs), "--batch-size", "2", "-o", str(ref), "--run-dir", str(ref_dir)
    )
    ref_doc = json.loads((ref_dir / "run.json").read_text())
    assert doc["fingerprint"] == ref_doc["fingerprint"]  # the same run, so either could resume the other
    for ours, theirs in zip(doc["epoch_losses"], ref_doc["epoch_losses"], strict=True):
        assert ours == pytest.approx(theirs, rel=1e-4)  # measured: 1.3e-5 after 2 epochs
    a, b = _weights(artifact), _weights(ref)
    assert float(((a - b).abs() <= 1e-4).double().mean()) >= 0.97

    edits = []
    for model, out in ((artifact, "e-ranks"), (ref, "e-one")):
        _one_process("edit", str(photos), "--model", str(model), "--domain", "tinyface", "--to", "smiling face",
                     *world.cli_args(), "-o", str(world.root / out))  # fmt: skip
        edits.append([_png(world.root / out / f"img{i}.smiling_face.png") for i in range(4)])
    assert max(int(np.abs(x - y).max()) for x, y in zip(*edits, strict=True)) <= 1  # within 1/255
