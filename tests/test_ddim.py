"""DDIM step, inversion and generation: analytic oracles, call counts, eta semantics (reference sections 4-6)."""

from __future__ import annotations

import math

import pytest
import torch

from dclip_cli.diffusion import ddim
from dclip_cli.diffusion.ddim import ddim_step, generate, generate_progressive, invert, q_sample
from dclip_cli.diffusion.schedule import alpha_bar, alphas_cumprod
from dclip_cli.errors import ConfigError
from tests.support.tiny import make_tiny_model, torch_single_thread  # noqa: F401


def fixed_image(batch: int = 2, size: int = 8) -> torch.Tensor:
    """A deterministic image in [-1, 1] (diffusers-style arange sample)."""
    n = batch * 3 * size * size
    return (torch.arange(n, dtype=torch.float32).reshape(batch, 3, size, size) / n) * 1.8 - 0.9


class OracleModel:
    """The exact ε* for data consisting of one image c: ε*(x_t, t) = (x_t − √ᾱ_t·c)/√(1 − ᾱ_t)."""

    def __init__(self, c: torch.Tensor) -> None:
        self.c = c
        self.calls: list[torch.Tensor] = []

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        self.calls.append(t.clone())
        a = alpha_bar(t).reshape(-1, 1, 1, 1)
        return (x - a.sqrt() * self.c) / (1 - a).sqrt()


class ZeroEps:
    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(x)


def test_oracle_invert_then_generate_returns_c() -> None:
    c = fixed_image()
    model = OracleModel(c)
    x_lat = invert(model, c, t0=500, n_steps=40)
    a0, a500 = alphas_cumprod()[0], alphas_cumprod()[500]
    # ε is invariant along the oracle's trajectory: ε₀ = (1 − √ᾱ₀)c/√(1 − ᾱ₀)
    eps0 = (1 - a0.sqrt()) * c / (1 - a0).sqrt()
    torch.testing.assert_close(x_lat, a500.sqrt() * c + (1 - a500).sqrt() * eps0, atol=1e-5, rtol=1e-5)
    x_rec = generate(model, x_lat, t0=500, n_steps=40)
    torch.testing.assert_close(x_rec, c, atol=1e-5, rtol=0)


def test_oracle_generate_from_any_latent_is_c_even_with_eta() -> None:
    c = fixed_image(batch=3)
    gen = torch.Generator().manual_seed(0)
    x_t = torch.randn(c.shape, generator=gen)
    out = generate(OracleModel(c), x_t, t0=601, n_steps=12, eta=0.7, generator=gen)
    torch.testing.assert_close(out, c, atol=1e-5, rtol=0)


def test_call_counts_and_timesteps() -> None:
    c = fixed_image(batch=3)
    model = OracleModel(c)
    x_lat = invert(model, c, t0=500, n_steps=6)
    assert [float(t[0]) for t in model.calls] == [0, 100, 200, 300, 400]
    for t in model.calls:
        assert t.dtype == torch.float32 and t.shape == (3,)
    model.calls.clear()
    generate(model, x_lat, t0=500, n_steps=6)
    assert [float(t[0]) for t in model.calls] == [500, 400, 300, 200, 100, 0]
    model.calls.clear()
    invert(model, c, t0=18, n_steps=7)
    assert [int(t[0]) for t in model.calls] == [0, 3, 6, 9, 12, 14]


def test_zero_eps_closed_form() -> None:
    x = fixed_image()
    out = invert(ZeroEps(), x, t0=300, n_steps=4)
    ac = alphas_cumprod()
    # with ε = 0, x_t' = √(ᾱ_t'/ᾱ_t)·x_t, so the product telescopes to √(ᾱ_300/ᾱ_0)
    torch.testing.assert_close(out, (ac[300] / ac[0]).sqrt() * x, atol=1e-6, rtol=1e-5)
    back = generate(ZeroEps(), out, t0=300, n_steps=4)
    torch.testing.assert_close(back, x / ac[0].sqrt(), atol=1e-5, rtol=1e-5)


def test_ddim_step_formulas_by_hand() -> None:
    x = fixed_image(batch=1)
    eps = torch.flip(x, dims=[3])
    a_t, a_next = 0.3, 0.6
    x0 = (x - math.sqrt(1 - a_t) * eps) / math.sqrt(a_t)
    x_next, pred_x0 = ddim_step(x, eps, a_t, a_next)
    torch.testing.assert_close(pred_x0, x0)
    torch.testing.assert_close(x_next, math.sqrt(a_next) * x0 + math.sqrt(1 - a_next) * eps)
    z = torch.ones_like(x)
    eta = 0.5
    c1 = eta * math.sqrt((1 - a_t / a_next) * (1 - a_next) / (1 - a_t))
    c2 = math.sqrt(1 - a_next - c1**2)
    x_next, _ = ddim_step(x, eps, torch.tensor([a_t]), torch.tensor([a_next]), eta=eta, noise=z)
    torch.testing.assert_close(x_next, math.sqrt(a_next) * x0 + c2 * eps + c1 * z)
    # at the final step (ᾱ_next = 1) c1 = 0: deterministic
    last, pred = ddim_step(x, eps, a_t, 1.0, eta=1.0, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(last, pred)


def test_eta_in_inversion_direction_raises() -> None:
    x = fixed_image()
    with pytest.raises(ConfigError, match="only possible with eta = 0"):
        ddim_step(x, x, 0.9, 0.5, eta=0.1)
    with pytest.raises(ConfigError, match="only possible with eta = 0"):
        ddim.ddim_loop(ZeroEps(), x, [(0, 100)], eta=0.5)


def test_generator_and_noise_together_raise() -> None:
    x = fixed_image()
    with pytest.raises(ConfigError, match="generator and explicit noise"):
        ddim_step(x, x, 0.5, 0.9, eta=0.5, generator=torch.Generator(), noise=x)
    with pytest.raises(ConfigError, match="generator and explicit noise"):
        q_sample(x, 10, generator=torch.Generator(), noise=x)


def test_eta_batch_reproducible_with_seeded_generator() -> None:
    model = make_tiny_model("ddpm", seed=0)
    x_t = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        a = generate(model, x_t, t0=300, n_steps=3, eta=0.5, generator=torch.Generator().manual_seed(7))
        b = generate(model, x_t, t0=300, n_steps=3, eta=0.5, generator=torch.Generator().manual_seed(7))
        c = generate(model, x_t, t0=300, n_steps=3, eta=0.5, generator=torch.Generator().manual_seed(8))
        d = generate(model, x_t, t0=300, n_steps=3, eta=0.0)
    assert a.shape == (2, 3, 16, 16)
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)
    assert not torch.allclose(a, d)


def test_callback_and_progressive_form() -> None:
    c = fixed_image()
    infos: list[dict] = []
    x_lat = invert(OracleModel(c), c, t0=500, n_steps=6, callback=infos.append)
    assert [(i["step"], i["total"], i["t"], i["t_next"]) for i in infos] == [
        (1, 5, 0, 100), (2, 5, 100, 200), (3, 5, 200, 300), (4, 5, 300, 400), (5, 5, 400, 500)
    ]  # fmt: skip
    assert torch.equal(infos[-1]["x"], x_lat)
    steps = list(generate_progressive(OracleModel(c), x_lat, t0=500, n_steps=6))
    assert [s["t_next"] for s in steps] == [400, 300, 200, 100, 0, -1]
    for s in steps:
        torch.testing.assert_close(s["pred_x0"], c, atol=1e-5, rtol=0)


def test_inversion_builds_no_graph_generation_keeps_it() -> None:
    model = make_tiny_model("ddpm", seed=1)
    x = torch.zeros(1, 3, 16, 16)
    assert not invert(model, x, t0=100, n_steps=2).requires_grad
    out = generate(model, torch.zeros(1, 3, 16, 16), t0=100, n_steps=2)
    assert out.requires_grad
    out.sum().backward()
    assert model.unet.conv_in.weight.grad is not None


def test_model_output_shape_is_checked() -> None:
    def bad(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return torch.cat([x, x], dim=1)

    with pytest.raises(ConfigError, match="returned a tensor of shape"):
        generate(bad, fixed_image(), t0=100, n_steps=2)


def test_q_sample() -> None:
    x0 = fixed_image()
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(0))
    a = alphas_cumprod()[400]
    torch.testing.assert_close(q_sample(x0, 400, noise=noise), a.sqrt() * x0 + (1 - a).sqrt() * noise)
    g1 = q_sample(x0, 400, generator=torch.Generator().manual_seed(3))
    g2 = q_sample(x0, 400, generator=torch.Generator().manual_seed(3))
    assert torch.equal(g1, g2)
    per_sample = q_sample(x0, torch.tensor([0, 999]), noise=noise)
    torch.testing.assert_close(
        per_sample[1], alphas_cumprod()[999].sqrt() * x0[1] + (1 - alphas_cumprod()[999]).sqrt() * noise[1]
    )


def test_progressive_inversion_leaves_grad_mode_alone_between_steps() -> None:
    c = fixed_image()
    steps = ddim.invert_progressive(OracleModel(c), c, t0=300, n_steps=4)
    info = next(steps)
    assert torch.is_grad_enabled()  # the consumer's grad mode is untouched while the generator is suspended
    assert not info["x"].requires_grad
    steps.close()
    assert torch.is_grad_enabled()


def test_eta_above_one_is_refused() -> None:
    """Above 1 the direction coefficient √(1 - ᾱ_next - σ²) is not real: NaN images, so it is an error."""
    x = torch.zeros((1, 3, 4, 4))
    with pytest.raises(ConfigError, match="between 0 and 1"):
        ddim_step(x, x, 0.5, 0.9, eta=1.5)
    x_next, _ = ddim_step(x + 0.1, x, 0.5, 0.9, eta=1.0, generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(x_next).all()


def test_one_generator_per_sample_makes_results_independent_of_the_batch() -> None:
    model = make_tiny_model("ddpm", seed=0)
    x = torch.randn((3, 3, 16, 16), generator=torch.Generator().manual_seed(4))
    gens = lambda seeds: [torch.Generator().manual_seed(s) for s in seeds]  # noqa: E731
    with torch.no_grad():
        batch = generate(model, x, t0=300, n_steps=4, eta=0.7, generator=gens([1, 2, 3]))
        alone = generate(model, x[1:2], t0=300, n_steps=4, eta=0.7, generator=gens([2]))
        noisy = q_sample(x, 300, generator=gens([5, 6, 7]))
    assert torch.allclose(batch[1:2], alone, atol=1e-5)
    assert torch.allclose(noisy[2:3], q_sample(x[2:3], 300, generator=gens([7])))
    with pytest.raises(ConfigError, match="2 generators were given for a batch of 3"):
        generate(model, x, t0=300, n_steps=4, eta=0.7, generator=gens([1, 2]))
