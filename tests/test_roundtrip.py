"""Round trips: generate(invert(x0)) ≈ x0, exactly for the analytic oracle and approximately for tiny models."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from dclip_cli.diffusion.ddim import generate, invert
from dclip_cli.diffusion.schedule import alpha_bar
from dclip_cli.latents import load_latent, save_latent
from tests.support.tiny import make_tiny_model, torch_single_thread  # noqa: F401


def _image(batch: int = 2, seed: int = 0) -> torch.Tensor:
    return torch.rand(batch, 3, 16, 16, generator=torch.Generator().manual_seed(seed)) * 2 - 1


class Oracle:
    def __init__(self, c: torch.Tensor) -> None:
        self.c = c

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        a = alpha_bar(t).reshape(-1, 1, 1, 1)
        return (x - a.sqrt() * self.c) / (1 - a).sqrt()


class Recorder:
    def __init__(self, model) -> None:
        self.model = model
        self.ts: list[int] = []

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        self.ts.append(int(t[0]))
        return self.model(x, t)


@pytest.mark.parametrize(("t0", "n"), [(500, 40), (601, 12), (400, 40), (18, 7), (3, 6), (999, 2)])
def test_oracle_round_trip_exact(t0: int, n: int) -> None:
    c = _image(batch=3)
    model = Oracle(c)
    x_lat = invert(model, c, t0=t0, n_steps=n)
    torch.testing.assert_close(generate(model, x_lat, t0=t0, n_steps=n), c, atol=2e-5, rtol=0)


@pytest.mark.parametrize("arch", ["ddpm", "adm"])
def test_tiny_model_round_trip_converges_with_steps(arch: str) -> None:
    model = make_tiny_model(arch, seed=0)
    x0 = _image()
    errors = []
    with torch.no_grad():
        for n in (3, 6, 11):
            x_lat = invert(model, x0, t0=100, n_steps=n)
            errors.append(float((generate(model, x_lat, t0=100, n_steps=n) - x0).pow(2).mean()))
    assert errors[-1] < 5e-4
    assert errors[0] > errors[1] > errors[2]


def test_inversion_retraces_generation_timesteps() -> None:
    rec = Recorder(make_tiny_model("ddpm", seed=1))
    with torch.no_grad():
        x_lat = invert(rec, _image(batch=1), t0=401, n_steps=6)
        inv_ts = list(rec.ts)
        rec.ts.clear()
        generate(rec, x_lat, t0=401, n_steps=6)
    assert inv_ts == [0, 80, 160, 240, 320]
    assert rec.ts == [401, 320, 240, 160, 80, 0]
    assert inv_ts == list(reversed(rec.ts))[:-1]


def test_batch_equals_per_sample() -> None:
    model = make_tiny_model("adm", seed=2)
    x0 = _image(batch=3, seed=4)
    with torch.no_grad():
        batched = invert(model, x0, t0=200, n_steps=3)
        single = torch.cat([invert(model, x0[i : i + 1], t0=200, n_steps=3) for i in range(3)])
    torch.testing.assert_close(batched, single, atol=1e-5, rtol=1e-5)


def test_latent_file_round_trip_reproduces_reconstruction(tmp_path: Path) -> None:
    model = make_tiny_model("ddpm", seed=3)
    x0 = _image(batch=1, seed=5)
    with torch.no_grad():
        x_lat = invert(model, x0, t0=150, n_steps=4)
        x_rec = generate(model, x_lat, t0=150, n_steps=4)
        path = save_latent(tmp_path / "lat.safetensors", x_lat, {"t0": 150, "steps": 4})
        loaded, meta = load_latent(path)
        again = generate(model, loaded, t0=meta["t0"], n_steps=meta["steps"])
    assert torch.equal(again, x_rec)
