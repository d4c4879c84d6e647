"""The per-machine speed profile and estimates without wasted UNet calls (issue 13)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dclip_cli import speed_profile
from dclip_cli.diffusion import ddim
from dclip_cli.precision import estimate_seconds, optimize_model, recorded_seconds
from tests.support.tiny import TINY_SIZE, make_tiny_model, tiny_config


def _key(**changes: object) -> dict:
    model = make_tiny_model("ddpm")
    key = speed_profile.record_key(
        model, (1, 3, TINY_SIZE, TINY_SIZE), device="cpu", precision="bf16", path="fused"
    )
    assert key is not None
    key.update(changes)
    return key


class _Counter:
    """Counts the UNet calls of a DiffusionModel (forward hook on its network)."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.calls = 0
        model.unet.register_forward_hook(lambda *args: self._hit())

    def _hit(self) -> None:
        self.calls += 1


def test_record_round_trip_and_key_fields() -> None:
    key = _key()
    for field in (
        "torch",
        "dclip",
        "cpu",
        "cpu_features",
        "threads",
        "arch",
        "config_sha256",
        "shape",
        "path",
    ):
        assert field in key
    assert speed_profile.load_seconds(key) is None
    assert speed_profile.store_seconds(key, 0.25)
    assert speed_profile.load_seconds(key) == 0.25
    files = list((speed_profile._record_path(key).parent).glob("*"))
    assert [f.suffix for f in files] == [".json"]  # no temporary file left behind


@pytest.mark.parametrize(
    "change",
    [
        {"torch": "0.0.1"},
        {"cpu": "another CPU"},
        {"cpu_features": []},
        {"config_sha256": "0" * 64},
        {"shape": [4, 3, 16, 16]},
        {"path": "autocast"},
        {"threads": 64},
    ],  # fmt: skip
)
def test_a_different_machine_version_or_model_never_reuses_a_record(change: dict) -> None:
    speed_profile.store_seconds(_key(), 0.25)
    assert speed_profile.load_seconds(_key(**change)) is None


def test_model_configuration_changes_the_key() -> None:
    other = make_tiny_model("ddpm", config={**tiny_config("ddpm"), "ch_mult": [1, 1]})
    key = speed_profile.record_key(
        other, (1, 3, TINY_SIZE, TINY_SIZE), device="cpu", precision="bf16", path="fused"
    )
    assert key is not None and key["config_sha256"] != _key()["config_sha256"]
    assert (
        speed_profile.record_key(lambda x, t: x, (1,), device="cpu", precision="bf16", path="fused") is None
    )


@pytest.mark.parametrize(
    "content", ["{not json", "", '{"key": {}, "seconds_per_call": 1.0}', '{"seconds_per_call": "NaN"}', "[]"]
)
def test_a_corrupt_record_is_ignored_and_rebuilt(content: str) -> None:
    key = _key()
    path = speed_profile._record_path(key)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(content, encoding="utf-8")
    assert speed_profile.load_seconds(key) is None
    assert speed_profile.store_seconds(key, 0.5)
    assert speed_profile.load_seconds(key) == 0.5
    assert json.loads(path.read_text(encoding="utf-8"))["key"] == key


def test_an_unwritable_cache_is_not_an_error(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x", encoding="utf-8")
    monkeypatch.setenv("DCLIP_CACHE", str(blocker / "cache"))  # a path below a file cannot be created
    assert not speed_profile.store_seconds(_key(), 0.5)
    assert speed_profile.load_seconds(_key()) is None


def test_estimate_call_is_reused_by_the_inversion_and_recorded() -> None:
    """Regression test for issue 13: the timed call of the estimate is the first inversion call; only the warm-up
    call (issue 12: a first call is up to 2x slower) is extra, and only until the machine's profile has a record."""
    model = make_tiny_model("ddpm")
    counter = _Counter(model)
    fast = optimize_model(model, precision="fp32", channels_last=False)
    gen = torch.Generator().manual_seed(0)
    x0 = torch.rand(1, 3, TINY_SIZE, TINY_SIZE, generator=gen) * 2 - 1
    with torch.no_grad():
        ref = ddim.invert(make_tiny_model("ddpm"), x0.clone(), t0=300, n_steps=4)
        seconds = estimate_seconds(fast, x0.clone(), n_calls=3)
        assert counter.calls == 2 and seconds > 0  # a warm-up call and the timed call
        lat = ddim.invert(fast, x0, t0=300, n_steps=4)  # 3 calls, the first served from the timed one
    assert counter.calls == 4
    assert torch.equal(lat, ref)
    # the warm second call was recorded: the next command's estimate makes no call at all
    assert recorded_seconds(fast, x0) is not None
    again = optimize_model(model, precision="fp32", channels_last=False)
    estimate_seconds(again, x0, n_calls=3)
    assert counter.calls == 4


def test_kept_result_is_not_served_for_other_inputs_weights_or_gradients() -> None:
    model = make_tiny_model("ddpm")
    counter = _Counter(model)
    fast = optimize_model(model, precision="fp32", channels_last=False)
    x = torch.zeros(1, 3, TINY_SIZE, TINY_SIZE)
    t0 = torch.zeros(1)
    with torch.no_grad():
        fast.keep_next_result()
        fast(x, t0)
        fast(x, torch.ones(1))  # another timestep: computed
        assert counter.calls == 2
        fast(x, t0)  # the kept result is gone (served at most once, and only to the very next call)
        assert counter.calls == 3
        fast.keep_next_result()
        fast(x, t0)
        model.unet.conv_out.bias.add_(1.0)
        fast(x, t0)  # weights changed: computed
        assert counter.calls == 5
    fast.keep_next_result()
    fast(x, t0)
    fast(x, t0)  # gradients enabled: never served
    assert counter.calls == 7


def test_plain_models_record_their_estimate() -> None:
    model = make_tiny_model("adm")
    counter = _Counter(model)
    x = torch.zeros(1, 3, TINY_SIZE, TINY_SIZE)
    with torch.no_grad():
        estimate_seconds(model, x, n_calls=5)
        assert counter.calls == 2  # a warm-up and the timed call (a plain model cannot keep a result)
        estimate_seconds(model, x, n_calls=5)
        assert counter.calls == 2
        estimate_seconds(model, torch.zeros(2, 3, TINY_SIZE, TINY_SIZE), n_calls=5)  # another shape: measured
    assert counter.calls == 4


@pytest.mark.parametrize("precision", ["bf16", "fp32"])
def test_dclip_invert_makes_one_extra_unet_call_on_a_new_machine_and_none_after(
    tmp_path: Path, monkeypatch, precision: str
) -> None:
    """The estimate of a real ``dclip invert`` (issue 13: "no wasted UNet calls"): on an empty cache a warm-up call,
    whose twin is the first inversion step; once the speed profile holds the time, no call but the run's. In
    float32 too, where the model runs bit for bit as itself inside the wrapper."""
    from typer.testing import CliRunner

    from dclip_cli.cli.app import app
    from dclip_cli.precision import OptimizedEpsModel
    from tests.support.tiny import save_tiny_checkpoint

    computed: list[float] = []
    plain_callable = OptimizedEpsModel._callable

    def counting(self: OptimizedEpsModel):  # every call that runs the network (a kept result does not)
        fn = plain_callable(self)

        def run(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            computed.append(float(t[0]))
            return fn(x, t)

        return run

    monkeypatch.setattr(OptimizedEpsModel, "_callable", counting)
    ckpt = save_tiny_checkpoint(tmp_path / "tiny.safetensors", "ddpm", seed=0)
    image = tmp_path / "photo.png"
    Image.fromarray(np.full((40, 40, 3), 120, dtype=np.uint8)).save(image)
    args = ["invert", str(image), "--checkpoint", str(ckpt), "--t0", "100", "--inv-steps", "4"]
    args += ["--precision", precision, "--overwrite"]
    first = CliRunner().invoke(app, args)
    assert first.exit_code == 0, first.output
    # 3 inversion + 4 generation calls, plus the warm-up at t = 0 (the timed call serves the first inversion step)
    assert len(computed) == 8 and computed[:3] == [0.0, 0.0, 33.0], computed
    computed.clear()
    second = CliRunner().invoke(app, args)
    assert second.exit_code == 0, second.output
    assert len(computed) == 7 and computed[:2] == [0.0, 33.0], computed
