"""The per-machine speed profile and estimates without wasted UNet calls (issue 13)."""

from __future__ import annotations

import json

import pytest
import torch

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
    """Regression test for issue 13: the timing call of the estimate is the first inversion call, not an extra one."""
    model = make_tiny_model("ddpm")
    counter = _Counter(model)
    fast = optimize_model(model, precision="fp32", channels_last=False)
    gen = torch.Generator().manual_seed(0)
    x0 = torch.rand(1, 3, TINY_SIZE, TINY_SIZE, generator=gen) * 2 - 1
    with torch.no_grad():
        ref = ddim.invert(make_tiny_model("ddpm"), x0.clone(), t0=300, n_steps=4)
        seconds = estimate_seconds(fast, x0.clone(), n_calls=3)
        assert counter.calls == 1 and seconds > 0
        lat = ddim.invert(fast, x0, t0=300, n_steps=4)  # 3 calls, the first served from the estimate
    assert counter.calls == 3
    assert torch.equal(lat, ref)
    # the warm second call was recorded: the next command's estimate makes no call at all
    assert recorded_seconds(fast, x0) is not None
    again = optimize_model(model, precision="fp32", channels_last=False)
    estimate_seconds(again, x0, n_calls=3)
    assert counter.calls == 3


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
        assert counter.calls == 1
        estimate_seconds(model, x, n_calls=5)
        assert counter.calls == 1
        estimate_seconds(model, torch.zeros(2, 3, TINY_SIZE, TINY_SIZE), n_calls=5)  # another shape: measured
    assert counter.calls == 2
