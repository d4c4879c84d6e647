"""Issue 12 (first run, as a newcomer meets it), the applications' part: time estimates and the question before a
long run, metrics that cost nothing by default, sampling that shows progress and keeps its work, fine-tunes that
say how they were trained, and a domain chosen by the edit."""

from __future__ import annotations

import importlib
import json
import time
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from dclip_cli.cli.app import app
from dclip_cli.progress import Event
from tests.support.editing import setup_world, tiny_preset

runner = CliRunner()


def files(folder: Path) -> set[str]:
    return (
        {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()} if folder.exists() else set()
    )


@pytest.fixture
def finetunes(monkeypatch: pytest.MonkeyPatch) -> list[dict]:
    calls: list[dict] = []
    module = importlib.import_module("dclip_cli.training")
    real = module.run_finetune

    def spy(*args, **kwargs):
        calls.append(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(module, "run_finetune", spy)
    return calls


# --- a CPU user's first edit: the question before a long run ---------------------------------------------------------


def test_a_long_run_without_a_terminal_stops_with_the_estimate_and_faster_choices(
    world, finetunes, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 12: 'dclip edit photo.jpg --to smiling' on a CPU started a fine-tune of up to hours without asking.
    The threshold is lowered to 0 minutes, so the tiny run counts as long; CliRunner has no terminal."""
    from dclip_cli.checkpoints.cache import data_dir, library_dir

    monkeypatch.setenv("DCLIP_CONFIRM_MINUTES", "0")
    out = world.root / "out"
    args = [
        "edit",
        str(world.image),
        "--to",
        "smiling",
        "--domain",
        "tinyface",
        *world.cli_args(),
        "-o",
        str(out),
    ]
    result = runner.invoke(app, args)
    assert result.exit_code == 1
    err = " ".join(result.stderr.split())
    assert "This run would take about" in err and "on this CPU in fp32" in err
    assert "fine-tuning smiling on 2 image(s), 1 epoch; then inverting and editing 1 image(s)" in err
    assert "more than the 0 min dclip starts without asking, and there is no terminal to ask on" in err
    assert "a named edit with an official model (pixar)" in err
    assert "--finetune-samples 0 --inv-steps 10 --steps 10" in err and "a GPU (--device cuda)" in err
    assert "Pass --yes to run it anyway" in err
    assert files(out) == set() and files(library_dir()) == set() and not (data_dir() / "runs").exists()
    assert len(finetunes) == 0

    agreed = runner.invoke(app, [*args, "--yes"])
    assert agreed.exit_code == 0, agreed.output
    assert (out / "photo.smiling.png").is_file() and len(finetunes) == 1


def test_the_question_on_a_terminal(world, monkeypatch: pytest.MonkeyPatch) -> None:
    """On a terminal the run asks; a 'no' stops it before anything is written, a 'yes' runs it."""
    from dclip_cli.api import Outputs, RunConfig, Runtime, edit_images
    from dclip_cli.errors import NotConfirmedError
    from dclip_cli.estimate import LongRuns

    asked: list[str] = []

    def config(answer: bool) -> RunConfig:
        def ask(question: str) -> bool:
            asked.append(question)
            return answer

        runtime = Runtime(device="cpu", clip_model=str(world.clip), long_runs=LongRuns(0.0, ask))
        return RunConfig(outputs=Outputs(output=world.root / "out", metrics=()), runtime=runtime)

    with pytest.raises(NotConfirmedError, match="Stopped before the long run started; nothing was written"):
        edit_images(
            [world.image], to="pixar", domain="tinyface", config=config(False), progress=lambda e: None
        )
    assert files(world.root / "out") == set()
    assert "This run takes about" in asked[0] and asked[0].endswith("Start it now?")
    report = edit_images(
        [world.image], to="pixar", domain="tinyface", config=config(True), progress=lambda e: None
    )
    assert report.results[0].outputs.image.is_file() and len(asked) == 2


@pytest.mark.parametrize("command", ["invert", "finetune"])
def test_invert_and_finetune_ask_too(world, monkeypatch: pytest.MonkeyPatch, command: str) -> None:
    monkeypatch.setenv("DCLIP_CONFIRM_MINUTES", "0")
    out = world.root / "out"
    if command == "invert":
        args = ["invert", str(world.image), "--domain", "tinyface", "-o", str(out)]
    else:
        args = ["finetune", "--domain", "tinyface", "--text", "old face", "--samples", "1", "--previews", "0",
                "--clip-model", str(world.clip), "-o", str(out)]  # fmt: skip
    result = runner.invoke(app, args)
    assert result.exit_code == 1 and "This run would take about" in result.stderr
    assert "Pass --yes" in result.stderr and files(out) == set()
    assert runner.invoke(app, [*args, "-y"]).exit_code == 0 and files(out)


def test_the_threshold_setting_is_checked(world, monkeypatch: pytest.MonkeyPatch) -> None:
    from dclip_cli.estimate import confirm_threshold_seconds

    assert (
        confirm_threshold_seconds({}) == 600.0
        and confirm_threshold_seconds({"DCLIP_CONFIRM_MINUTES": "2.5"}) == 150
    )
    monkeypatch.setenv("DCLIP_CONFIRM_MINUTES", "soon")
    result = runner.invoke(
        app, ["edit", str(world.image), "--to", "pixar", "--domain", "tinyface", *world.cli_args()]
    )
    assert (
        result.exit_code == 1 and "DCLIP_CONFIRM_MINUTES='soon' is not a number of minutes" in result.stderr
    )


# --- estimates: a warm call, cached phases left out, plain words -------------------------------------------------------


def test_the_estimate_times_a_warm_call() -> None:
    """Issue 12: timing the first call (allocations, kernel selection) made estimates up to 2x too long."""
    from dclip_cli.estimate import estimate_run
    from dclip_cli.precision import warm_call_seconds

    calls: list[float] = []

    def model(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        time.sleep(0.3 if not calls else 0.01)  # a slow first call, then fast ones
        calls.append(1)
        return x

    x = torch.zeros(1, 3, 8, 8)
    assert warm_call_seconds(model, x) < 0.2 and len(calls) == 2
    calls.clear()
    estimate = estimate_run(model, x, infer_calls=100, device="cpu", what="inverting 1 image")
    assert estimate is not None and estimate.seconds < 10  # 100 x 0.01 s, not 100 x 0.3 s
    assert (
        estimate.describe().startswith("about ")
        and "on this CPU in fp32 (inverting 1 image)" in estimate.describe()
    )


def test_a_finetune_estimate_counts_this_process_s_share_under_torchrun() -> None:
    """Under torchrun each rank draws, inverts and trains on its share of the images (rank 0 alone makes the
    previews), so rank 0's estimate counts its share, not the whole job's calls."""
    from dclip_cli.estimate import finetune_calls
    from dclip_cli.training import FinetuneConfig

    cfg = FinetuneConfig(n_inv_steps=5, n_train_steps=3, n_gen_steps=4, epochs=2)
    one = finetune_calls([cfg], n_images=9, n_draw=6, n_invert=9, n_preview=1)
    assert one == (6 * 4 + 9 * (2 * 5 - 1) + 2 * 1 * 4, 2 * 9 * 3)
    four = finetune_calls([cfg], n_images=9, n_draw=6, n_invert=9, n_preview=1, world_size=4)
    assert four == (2 * 4 + 3 * (2 * 5 - 1) + 2 * 1 * 4, 2 * 3 * 3)  # shares of 6 and 9 on 4 ranks: 2 and 3


@pytest.mark.parametrize(
    ("seconds", "words"),
    [
        (3.2, "about 3 s"),
        (14, "about 15 s"),
        (240, "about 4 min"),
        (4 * 3600 + 59, "about 4 h 01 min"),
        (3600, "about 1 h"),
    ],
)
def test_durations_are_said_plainly(seconds: float, words: str) -> None:
    from dclip_cli.estimate import plain_duration

    assert plain_duration(seconds) == words


def test_estimates_leave_out_what_the_caches_serve(world, monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 12: a cached inversion was still counted (46 s estimated for a 14 s run)."""
    from dclip_cli import precision

    monkeypatch.setattr(precision, "ESTIMATE_MIN_SECONDS", 0.0)
    args = ["edit", str(world.image), "--to", "pixar", "--domain", "tinyface", *world.cli_args()]
    first = runner.invoke(app, args)
    assert first.exit_code == 0, first.output
    assert "(inverting and editing 1 image(s))" in first.stderr
    again = runner.invoke(app, [*args, "--overwrite"])
    assert again.exit_code == 0, again.output
    assert "(editing 1 image(s))" in again.stderr  # the latent (and its reconstruction) come from the cache


# --- the default metrics cost no UNet call --------------------------------------------------------------------------


def test_default_metrics_add_no_reconstruction_pass(world, monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 12: the default '--metrics all' added a full reconstruction pass (a third of an edit's time)."""
    from dclip_cli.api import Outputs, RunConfig, Runtime, edit_images
    from dclip_cli.store import fetch

    fetch("tiny_base"), fetch("tiny/pixar")
    monkeypatch.setenv("DCLIP_OFFLINE", "1")  # LPIPS is not cached: the default skips it with a warning
    runtime = Runtime(device="cpu", clip_model=str(world.clip))
    for compare in (False, True):
        events: list[Event] = []
        out = world.root / f"compare-{compare}"
        config = RunConfig(outputs=Outputs(output=out, compare=compare), runtime=runtime)
        report = edit_images(
            [world.image], to="pixar", domain="tinyface", config=config, progress=events.append
        )
        labels = {e.label for e in events if e.kind == "progress"}
        doc = report.results[0].manifest
        if compare:  # the reconstruction is made for the sheet anyway, so its PSNR is free
            assert "Reconstructing" in labels and doc["settings"]["metrics"] == ["clip", "psnr"]
            assert "reconstruction_psnr" in doc["metrics"]
        else:
            assert labels == {"Inverting", "Generating"}
            assert doc["settings"]["metrics"] == ["clip"] and set(doc["metrics"]) == {
                "clip_directional",
                "clip_target",
            }
        assert [e.message for e in events if e.kind == "warning"][0].startswith("LPIPS skipped")


# --- samples for fine-tuning: progress per step, kept as they are drawn ----------------------------------------------


class _Counting(torch.nn.Module):
    """An eps-model predicting zero noise that counts its calls."""

    image_size = 16

    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(()))
        self.calls = 0

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return x * self.w


def test_samples_show_progress_per_step_and_survive_an_interrupt(tmp_path: Path) -> None:
    """Issue 12: sampling showed a finished bar for minutes and kept nothing until every sample was drawn."""
    from dclip_cli.progress import Reporter
    from dclip_cli.training.data import cached_samples, samples_to_draw

    model = _Counting()
    events: list[Event] = []

    def stop_in_the_second_batch(event: Event) -> None:
        events.append(event)
        if event.kind == "progress" and event.status.startswith("4/8"):
            raise KeyboardInterrupt

    kw = {"model_sha256": "ab" * 32, "seed": 1, "n_steps": 5, "batch_size": 4, "cache_root": tmp_path}
    with pytest.raises(KeyboardInterrupt):
        cached_samples(model, 8, reporter=Reporter(stop_in_the_second_batch), **kw)
    steps = [e for e in events if e.kind == "progress"]
    assert [e.done for e in steps[:5]] == [1, 2, 3, 4, 5] and steps[0].total == 10  # one event per DDIM step
    assert samples_to_draw(8, **kw) == 4  # the first batch was kept
    model.calls = 0
    events.clear()
    drawn = cached_samples(model, 8, reporter=Reporter(events.append), **kw)
    assert drawn.shape == (8, 3, 16, 16) and model.calls == 5  # only the second batch was drawn
    assert any("(4 kept from an earlier run)" in e.message for e in events)
    model.calls = 0
    assert torch.equal(cached_samples(model, 8, **kw), drawn) and model.calls == 0


# --- fine-tunes say how they were trained ---------------------------------------------------------------------------


@pytest.fixture
def recipe_world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, clip_file: Path):
    """The tiny world with a preset whose recipe trains on 8 images (more than a quick on-the-fly fine-tune)."""
    from tests.support.http_server import FileServer

    presets = [tiny_preset("tinyface", "a photo of a face", n_train_images=8),
               tiny_preset("tinychurch", "a photo of a dog")]  # fmt: skip
    with FileServer() as server:
        yield setup_world(tmp_path, server, monkeypatch, clip_file, presets)


def test_a_reused_quick_finetune_says_how_it_was_trained(recipe_world) -> None:
    """Issue 12: a fine-tune with reduced settings silently became the edit later plain edits reused."""
    from dclip_cli.artifacts import read_artifact

    world = recipe_world
    args = ["edit", str(world.image), "--to", "smiling", "--domain", "tinyface", *world.cli_args()]
    first = runner.invoke(app, args)
    assert first.exit_code == 0, first.output
    doc = json.loads(world.image.with_name("photo.smiling.json").read_text())
    meta = read_artifact(doc["models"][1]["path"]).metadata
    assert (meta["origin"], meta["epochs"], meta["n_train_images"], meta["n_photos"], meta["n_samples"]) == (
        "auto", 1, 2, 1, 1,
    )  # fmt: skip
    second = runner.invoke(app, [*args, "--overwrite"])
    assert second.exit_code == 0, second.output
    text = " ".join(second.stderr.split())
    assert (
        "It was fine-tuned on the fly by an edit with 1 epoch on 2 images, 2 training and 3 inversion steps"
        in text
    )
    assert "less than the preset's recipe (1 epoch on 8 images, 2 training and 3 inversion steps)" in text
    assert "dclip finetune --domain tinyface --edit smiling --overwrite" in text


def test_a_mix_says_before_it_finetunes_at_another_t0(
    world, finetunes, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 12: a mix of edits whose models have different t0 silently started a new fine-tune."""
    tuned = runner.invoke(app, ["finetune", "--domain", "tinyface", "--edit", "smiling", "--t0", "150", "--samples",
                                "1", "--previews", "0", "--clip-model", str(world.clip)])  # fmt: skip
    assert tuned.exit_code == 0, tuned.output
    finetunes.clear()
    args = [
        "mix",
        str(world.image),
        "--to",
        "smiling",
        "--to",
        "angry",
        "--domain",
        "tinyface",
        *world.cli_args(),
    ]
    result = runner.invoke(app, args)
    assert result.exit_code == 1
    err = " ".join(result.stderr.split())
    assert "This mix runs at t0 200, and your library has smiling at t0 150 only" in err
    assert "--t0 150" in err and "--model tinyface/smiling" in err and "--yes" in err
    assert finetunes == [] and not world.image.with_name("photo.mix-smiling+angry.png").exists()
    agreed = runner.invoke(app, [*args, "--yes"])
    assert agreed.exit_code == 0, agreed.output
    assert "dclip would fine-tune it anew at t0 200 first" in " ".join(agreed.stderr.split())


# --- the domain of a named edit -------------------------------------------------------------------------------------


def test_a_named_edit_of_one_preset_decides_the_domain(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, clip_file
):
    """Issue 12: '--to pixar' ran CLIP detection although only one preset has a pixar edit."""
    from dclip_cli.apps.session import Session
    from dclip_cli.presets.preset import Edit
    from tests.support.http_server import FileServer

    church = tiny_preset(
        "tinychurch", "a photo of a church", edits={"gothic": Edit("gothic", "church", "gothic church")}
    )
    with FileServer() as server:
        world = setup_world(
            tmp_path, server, monkeypatch, clip_file, [tiny_preset("tinyface", "a face"), church]
        )

        def no_clip(self):
            raise AssertionError("CLIP was loaded")

        monkeypatch.setattr(Session, "clip", no_clip)
        result = runner.invoke(app, ["edit", str(world.image), "--to", "pixar", "--metrics", "none"])
    assert result.exit_code == 0, result.output
    assert "Using domain tinyface: the only preset with the edit 'pixar'" in result.stderr
    doc = json.loads(world.image.with_name("photo.pixar.json").read_text())
    assert doc["settings"]["domain"] == "tinyface" and doc["settings"]["domain_detection"]["method"] == "edit"
