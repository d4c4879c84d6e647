"""Issue 11 (hardening), the applications' part: a bad file, a dying process or a second process never breaks the
library or loses a result. Each test names the point of the issue it covers."""

from __future__ import annotations

import errno
import importlib
import json
import os
import shutil
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from dclip_cli.cli.app import app
from tests.support.editing import checkpoint_bytes, make_tiny32, write_image

ROOT = Path(__file__).resolve().parents[1]
runner = CliRunner()


def edit(world, *args: str):
    return runner.invoke(app, ["edit", *world.cli_args(), *args])


def files(folder: Path) -> set[str]:
    return (
        {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()} if folder.exists() else set()
    )


def _nan_state(seed: int = 7) -> dict[str, torch.Tensor]:
    state = make_tiny32(seed).unet.state_dict()
    key = next(k for k, v in state.items() if v.is_floating_point() and v.numel() > 1)
    state[key] = state[key].clone()
    state[key].view(-1)[0] = float("nan")
    return state


# --- 3. non-finite weights, losses and results ---------------------------------------------------------------------


def test_non_finite_weights_are_refused_at_load(world) -> None:
    """Issue 11.3: NaN weights used to load silently and give flat grey images with exit code 0."""
    from dclip_cli.artifacts import save_artifact

    tuned = make_tiny32(7)
    tuned.unet.load_state_dict(_nan_state())
    model = save_artifact(
        world.root / "nan.safetensors", tuned, {"src_text": "face", "trg_text": "x", "t0": 200}
    )
    out = world.root / "out"
    result = edit(
        world, str(world.image), "--to", "x y", "--domain", "tinyface", "--model", str(model), "-o", str(out)
    )
    assert result.exit_code == 1
    assert "holds NaN or infinite values in 1 of its" in result.stderr and "was refused" in result.stderr
    assert files(out) == set()

    checkpoint = world.root / "nan.ckpt"
    torch.save(_nan_state(0), checkpoint)
    inv = runner.invoke(app, ["invert", str(world.image), "--checkpoint", str(checkpoint), "-o", str(out)])
    assert inv.exit_code == 1 and "holds NaN or infinite values" in inv.stderr
    assert files(out) == set()


def test_no_output_is_written_from_non_finite_values(world, monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 11.3: a result that came out NaN is not saved as a grey image (and nothing of its set is written)."""
    from dclip_cli.apps import pipeline

    real = pipeline.Run.generate

    def nan_generate(self, *args, **kwargs):
        return real(self, *args, **kwargs) * float("nan")

    monkeypatch.setattr(pipeline.Run, "generate", nan_generate)
    out = world.root / "out"
    result = edit(world, str(world.image), "--to", "pixar", "--domain", "tinyface", "-o", str(out))
    assert result.exit_code == 1
    assert "NaN or infinite values, so it was not written" in result.stderr
    assert files(out) == set()


def test_finetune_stops_when_it_diverges(tmp_path: Path) -> None:
    """Issue 11.3: 'finetune --lr 1e30' used to save an all-NaN artifact with exit code 0."""
    from tests.support.finetune import tiny_preset

    out = tmp_path / "tiger.safetensors"
    with tiny_preset(tmp_path / "preset") as tiny:
        result = runner.invoke(
            app, ["--device", "cpu", "finetune", "--domain", "tinycat", "--text", "tiger", "--samples", "2",
                  "--previews", "0", "--lr", "1e30", "--clip-model", str(tiny.clip), "-o", str(out),
                  "--run-dir", str(tmp_path / "run")],
        )  # fmt: skip
    assert result.exit_code == 1, result.output
    assert "Fine-tuning diverged" in result.stderr and "NaN or infinite" in result.stderr
    assert "Lower the learning rate (--lr)" in result.stderr and "no artifact was saved" in result.stderr
    assert not out.exists() and not [p for p in tmp_path.rglob("*.incomplete*")]
    run = json.loads((tmp_path / "run" / "run.json").read_text())
    assert run["status"] == "diverged" and "diverged" in run["error"]


def test_divergence_keeps_the_last_finished_epoch_resumable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 11.3: a loss that turns NaN in epoch 2 stops the job; epoch 1's state stays and --resume continues."""
    from dclip_cli.errors import TrainingDivergedError
    from dclip_cli.losses.clip import DirectionalCLIPLoss
    from dclip_cli.store import load_clip
    from dclip_cli.training import loop, run_finetune
    from tests.support.finetune import tiny_preset

    real = loop.loss_terms

    def nan_in_epoch_two(*args, **kwargs):
        total, terms = real(*args, **kwargs)
        calls.append(1)
        return (total * float("nan"), terms) if len(calls) > 2 else (total, terms)

    calls: list[int] = []
    with tiny_preset(tmp_path / "preset") as tiny:
        kw = {"n_samples": 2, "n_preview": 0, "device": "cpu", "overrides": {"epochs": 2},
              "clip_loss": DirectionalCLIPLoss(load_clip(tiny.clip, device="cpu")), "run_dir": tmp_path / "run"}  # fmt: skip
        monkeypatch.setattr(loop, "loss_terms", nan_in_epoch_two)
        with pytest.raises(TrainingDivergedError) as info:
            run_finetune("tinycat", texts=["tiger"], output=tmp_path / "a.safetensors", **kw)
        assert "epoch 2, batch 1" in info.value.message and "--resume" in (info.value.hint or "")
        assert not (tmp_path / "a.safetensors").exists()
        assert torch.load(tmp_path / "run" / "state.pt", weights_only=True)["epochs_done"] == 1
        assert json.loads((tmp_path / "run" / "run.json").read_text())["status"] == "diverged"
        monkeypatch.setattr(loop, "loss_terms", real)
        resumed = run_finetune(
            "tinycat", texts=["tiger"], output=tmp_path / "a.safetensors", resume=True, **kw
        )
    assert resumed.pairs[0].resumed_from == 1 and (tmp_path / "a.safetensors").is_file()


# --- 7. offline, and official models first -----------------------------------------------------------------------


@pytest.fixture
def finetunes(monkeypatch: pytest.MonkeyPatch) -> list[dict]:
    """Record the calls of run_finetune (the real function still runs)."""
    calls: list[dict] = []
    module = importlib.import_module("dclip_cli.training")
    real = module.run_finetune

    def spy(*args, **kwargs):
        calls.append(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(module, "run_finetune", spy)
    return calls


def test_offline_missing_official_model_is_an_error(
    world, finetunes, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 11.7: offline, 'edit --to pixar' used to warn and start a long fine-tune instead."""
    from dclip_cli.store import fetch

    fetch("tiny_base")
    monkeypatch.setenv("DCLIP_OFFLINE", "1")
    result = edit(world, str(world.image), "--to", "pixar", "--domain", "tinyface")
    assert result.exit_code == 1
    assert "DCLIP_OFFLINE" in result.stderr and "dclip models fetch tiny/pixar" in result.stderr
    assert "fine-tun" not in result.stderr.lower() and finetunes == []
    assert files(world.image.parent) == {"photo.png"}


def test_an_automatic_finetune_never_replaces_the_official_model(world, finetunes) -> None:
    """Issue 11.7: a fine-tune made while the official model could not be downloaded used to shadow it for good."""
    from dclip_cli.artifacts import read_artifact

    world.server.misbehave("/human_pixar_t201.pth", status=404, times=None)
    first = edit(
        world, str(world.image), "--to", "pixar", "--domain", "tinyface", "-o", str(world.root / "a")
    )
    assert first.exit_code == 0, first.output
    assert "not available" in first.stderr and "will not replace the official model" in first.stderr
    assert len(finetunes) == 1
    doc = json.loads((world.root / "a" / "photo.pixar.json").read_text())
    assert doc["settings"]["edit_model_source"] == "finetuned"
    assert read_artifact(doc["models"][1]["path"]).metadata["origin"] == "auto"

    world.server.add("/human_pixar_t201.pth", checkpoint_bytes(7))  # the official model is back
    second = edit(
        world, str(world.image), "--to", "pixar", "--domain", "tinyface", "-o", str(world.root / "b")
    )
    assert second.exit_code == 0, second.output
    doc = json.loads((world.root / "b" / "photo.pixar.json").read_text())
    assert doc["settings"]["edit_model_source"] == "official" and len(finetunes) == 1

    # a model fine-tuned on purpose comes first
    tuned = runner.invoke(app, ["finetune", "--domain", "tinyface", "--edit", "pixar", "--samples", "1", "--previews",
                                "0", "--clip-model", str(world.clip), "--overwrite"])  # fmt: skip
    assert tuned.exit_code == 0, tuned.output
    third = edit(
        world, str(world.image), "--to", "pixar", "--domain", "tinyface", "-o", str(world.root / "c")
    )
    doc = json.loads((world.root / "c" / "photo.pixar.json").read_text())
    assert doc["settings"]["edit_model_source"] == "library", third.output


# --- 8. --overwrite keeps the old pair until the new one is complete ---------------------------------------------


def test_overwrite_keeps_the_old_pair_when_the_new_sidecar_fails(
    world, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 11.8: a full disk while writing the new sidecar used to leave the old sidecar without its image."""
    from dclip_cli import manifest

    args = [str(world.image), "--to", "pixar", "--domain", "tinyface"]
    assert edit(world, *args).exit_code == 0
    image, sidecar = world.image.with_name("photo.pixar.png"), world.image.with_name("photo.pixar.json")
    before = image.read_bytes(), sidecar.read_bytes()

    def disk_full(path, *a, **k):
        Path(path).write_text("{")  # part of the file made it to disk
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(manifest, "write_manifest", disk_full)
    result = edit(world, *args, "--overwrite", "--steps", "2")
    assert result.exit_code == 1 and "No space left on device" in result.stderr
    assert (image.read_bytes(), sidecar.read_bytes()) == before
    assert files(world.image.parent) == {"photo.png", "photo.pixar.png", "photo.pixar.json"}


# --- 9. names never leave the output folder -----------------------------------------------------------------------


@pytest.mark.parametrize("key", ["../../x", "a/b", "..", "Smiling", "x\n"])
def test_plugin_edit_keys_are_validated(key: str) -> None:
    """Issue 11.9: a plugin edit key such as '../../x' used to write outputs outside the output folder."""
    from dclip_cli.errors import PresetError
    from dclip_cli.presets.preset import Edit
    from tests.support.editing import tiny_preset

    with pytest.raises(PresetError, match="edit key .* must be lower case letters"):
        tiny_preset("tinyface", "a face", edits={key: Edit(key, "face", "x face")})


def test_no_derived_name_leaves_the_folder(tmp_path: Path) -> None:
    """Issue 11.9: whatever a tag or key holds, the planners refuse a name that would leave the chosen folder."""
    from dclip_cli.errors import ConfigError
    from dclip_cli.outputs import plan_artifacts, plan_images
    from dclip_cli.textedit import TextEdit

    image = write_image(tmp_path / "in" / "photo.png")
    for tag in ("../../x", "a/b", "a\\b"):
        with pytest.raises(ConfigError, match="would leave the folder"):
            plan_images([image], tag, tmp_path / "out")
    with pytest.raises(ConfigError, match="would leave the folder"):
        plan_artifacts("face", [TextEdit("../x", "a", "b")], [200], output=tmp_path / "out", library=False)
    with pytest.raises(ConfigError, match="not a valid checkpoint name"):
        plan_artifacts("face", [TextEdit("../x", "a", "b")], [200], output=None, library=True)
    assert files(tmp_path) == {"in/photo.png"}


# --- 10. a sweep has its own sidecar -------------------------------------------------------------------------------


def test_sweep_and_plain_edit_each_have_their_sidecar(world) -> None:
    """Issue 11.10: the README's plain edit then sweep used to share 'photo.<tag>.json' (the second was refused)."""
    args = [str(world.image), "--to", "pixar", "--domain", "tinyface"]
    assert edit(world, *args).exit_code == 0
    sweep = edit(world, *args, "--sweep", "0,1")
    assert sweep.exit_code == 0, sweep.output
    plain_doc = world.image.with_name("photo.pixar.json")
    sweep_doc = world.image.with_name("photo.pixar.sweep.json")
    assert json.loads(sweep_doc.read_text())["outputs"]["image"].endswith("photo.pixar.sweep.png")
    again = edit(world, *args, "--overwrite")
    assert again.exit_code == 0, again.output
    doc = json.loads(plain_doc.read_text())
    assert doc["settings"]["sweep"] is None and doc["outputs"]["image"].endswith("photo.pixar.png")
    assert json.loads(sweep_doc.read_text())["settings"]["sweep"] == [0.0, 1.0]


# --- 13. an explicit --metrics is a promise --------------------------------------------------------------------------


def test_explicit_metrics_that_cannot_be_computed_are_errors(world, monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 11.13: '--metrics clip' with an unusable CLIP used to exit 0 with empty metrics."""
    from dclip_cli.store import fetch

    broken = world.root / "broken_clip.pt"
    broken.write_bytes(b"not a CLIP model")
    out = world.root / "out"
    base = [str(world.image), "--to", "pixar", "--domain", "tinyface", "-o", str(out)]
    result = runner.invoke(app, ["edit", *base, "--clip-model", str(broken), "--metrics", "clip"])
    assert result.exit_code == 1
    assert "CLIP metrics cannot be computed ('--metrics clip' was asked for): The CLIP file" in result.stderr
    assert files(out) == set()

    fetch("tiny_base"), fetch("tiny/pixar")
    monkeypatch.setenv("DCLIP_OFFLINE", "1")  # the LPIPS weights are not cached
    result = runner.invoke(app, ["edit", *base, "--clip-model", str(world.clip), "--metrics", "lpips"])
    assert result.exit_code == 1 and "dclip models fetch lpips-alex" in result.stderr
    assert files(out) == set()

    # the default: one warning naming the fix, and the sidecar lists only what was computed
    result = runner.invoke(app, ["edit", *base, "--clip-model", str(world.clip)])
    assert result.exit_code == 0, result.output
    warned = [line for line in result.stderr.splitlines() if "LPIPS" in line]
    assert (
        len(warned) == 1 and "LPIPS skipped" in warned[0] and "dclip models fetch lpips-alex" in result.stderr
    )
    doc = json.loads((out / "photo.pixar.json").read_text())
    assert doc["settings"]["metrics"] == ["clip"]
    assert set(doc["metrics"]) == {"clip_directional", "clip_target"}


# --- 16. one fine-tune of an edit at a time --------------------------------------------------------------------------


def _start(world, env: dict[str, str], log: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "tests.support.procs", *args], cwd=ROOT, env=env, stdout=subprocess.PIPE,
        stderr=log.open("w"), text=True,
    )  # fmt: skip


def _wait_for(condition, what: str, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def test_concurrent_finetunes_of_one_edit_train_once(world, tmp_path: Path) -> None:
    """Issue 11.16: two processes needing the same fine-tune both trained; the second then failed with 'already
    exists', and two 'dclip finetune' runs left run.json saying 'training'. Now the others wait: an edit and a plain
    finetune reuse the first result (saying so), 'finetune --overwrite' trains after it."""
    from dclip_cli.checkpoints.cache import library_dir
    from dclip_cli.store import fetch

    fetch("tiny_base")  # the processes share the cache; their presets point at an unreachable server
    hold, marker = tmp_path / "hold", tmp_path / "marker"
    hold.touch()
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "plugins")]),
        "OMP_NUM_THREADS": "1",
    }
    common = [
        "--clip-model",
        str(world.clip),
        "--metrics",
        "none",
        "--finetune-samples",
        "1",
        "--domain",
        "tinyface",
    ]
    tune = ["finetune", "--domain", "tinyface", "--edit", "smiling", "--samples", "2", "--previews", "0",
            "--clip-model", str(world.clip)]  # fmt: skip
    logs = {name: tmp_path / f"{name}.log" for name in ("first", "edit", "finetune", "overwrite")}
    first = _start(world, {**env, "DCLIP_TEST_HOLD": str(hold), "DCLIP_TEST_MARKER": str(marker)}, logs["first"],
                   "edit", str(world.image), "--to", "smiling", *common, "-o", str(tmp_path / "a"))  # fmt: skip
    try:
        _wait_for(marker.exists, "the first process to start training")
        others = {
            "edit": _start(
                world,
                env,
                logs["edit"],
                "edit",
                str(world.image),
                "--to",
                "smiling",
                *common,
                "-o",
                str(tmp_path / "b"),
            ),  # fmt: skip
            "finetune": _start(world, env, logs["finetune"], *tune),
            "overwrite": _start(world, env, logs["overwrite"], *tune, "--overwrite"),
        }
        for name in others:
            _wait_for(lambda name=name: "Waiting for another dclip process" in logs[name].read_text(), name)
    finally:
        hold.unlink()
    procs = {"first": first, **others}
    outs = {name: p.communicate(timeout=300)[0] for name, p in procs.items()}
    errs = {name: log.read_text() for name, log in logs.items()}
    assert {name: p.returncode for name, p in procs.items()} == dict.fromkeys(procs, 0), errs
    assert "reusing" in errs["edit"] and "reusing" in errs["finetune"] and "reusing" not in errs["overwrite"]
    assert "Fine-tuned 1 edit(s)" in errs["overwrite"]
    assert [p.name for p in (library_dir() / "tinyface").glob("*.safetensors")] == ["smiling.safetensors"]
    assert (
        outs["finetune"].split()
        == outs["overwrite"].split()
        == [str(library_dir() / "tinyface" / "smiling.safetensors")]
    )
    runs = [json.loads(p.read_text())["status"] for p in library_dir().parent.glob("runs/*/run.json")]
    assert runs and set(runs) == {"done"}
    assert (tmp_path / "a" / "photo.smiling.png").is_file() and (
        tmp_path / "b" / "photo.smiling.png"
    ).is_file()


# --- 17. input errors, and what an interrupted run prints ------------------------------------------------------------


def _png_header(path: Path, width: int, height: int) -> Path:
    """A PNG that announces ``width`` x ``height`` pixels (Pillow reads the size without decoding anything)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")
    )
    return path


def test_unreadable_inputs_get_the_loaders_own_message(world) -> None:
    """Issue 11.17 and 12: too small / too large images got a generic hint, a 12000x12000 image printed Pillow's raw
    DecompressionBombWarning, and 'dclip edit README.md' printed a warning and an error for the same file."""
    from dclip_cli.images import load_image

    small = write_image(world.root / "small.png", size=(16, 16))
    result = edit(world, str(small), "--to", "pixar", "--domain", "tinyface")
    assert result.exit_code == 1
    assert "only 16x16 pixels" in result.stderr and "Use a larger image" in result.stderr
    assert "Pass a PNG, JPEG or WebP" not in result.stderr and "Skipping" not in result.stderr

    big = _png_header(world.root / "big.png", 12000, 12000)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = edit(world, str(big), "--to", "pixar", "--domain", "tinyface")
        with pytest.raises(Exception, match="has 144 megapixels, more than the 89 megapixels"):
            load_image(big)
    assert not [w for w in caught if "DecompressionBomb" in str(w.category)]
    assert (
        result.exit_code == 1
        and "has 144 megapixels" in result.stderr
        and "Downscale the image" in result.stderr
    )

    readme = ROOT / "README.md"
    result = edit(world, str(readme), "--to", "pixar", "--domain", "tinyface")
    assert result.exit_code == 1
    assert result.stderr.count(str(readme)) == 1 and "Skipping" not in result.stderr


def test_interrupted_runs_print_the_outputs_already_completed(world, monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 11.17: on SIGINT the paths of the outputs already written were not printed, so scripts lost them."""
    import signal

    from dclip_cli.apps import pipeline

    second = write_image(world.root / "in" / "second.png", seed=3)
    real = pipeline.Run.write

    def write_then_interrupt(self, *args, **kwargs):
        real(self, *args, **kwargs)
        if len(self.results) == 1:
            os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C right after the first image was completed

    monkeypatch.setattr(pipeline.Run, "write", write_then_interrupt)
    result = edit(world, str(world.image), str(second), "--to", "pixar", "--domain", "tinyface", "-b", "1")
    assert result.exit_code == 130
    assert result.stdout.split() == [str(world.image.with_name("photo.pixar.png"))]
    assert not world.image.with_name("second.pixar.png").exists()


def test_interrupted_invert_and_finetune_print_what_they_completed(
    world, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 11.17, for the other commands: the latents of the images done, the artifacts of the edits done."""
    import signal

    from dclip_cli import latents
    from dclip_cli.training import loop

    second = write_image(world.root / "in" / "second.png", seed=3)
    real_save = latents.save_latent
    saved: list[Path] = []

    def save_then_interrupt(path, *args, **kwargs):
        real_save(path, *args, **kwargs)
        saved.append(Path(path))
        if len(saved) == 2:  # the second image's latent is being written (under its temporary name)
            os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(latents, "save_latent", save_then_interrupt)
    out = world.root / "lat"
    inv = runner.invoke(
        app, ["invert", str(world.image), str(second), "--domain", "tinyface", "-o", str(out)]
    )
    assert inv.exit_code == 130
    assert inv.stdout.split() == [str(out / "photo.latent.safetensors"), str(out / "photo.recon.png")]
    assert files(out) == {"photo.latent.safetensors", "photo.recon.png"}

    real_finetune = loop.finetune

    def second_edit_interrupted(*args, **kwargs):
        if kwargs["trg_text"] == "old face":
            raise KeyboardInterrupt
        return real_finetune(*args, **kwargs)

    monkeypatch.setattr(loop, "finetune", second_edit_interrupted)
    monkeypatch.setattr("dclip_cli.training.job.finetune", second_edit_interrupted)
    tune = runner.invoke(app, ["finetune", "--domain", "tinyface", "--text", "young face", "--text", "old face",
                               "--samples", "1", "--previews", "0", "--clip-model", str(world.clip), "-o",
                               str(world.root / "tuned")])  # fmt: skip
    assert tune.exit_code == 130
    assert tune.stdout.split() == [str(world.root / "tuned" / "tinyface_young_face_t200.safetensors")]


# --- 18. what the numbers depend on is recorded ------------------------------------------------------------------------


def test_numerics_are_recorded_in_sidecars_latents_and_artifacts(world) -> None:
    """Issue 11.18: bf16 results on a CPU depend on the thread count; the sidecar, the latent file and the artifact
    record the torch version, device, precision and (for low precision on a CPU) the thread count."""
    from dclip_cli.artifacts import read_artifact
    from dclip_cli.latents import load_latent

    result = edit(world, str(world.image), "--to", "smiling", "--domain", "tinyface", "--precision", "bf16")
    assert result.exit_code == 0, result.output
    doc = json.loads(world.image.with_name("photo.smiling.json").read_text())
    numerics = doc["numerics"]
    assert numerics["torch"] == torch.__version__ and numerics["device"] == "cpu"
    assert numerics["precision"] == doc["settings"]["precision"]
    if numerics["precision"] != "fp32":
        assert numerics["cpu_threads"] == torch.get_num_threads()
    artifact = read_artifact(doc["models"][1]["path"]).metadata["numerics"]
    assert artifact["torch"] == torch.__version__ and artifact["device"] == "cpu"

    inv = runner.invoke(
        app, ["invert", str(world.image), "--domain", "tinyface", "-o", str(world.root / "lat")]
    )
    assert inv.exit_code == 0, inv.output
    _, meta = load_latent(world.root / "lat" / "photo.latent.safetensors")
    recorded = json.loads(meta["numerics"])
    assert (
        recorded["precision"] == "fp32" and "cpu_threads" not in recorded
    )  # fp32 does not depend on threads


# --- 19. stochastic results depend on what the user gave, not on the batching ---------------------------------------


def test_eta_noise_does_not_depend_on_the_latents_last_bits(world, monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 11.19: the per-image seed came from a hash of the inverted latent, whose last bits depend on the batch
    it was computed in (simulated here: the inversion's rounding differs with the batch size)."""
    from dclip_cli.checkpoints.cache import cache_dir
    from dclip_cli.diffusion import ddim

    real = ddim.invert

    def batch_dependent(model, x0, **kwargs):
        x = real(model, x0, **kwargs)
        return x * (1 + 1e-7 * x0.shape[0])  # like a CPU kernel whose summation order follows the batch size

    monkeypatch.setattr(ddim, "invert", batch_dependent)
    second = write_image(world.root / "in" / "second.png", seed=3)
    results = {}
    for batch in ("1", "2"):
        shutil.rmtree(cache_dir() / "latents", ignore_errors=True)  # invert again, in batches of this size
        out = world.root / f"b{batch}"
        r = edit(world, str(world.image), str(second), "--to", "pixar", "--domain", "tinyface", "--eta", "0.5",
                 "--seed", "4", "-b", batch, "-o", str(out))  # fmt: skip
        assert r.exit_code == 0, r.output
        results[batch] = [
            np.asarray(Image.open(out / n), dtype=int) for n in ("photo.pixar.png", "second.pixar.png")
        ]
    for one, two in zip(results["1"], results["2"], strict=True):
        assert np.abs(one - two).max() <= 1  # the same noise: only the simulated rounding differs
