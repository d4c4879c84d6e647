"""DDIM inversion and generation as pure functions of an eps-callable.

Notation (DDIM, Song et al. 2021; ``diffusionclip-reference.md`` sections 4-6):

* ``eps``            -> ε_θ(x_t, t), the model's noise prediction
* ``alpha_bar_t``    -> ᾱ_t (float32 cumulative product, see :mod:`dclip_cli.diffusion.schedule`)
* ``alpha_bar_next`` -> ᾱ_{t_next}; t_next = -1 means ᾱ = 1 (the end of generation)
* ``pred_x0``        -> x̂₀, the one-step prediction of the clean image
* ``eta``            -> η, 0 for deterministic DDIM

A model is any callable ``model(x, t) -> eps`` with ``x`` of shape (B, C, H, W) and ``t`` a float32 tensor of
shape (B,) holding the timestep; it returns ``eps`` with the shape of ``x``. The functions here pick no device,
open no files and print nothing; progress leaves through ``callback(info)`` where ``info`` has the keys ``step``
(1-based), ``total``, ``t``, ``t_next``, ``x`` (the sample after the step) and ``pred_x0``.

Inversion and generation run the same :func:`ddim_step` over pairs from one rule
(:func:`~dclip_cli.diffusion.schedule.inversion_pairs`, :func:`~dclip_cli.diffusion.schedule.generation_pairs`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any, Protocol

import torch

from dclip_cli.diffusion.schedule import alpha_bar, generation_pairs, inversion_pairs
from dclip_cli.errors import ConfigError

StepInfo = dict[str, Any]
Callback = Callable[[StepInfo], None]


class EpsModel(Protocol):
    """Anything called as ``model(x, t) -> eps`` (a :class:`~dclip_cli.models.DiffusionModel`, a mix, ...)."""

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor: ...


def _as_coefficient(value: torch.Tensor | float, like: torch.Tensor) -> torch.Tensor:
    """Return ``value`` as a float tensor broadcastable to ``like`` (B, C, H, W): shape (B, 1, 1, 1) or ()."""
    coef = torch.as_tensor(value, dtype=like.dtype, device=like.device)
    if coef.ndim == 1:
        coef = coef.reshape(-1, *([1] * (like.ndim - 1)))
    return coef


#: one generator for the whole batch, or one per sample (then each sample's noise is independent of the batch
#: it is in, as with diffusers' lists of generators)
Generators = torch.Generator | Sequence[torch.Generator]


def _standard_normal(shape: torch.Size, like: torch.Tensor, generator: Generators | None) -> torch.Tensor:
    """Draw N(0, I) noise with ``generator`` (on the generator's device, then moved to ``like``'s device)."""
    if generator is None:
        return torch.randn(shape, dtype=like.dtype, device=like.device)
    if isinstance(generator, torch.Generator):
        z = torch.randn(shape, generator=generator, dtype=like.dtype, device=generator.device)
        return z.to(like.device)
    gens = list(generator)
    if len(gens) != shape[0]:
        raise ConfigError(
            f"{len(gens)} generators were given for a batch of {shape[0]}.",
            hint="Pass one generator, or one per sample.",
        )
    return torch.cat(
        [
            torch.randn((1, *shape[1:]), generator=g, dtype=like.dtype, device=g.device).to(like.device)
            for g in gens
        ]
    )


def ddim_step(
    x_t: torch.Tensor,
    eps: torch.Tensor,
    alpha_bar_t: torch.Tensor | float,
    alpha_bar_next: torch.Tensor | float,
    *,
    eta: float = 0.0,
    generator: Generators | None = None,
    noise: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One DDIM step from ᾱ_t to ᾱ_next, used both ways (generation: ᾱ_next > ᾱ_t; inversion: ᾱ_next < ᾱ_t).

    Args:
        x_t: (B, C, H, W) sample at the current noise level.
        eps: (B, C, H, W) noise prediction ε_θ(x_t, t).
        alpha_bar_t: ᾱ_t as a float, a 0-d tensor, a (B,) tensor or a (B, 1, 1, 1) tensor.
        alpha_bar_next: ᾱ at the next timestep, same forms (1.0 for the t_next = -1 endpoint).
        eta: η >= 0; only η = 0 is allowed in the inversion direction.
        generator: source of the noise z when η > 0: one generator, or one per sample (``Generators``).
        noise: explicit noise z of the shape of ``x_t`` (instead of ``generator``).

    Returns:
        ``(x_next, pred_x0)``, both (B, C, H, W).

    Raises:
        ConfigError: η < 0, η != 0 while moving to a noisier level, or both ``generator`` and ``noise`` given.
    """
    if generator is not None and noise is not None:
        raise ConfigError(
            "Both a generator and explicit noise were passed to the DDIM step.", hint="Pass one or the other."
        )
    if not 0 <= eta <= 1:
        # above 1, σ² exceeds 1 - ᾱ_next and the direction term √(1 - ᾱ_next - σ²) is not real (NaN images)
        raise ConfigError(
            f"eta must be between 0 and 1, got {eta}.", hint="Use eta = 0 for deterministic DDIM, at most 1."
        )
    a_t = _as_coefficient(alpha_bar_t, x_t)
    a_next = _as_coefficient(alpha_bar_next, x_t)

    # 1. predict x0 (DDIM eq. 12):  x̂₀ = (x_t - √(1 - ᾱ_t)·ε) / √ᾱ_t
    pred_x0 = (x_t - eps * (1 - a_t).sqrt()) / a_t.sqrt()

    if eta == 0:
        # 2. deterministic update (DDIM eq. 12 with σ = 0; "Equation 12. reversed" when ᾱ_next < ᾱ_t)
        x_next = a_next.sqrt() * pred_x0 + (1 - a_next).sqrt() * eps
        return x_next, pred_x0

    if bool((a_next < a_t).any()):
        raise ConfigError(
            f"Inversion (moving to a noisier timestep) is only possible with eta = 0, got eta = {eta}.",
            hint="Invert with eta = 0; eta applies to generation only.",
        )
    # 2. stochastic update (DDIM eq. 16): σ = η·√((1 - ᾱ_t/ᾱ_next)(1 - ᾱ_next)/(1 - ᾱ_t))
    c1 = eta * ((1 - a_t / a_next) * (1 - a_next) / (1 - a_t)).sqrt()
    #    direction pointing to x_t keeps variance 1 - ᾱ_next - σ²
    c2 = ((1 - a_next) - c1**2).sqrt()
    if noise is None:
        noise = _standard_normal(x_t.shape, x_t, generator)
    elif noise.shape != x_t.shape:
        raise ConfigError(
            f"The explicit noise has shape {tuple(noise.shape)} but the sample has shape {tuple(x_t.shape)}.",
            hint="Pass noise with the same shape as x_t.",
        )
    x_next = a_next.sqrt() * pred_x0 + c2 * eps + c1 * noise.to(device=x_t.device, dtype=x_t.dtype)
    return x_next, pred_x0


def timestep_tensor(t: int, x: torch.Tensor) -> torch.Tensor:
    """Return the model's timestep input: a float32 tensor of shape (B,) filled with ``t`` on ``x``'s device."""
    return torch.full((x.shape[0],), float(t), dtype=torch.float32, device=x.device)


def _call_model(model: EpsModel, x: torch.Tensor, t: int) -> torch.Tensor:
    eps = model(x, timestep_tensor(t, x))
    if eps.shape != x.shape:
        raise ConfigError(
            f"The model returned a tensor of shape {tuple(eps.shape)} for an input of shape {tuple(x.shape)}.",
            hint="Wrap raw UNets with dclip_cli.models.DiffusionModel, which drops learned-sigma channels.",
        )
    return eps


def ddim_loop_progressive(
    model: EpsModel,
    x: torch.Tensor,
    pairs: Sequence[tuple[int, int]],
    *,
    eta: float = 0.0,
    generator: Generators | None = None,
) -> Iterator[StepInfo]:
    """Run DDIM over ``pairs`` of (t, t_next), yielding one info dict per model call.

    Gradients flow if the caller has them enabled (the original fine-tuning back-propagates through the chain).

    Args:
        model: eps-callable.
        x: (B, C, H, W) sample at ``pairs[0][0]``.
        pairs: (t, t_next) pairs, for example from ``generation_pairs`` or ``inversion_pairs``.
        eta: η for every step (must be 0 for pairs that move to noisier levels).
        generator: noise source when η > 0 (one generator, or one per sample).

    Yields:
        ``{"step", "total", "t", "t_next", "x", "pred_x0"}`` after each step; ``x`` is the new sample.
    """
    total = len(pairs)
    for step, (t, t_next) in enumerate(pairs, start=1):
        if eta != 0 and t_next > t:
            raise ConfigError(
                f"Inversion (moving from t = {t} to t = {t_next}) is only possible with eta = 0, got eta = {eta}.",
                hint="Invert with eta = 0; eta applies to generation only.",
            )
        eps = _call_model(model, x, t)
        a_t = alpha_bar(t, x.device)
        a_next = alpha_bar(t_next, x.device)
        x, pred_x0 = ddim_step(x, eps, a_t, a_next, eta=eta, generator=generator)
        yield {"step": step, "total": total, "t": t, "t_next": t_next, "x": x, "pred_x0": pred_x0}


def ddim_loop(
    model: EpsModel,
    x: torch.Tensor,
    pairs: Sequence[tuple[int, int]],
    *,
    eta: float = 0.0,
    generator: Generators | None = None,
    callback: Callback | None = None,
) -> torch.Tensor:
    """Run DDIM over ``pairs`` and return the final sample (B, C, H, W); see :func:`ddim_loop_progressive`."""
    for info in ddim_loop_progressive(model, x, pairs, eta=eta, generator=generator):
        x = info["x"]
        if callback is not None:
            callback(info)
    return x


@torch.no_grad()
def invert_progressive(model: EpsModel, x0: torch.Tensor, *, t0: int, n_steps: int) -> Iterator[StepInfo]:
    """Progressive form of :func:`invert` (yields one info dict per model call; no autograd graph).

    Grad mode is disabled only while the generator runs (torch's decorator restores it at every ``yield``).
    """
    yield from ddim_loop_progressive(model, x0, inversion_pairs(t0, n_steps), eta=0.0)


def invert(
    model: EpsModel,
    x0: torch.Tensor,
    *,
    t0: int,
    n_steps: int,
    callback: Callback | None = None,
) -> torch.Tensor:
    """Deterministic DDIM inversion (η = 0) of clean images to the latent at ``t0``.

    N-1 model calls over ``[(0, t_1), …, (t_{N-2}, t0)]``; the first call evaluates the model on the clean image
    at t = 0 (reference section 5). Runs without an autograd graph, like the original.

    Args:
        model: eps-callable (the base model; the original always inverts with it).
        x0: (B, C, H, W) images in [-1, 1].
        t0: return step, 1 <= t0 <= 999.
        n_steps: points N in the timestep sequence (>= 2).
        callback: called with an info dict after each step.

    Returns:
        x_t0: (B, C, H, W) latent at t0 (unbounded).
    """
    x = x0
    for info in invert_progressive(model, x0, t0=t0, n_steps=n_steps):
        x = info["x"]
        if callback is not None:
            callback(info)
    return x


def generate_progressive(
    model: EpsModel,
    x_t: torch.Tensor,
    *,
    t0: int,
    n_steps: int,
    eta: float = 0.0,
    generator: Generators | None = None,
) -> Iterator[StepInfo]:
    """Progressive form of :func:`generate` (yields one info dict per model call)."""
    yield from ddim_loop_progressive(model, x_t, generation_pairs(t0, n_steps), eta=eta, generator=generator)


def generate(
    model: EpsModel,
    x_t: torch.Tensor,
    *,
    t0: int,
    n_steps: int,
    eta: float = 0.0,
    generator: Generators | None = None,
    callback: Callback | None = None,
) -> torch.Tensor:
    """DDIM generation from the latent at ``t0`` down to a clean image.

    N model calls over ``[(t0, t_{N-2}), …, (t_1, 0), (0, -1)]``; the last step uses ᾱ = 1, so the result is the
    x̂₀ prediction at t = 0 (reference section 5). Autograd follows the caller's grad mode.

    Args:
        model: eps-callable (a model, :func:`~dclip_cli.diffusion.mixing.blend` or ``mix``).
        x_t: (B, C, H, W) latent at t0.
        t0: return step, 1 <= t0 <= 999.
        n_steps: points N in the timestep sequence (>= 2).
        eta: η >= 0 (0 = deterministic DDIM).
        generator: noise source when η > 0 (reproducible with a seeded generator; a list gives one per sample).
        callback: called with an info dict after each step.

    Returns:
        x0: (B, C, H, W) image, nominally in [-1, 1] (not clamped).
    """
    pairs = generation_pairs(t0, n_steps)
    return ddim_loop(model, x_t, pairs, eta=eta, generator=generator, callback=callback)


def q_sample(
    x0: torch.Tensor,
    t: int | torch.Tensor,
    *,
    generator: Generators | None = None,
    noise: torch.Tensor | None = None,
) -> torch.Tensor:
    """Sample x_t ~ q(x_t | x0) = N(√ᾱ_t·x0, (1 - ᾱ_t)·I).

    dclip uses ᾱ[t] (not the original's ᾱ[t-1]), consistent with a generation that starts at t (reference
    section 6 and 21.2-11).

    Args:
        x0: (B, C, H, W) images in [-1, 1].
        t: timestep as an int or a (B,) tensor.
        generator: noise source.
        noise: explicit ε of the shape of ``x0`` (instead of ``generator``).

    Returns:
        x_t: (B, C, H, W).
    """
    if generator is not None and noise is not None:
        raise ConfigError("Both a generator and explicit noise were passed to q_sample.", hint="Pass one.")
    if noise is None:
        noise = _standard_normal(x0.shape, x0, generator)
    a_t = _as_coefficient(alpha_bar(t, x0.device), x0)
    return a_t.sqrt() * x0 + (1 - a_t).sqrt() * noise.to(device=x0.device, dtype=x0.dtype)
