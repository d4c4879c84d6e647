"""Noise schedule and timestep sequences against the reference's worked values (sections 2-3)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dclip_cli.diffusion import schedule
from dclip_cli.diffusion.schedule import (
    alpha_bar,
    alphas_cumprod,
    generation_pairs,
    inversion_pairs,
    timestep_sequence,
)
from dclip_cli.errors import InvalidScheduleError

SEQ_500_40 = [
    0, 12, 25, 38, 51, 64, 76, 89, 102, 115, 128, 141, 153, 166, 179, 192, 205, 217, 230, 243,
    256, 269, 282, 294, 307, 320, 333, 346, 358, 371, 384, 397, 410, 423, 435, 448, 461, 474, 487, 500,
]  # fmt: skip
SEQ_400_40 = [
    0, 10, 20, 30, 41, 51, 61, 71, 82, 92, 102, 112, 123, 133, 143, 153, 164, 174, 184, 194, 205, 215,
    225, 235, 246, 256, 266, 276, 287, 297, 307, 317, 328, 338, 348, 358, 369, 379, 389, 400,
]  # fmt: skip
SEQ_601_40 = [
    0, 15, 30, 46, 61, 77, 92, 107, 123, 138, 154, 169, 184, 200, 215, 231, 246, 261, 277, 292,
    308, 323, 339, 354, 369, 385, 400, 416, 431, 446, 462, 477, 493, 508, 523, 539, 554, 570, 585, 601,
]  # fmt: skip


@pytest.mark.parametrize(
    ("t0", "n", "expected"),
    [
        (500, 40, SEQ_500_40),
        (400, 40, SEQ_400_40),
        (601, 40, SEQ_601_40),
        (601, 12, [0, 54, 109, 163, 218, 273, 327, 382, 437, 491, 546, 601]),
        (500, 6, [0, 100, 200, 300, 400, 500]),
        (601, 6, [0, 120, 240, 360, 480, 601]),
        (401, 6, [0, 80, 160, 240, 320, 401]),
        (301, 6, [0, 60, 120, 180, 240, 301]),
    ],
)
def test_golden_sequences(t0: int, n: int, expected: list[int]) -> None:
    seq = timestep_sequence(t0, n)
    assert seq == expected
    assert all(type(s) is int for s in seq)


def test_truncation_case_n7_t18() -> None:
    """float64 linspace·t0 truncates 14.999999999999998 to 14, where the exact floor(k·t0/(N-1)) gives 15."""
    seq = timestep_sequence(18, 7)
    assert seq[5] == 14
    assert seq == [0, 3, 6, 9, 12, 14, 18]
    assert (5 * 18) // 6 == 15  # the naive integer formula would differ


def test_duplicates_when_n_exceeds_t0() -> None:
    seq = timestep_sequence(3, 6)
    assert seq[0] == 0 and seq[-1] == 3 and len(seq) == 6
    assert len(set(seq)) < len(seq)


def test_pairs_shapes_and_reversal() -> None:
    gen = generation_pairs(500, 6)
    inv = inversion_pairs(500, 6)
    assert gen == [(500, 400), (400, 300), (300, 200), (200, 100), (100, 0), (0, -1)]
    assert inv == [(0, 100), (100, 200), (200, 300), (300, 400), (400, 500)]
    # inversion pairs are the generation pairs reversed, minus the (0, -1) endpoint
    assert [(b, a) for a, b in reversed(gen[:-1])] == inv
    # the original's seq_next for t0 = 500, N = 6
    assert [t_next for _, t_next in reversed(gen)] == [-1, 0, 100, 200, 300, 400]
    assert len(generation_pairs(400, 40)) == 40 and len(inversion_pairs(400, 40)) == 39


def test_alphas_cumprod_float32_path() -> None:
    ac = alphas_cumprod()
    assert ac.dtype == torch.float32 and ac.shape == (1000,)
    # float32 cumprod of float32 betas (reference section 2), not the float64 value 0.07779665837
    assert float(ac[500]) == pytest.approx(0.07779666036, abs=2e-11)
    expected64 = np.cumprod(1 - np.linspace(1e-4, 0.02, 1000))
    for t, value in [(0, 0.9999), (100, 0.89514159), (300, 0.39401112), (400, 0.19357201), (601, 0.02525884)]:
        assert float(ac[t]) == pytest.approx(value, rel=1e-6)
        assert expected64[t] == pytest.approx(value, abs=5e-9)
    assert float(ac[999]) == pytest.approx(4.0358e-05, rel=1e-3)
    # bitwise equal to the original's recipe
    original = (1.0 - torch.from_numpy(np.linspace(1e-4, 0.02, 1000)).float()).cumprod(dim=0)
    assert torch.equal(ac, original)


def test_alpha_bar_endpoint_and_gather() -> None:
    assert float(alpha_bar(-1)) == 1.0
    t = torch.tensor([-1, 0, 500, 999])
    a = alpha_bar(t)
    assert a.shape == (4,) and a.dtype == torch.float32
    assert a[0] == 1.0 and a[2] == alphas_cumprod()[500]
    # float timestep tensors (as the models receive them) gather the same values
    assert torch.equal(alpha_bar(torch.full((3,), 500.0)), alphas_cumprod()[500].repeat(3))
    with pytest.raises(InvalidScheduleError, match="out of range"):
        alpha_bar(1000)


@pytest.mark.parametrize(
    ("t0", "n", "match"),
    [(0, 10, "t0 = 0"), (1000, 10, "t0 = 1000"), (500, 1, "at least 2"), (500.5, 10, "integer")],
)
def test_invalid_settings(t0, n, match) -> None:
    with pytest.raises(InvalidScheduleError, match=match) as info:
        timestep_sequence(t0, n)
    assert info.value.hint


def test_constants() -> None:
    assert schedule.NUM_TIMESTEPS == 1000
    assert schedule.betas_float64().dtype == np.float64
