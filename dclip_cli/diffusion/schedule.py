"""The noise schedule and the timestep sequences of DiffusionCLIP.

Notation (``diffusionclip-reference.md`` sections 2-3):

* ``betas``      -> β_t, linear from 1e-4 to 0.02 over T = 1000 steps
* ``alpha_bar``  -> ᾱ_t = Π_{s<=t} (1 - β_s)
* ``t0``         -> the return step t₀; ``n_steps`` -> N, the number of points in a sequence

Every loop (inversion, generation, fine-tuning) derives its timesteps from :func:`timestep_sequence`, so an
inversion with N points followed by a generation with the same N retraces the same timesteps in reverse.
"""

from __future__ import annotations

import numpy as np
import torch

from dclip_cli.errors import InvalidScheduleError

NUM_TIMESTEPS = 1000
BETA_START = 1e-4
BETA_END = 0.02

_ALPHAS_CUMPROD_CACHE: dict[str, torch.Tensor] = {}


def betas_float64() -> np.ndarray:
    """Return the linear β schedule as float64, shape (1000,)."""
    return np.linspace(BETA_START, BETA_END, NUM_TIMESTEPS, dtype=np.float64)


def _alphas_cumprod_table(device: torch.device) -> torch.Tensor:
    key = str(device)
    cached = _ALPHAS_CUMPROD_CACHE.get(key)
    if cached is None:
        betas = torch.from_numpy(betas_float64()).float().to(device)
        cached = (1.0 - betas).cumprod(dim=0)
        _ALPHAS_CUMPROD_CACHE[key] = cached
    return cached


_PADDED_CACHE: dict[str, torch.Tensor] = {}


def _padded_table(device: torch.device) -> torch.Tensor:
    """[ᾱ_{-1} = 1, ᾱ_0, …, ᾱ_999] on ``device``, built once per device: index t + 1 gathers ᾱ_t."""
    key = str(device)
    padded = _PADDED_CACHE.get(key)
    if padded is None:
        table = _alphas_cumprod_table(device)
        padded = torch.cat([torch.ones(1, dtype=table.dtype, device=table.device), table])
        _PADDED_CACHE[key] = padded
    return padded


def alphas_cumprod(device: torch.device | str | None = None) -> torch.Tensor:
    """Return ᾱ_t for t = 0 … 999 as a float32 tensor of shape (1000,) on ``device`` (a fresh copy).

    Parity (reference section 2 and 21.1-1): the original converts the float64 betas to float32 *first* and takes
    the cumulative product of (1 - β) in float32 on the device. ᾱ₅₀₀ is 0.07779666036 on this path and
    0.07779665837 in float64; the float32 path is the one that reproduces the original bit for bit.
    """
    dev = torch.device(device) if device is not None else torch.device("cpu")
    return _alphas_cumprod_table(dev).clone()


def alpha_bar(t: torch.Tensor | int, device: torch.device | str | None = None) -> torch.Tensor:
    """Gather ᾱ_t for integer timesteps, with ᾱ_{-1} = 1 (the "past the end" endpoint).

    Args:
        t: an int or a tensor of timesteps in {-1, 0, …, 999} of any shape (float tensors are truncated).
        device: device of the result; defaults to ``t``'s device (or CPU for an int).

    Returns:
        float32 tensor with the shape of ``t`` (0-d for an int).
    """
    if device is None:
        device = t.device if isinstance(t, torch.Tensor) else torch.device("cpu")
    padded = _padded_table(torch.device(device))
    if not isinstance(t, torch.Tensor):
        # the loops pass Python ints: check on the host and index without a device sync
        t_int = int(t)
        if not -1 <= t_int < NUM_TIMESTEPS:
            raise InvalidScheduleError(
                f"Timestep out of range: {t_int}.", hint=f"Timesteps must lie in -1..{NUM_TIMESTEPS - 1}."
            )
        return padded[t_int + 1]
    t_tensor = t.to(device).long()
    if bool(((t_tensor < -1) | (t_tensor >= NUM_TIMESTEPS)).any()):
        raise InvalidScheduleError(
            f"Timestep out of range: {t_tensor.min().item()}..{t_tensor.max().item()}.",
            hint=f"Timesteps must lie in -1..{NUM_TIMESTEPS - 1}.",
        )
    return padded[t_tensor + 1]


def validate_t0(t0: int, n_steps: int) -> None:
    """Raise :class:`InvalidScheduleError` unless 1 <= t0 <= 999 and n_steps >= 2."""
    if isinstance(t0, bool) or not isinstance(t0, (int, np.integer)):
        raise InvalidScheduleError(f"t0 must be an integer, got {t0!r}.", hint="Pass --t0 as a whole number.")
    if isinstance(n_steps, bool) or not isinstance(n_steps, (int, np.integer)):
        raise InvalidScheduleError(
            f"The number of steps must be an integer, got {n_steps!r}.",
            hint="Pass --steps as a whole number.",
        )
    if not 1 <= t0 < NUM_TIMESTEPS:
        raise InvalidScheduleError(
            f"t0 = {t0} is outside the diffusion range 1..{NUM_TIMESTEPS - 1}.",
            hint="Choose a return step such as 301, 401, 500 or 601.",
        )
    if n_steps < 2:
        raise InvalidScheduleError(
            f"The number of steps must be at least 2, got {n_steps}.",
            hint="Use 40 inversion/generation steps (the paper's default) or at least 2.",
        )


def timestep_sequence(t0: int, n_steps: int) -> list[int]:
    """Return the N timesteps ``[0, …, t0]`` exactly as the original builds them.

    seq_k = int(linspace(0, 1, N)_k · t0) with float64 numpy ``linspace`` and truncation toward zero (reference
    section 3.1; this differs from floor(k·t0/(N-1)) in e.g. N = 7, t0 = 18, k = 5 -> 14, not 15).

    Args:
        t0: return step, 1 <= t0 <= 999.
        n_steps: number of points N >= 2 (N > t0 + 1 gives repeated timesteps, as in the original).

    Returns:
        ``[t_0 = 0, t_1, …, t_{N-1} = t0]`` as Python ints.
    """
    validate_t0(t0, n_steps)
    return [int(s) for s in np.linspace(0, 1, int(n_steps), dtype=np.float64) * int(t0)]


def generation_pairs(t0: int, n_steps: int) -> list[tuple[int, int]]:
    """Return the N generation pairs (t, t_next), from t0 down to the -1 endpoint.

    ``# [(t0, t_{N-2}), …, (t_1, 0), (0, -1)]`` — N model calls; the last one lands on ᾱ = 1, so the result is
    the x̂₀ prediction made at t = 0 (reference section 5).
    """
    seq = timestep_sequence(t0, n_steps)
    seq_next = [-1, *seq[:-1]]
    return list(zip(reversed(seq), reversed(seq_next), strict=True))


def inversion_pairs(t0: int, n_steps: int) -> list[tuple[int, int]]:
    """Return the N-1 inversion pairs (t, t_next), from the clean image at t = 0 up to t0.

    ``# [(0, t_1), (t_1, t_2), …, (t_{N-2}, t0)]`` — N-1 model calls, the first on the clean image at t = 0.
    These are exactly the generation pairs reversed, without the (0, -1) endpoint.
    """
    seq = timestep_sequence(t0, n_steps)
    return list(zip(seq[:-1], seq[1:], strict=True))
