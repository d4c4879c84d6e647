"""blend (model_ratio) and mix (multi-model noise mixing): weight arithmetic against hand-computed values."""

from __future__ import annotations

import pytest
import torch

from dclip_cli.diffusion.ddim import generate
from dclip_cli.diffusion.mixing import blend, mix, validate_schedule
from dclip_cli.errors import InvalidScheduleError
from tests.support.tiny import make_tiny_model, torch_single_thread  # noqa: F401


class Const:
    """An eps-model returning a constant, counting its calls."""

    def __init__(self, value: float) -> None:
        self.value = value
        self.calls = 0

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return torch.full_like(x, self.value)


X = torch.zeros(3, 3, 4, 4)


def t_of(*values: float) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32)


def test_blend_arithmetic_and_skipped_models() -> None:
    base, ft = Const(2.0), Const(10.0)
    out = blend(base, ft, 0.3)(X, t_of(1, 2, 3))
    assert torch.allclose(out, torch.full_like(X, 0.3 * 10 + 0.7 * 2))  # 4.4
    assert (base.calls, ft.calls) == (1, 1)
    only_base = blend(base, ft, 0)(X, t_of(1, 2, 3))
    assert torch.equal(only_base, torch.full_like(X, 2.0)) and ft.calls == 1
    only_ft = blend(base, ft, 1.0)(X, t_of(1, 2, 3))
    assert torch.equal(only_ft, torch.full_like(X, 10.0)) and base.calls == 2
    with pytest.raises(InvalidScheduleError, match="finite number"):
        blend(base, ft, float("nan"))


def test_mix_shipped_config_per_sample() -> None:
    """The original's HYBRID_CONFIG {300: [0.4, 0.6, 0], 0: [0.15, 0.15, 0.7]} with three models."""
    models = [Const(1.0), Const(2.0), Const(3.0)]
    mixed = mix(models, [(300, [0.4, 0.6, 0]), (0, [0.15, 0.15, 0.7])])
    out = mixed(X, t_of(500, 299, 0))
    expected = torch.tensor([0.4 * 1 + 0.6 * 2, 0.15 * 1 + 0.15 * 2 + 0.7 * 3, 0.15 * 1 + 0.15 * 2 + 0.7 * 3])
    assert torch.allclose(out[:, 0, 0, 0], expected)
    assert torch.allclose(mixed(X, t_of(300, 300, 300)), torch.full_like(X, 1.6))
    # the third model has weight 0 for every sample at t >= 300: it is not evaluated there
    calls = models[2].calls
    mixed(X, t_of(999, 400, 300))
    assert models[2].calls == calls
    # the dict form of the original config works the same way
    same = mix(models, {300: [0.4, 0.6, 0], 0: [0.15, 0.15, 0.7]})
    assert torch.equal(same(X, t_of(500, 299, 0)), out)


def test_mix_normalises_weights() -> None:
    mixed = mix([Const(1.0), Const(5.0)], [(0, [2, 6])])
    assert mixed.schedule == [(0, [0.25, 0.75])]
    assert torch.allclose(mixed(X, t_of(7, 8, 9)), torch.full_like(X, 0.25 * 1 + 0.75 * 5))
    weights = mix([Const(1.0), Const(1.0)], [(600, [1, 0]), (200, [1, 1]), (0, [0, 3])]).weights_at(
        t_of(999, 600, 599, 200, 199, 0)
    )
    assert weights.tolist() == [[1, 0], [1, 0], [0.5, 0.5], [0.5, 0.5], [0, 1], [0, 1]]


@pytest.mark.parametrize(
    ("schedule", "match"),
    [
        ([], "empty"),
        ([(0, [1, 1]), (300, [1, 1])], "strictly descending, but 300 follows 0"),
        ([(300, [1, 1]), (300, [1, 1]), (0, [1, 1])], "strictly descending"),
        ([(300, [1, 1]), (100, [1, 1])], "last mixing threshold must be 0"),
        ([(0, [1, 1, 1])], "3 weight\\(s\\) for 2 model\\(s\\)"),
        ([(0, [1, -1])], "non-negative"),
        ([(0, [0, 0])], "sum to 0"),
        ([(0.5, [1, 1])], "not an integer timestep"),
        ([(1000, [1, 1]), (0, [1, 1])], "not an integer timestep"),
        ([(0, [1, float("inf")])], "finite non-negative"),
        ([5], "not a \\(threshold, weights\\) pair"),
    ],
)
def test_invalid_schedules(schedule, match) -> None:
    with pytest.raises(InvalidScheduleError, match=match) as info:
        mix([Const(1.0), Const(2.0)], schedule)
    assert info.value.hint


def test_validate_schedule_needs_models() -> None:
    with pytest.raises(InvalidScheduleError, match="at least one model"):
        validate_schedule([(0, [])], 0)


def test_mix_and_blend_drive_generation_with_a_batch() -> None:
    base, ft = make_tiny_model("ddpm", seed=0), make_tiny_model("ddpm", seed=1)
    x_t = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        plain = generate(base, x_t, t0=200, n_steps=3)
        single = generate(mix([base], [(0, [1.0])]), x_t, t0=200, n_steps=3)
        half = generate(blend(base, ft, 0.5), x_t, t0=200, n_steps=3)
        as_mix = generate(mix([base, ft], [(0, [1, 1])]), x_t, t0=200, n_steps=3)
    assert torch.equal(plain, single)
    torch.testing.assert_close(half, as_mix, atol=1e-6, rtol=1e-6)
    assert not torch.allclose(half, plain)
