"""Noise mixing of several eps-models: the original's ``model_ratio`` and its multi-model ``hybrid_noise``.

Both return an eps-callable, so the DDIM functions need no special case (reference section 7):

* :func:`blend` — ε = r·ε_ft + (1 − r)·ε_base, the "degree of change" knob (r = 1: fine-tuned only).
* :func:`mix` — per-timestep weights over an explicit list of models. dclip's version (section 21.2-2) validates
  the schedule, normalises the weights, may include the base model and works with any batch size, choosing each
  sample's weights from its own timestep.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from dclip_cli.diffusion.ddim import EpsModel
from dclip_cli.errors import InvalidScheduleError

Schedule = Sequence[tuple[int, Sequence[float]]] | Mapping[int, Sequence[float]]


class BlendedModel:
    """ε = ratio·ε_finetuned + (1 − ratio)·ε_base; a model with weight 0 is not evaluated."""

    def __init__(self, base: EpsModel, finetuned: EpsModel, ratio: float) -> None:
        self.base = base
        self.finetuned = finetuned
        self.ratio = ratio

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        r = self.ratio
        eps: torch.Tensor | None = None
        if r != 0.0:
            eps = r * self.finetuned(x, t)
        if r != 1.0:
            term = (1.0 - r) * self.base(x, t)
            eps = term if eps is None else eps + term
        assert eps is not None
        return eps

    def __repr__(self) -> str:
        return f"BlendedModel(ratio={self.ratio})"


def blend(base: EpsModel, finetuned: EpsModel, ratio: float) -> BlendedModel:
    """Interpolate two eps-models as the original's ``model_ratio`` does.

    Args:
        base: the pretrained model (also the one that inverts).
        finetuned: the fine-tuned model.
        ratio: r; 1 uses only ``finetuned``, 0 only ``base``; values in between interpolate (values outside
            [0, 1] extrapolate).

    Returns:
        An eps-callable ``(x, t) -> r·ε_ft + (1 − r)·ε_base``.

    Raises:
        InvalidScheduleError: ``ratio`` is not a finite number.
    """
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not math.isfinite(ratio):
        raise InvalidScheduleError(
            f"The model ratio must be a finite number, got {ratio!r}.",
            hint="Use a value between 0 (base model only) and 1 (fine-tuned model only).",
        )
    return BlendedModel(base, finetuned, float(ratio))


def validate_schedule(schedule: Schedule, n_models: int) -> list[tuple[int, list[float]]]:
    """Check a mixing schedule and return it with normalised weights.

    Rules: at least one entry; integer thresholds strictly descending and ending at 0; one weight per model;
    weights finite and non-negative with a positive sum.

    Raises:
        InvalidScheduleError: naming the first broken rule.
    """
    hint = "Write the schedule as [(threshold, [w_1, ..., w_n]), ...] with thresholds descending to 0, e.g. [(300, [0.4, 0.6]), (0, [0.15, 0.85])]."
    items: list[tuple[Any, Any]] = list(schedule.items()) if isinstance(schedule, Mapping) else list(schedule)
    if n_models < 1:
        raise InvalidScheduleError("Mixing needs at least one model.", hint="Pass a list of models.")
    if not items:
        raise InvalidScheduleError("The mixing schedule is empty.", hint=hint)
    result: list[tuple[int, list[float]]] = []
    previous: int | None = None
    for entry in items:
        try:
            threshold, weights = entry
        except (TypeError, ValueError):
            raise InvalidScheduleError(
                f"Mixing schedule entry {entry!r} is not a (threshold, weights) pair.", hint=hint
            ) from None
        if isinstance(threshold, bool) or not isinstance(threshold, int) or not 0 <= threshold < 1000:
            raise InvalidScheduleError(
                f"Mixing threshold {threshold!r} is not an integer timestep in 0..999.", hint=hint
            )
        if previous is not None and threshold >= previous:
            raise InvalidScheduleError(
                f"Mixing thresholds must be strictly descending, but {threshold} follows {previous}.",
                hint=hint,
            )
        previous = threshold
        if isinstance(weights, (int, float)):
            weights = [weights]
        weights = list(weights)
        if len(weights) != n_models:
            raise InvalidScheduleError(
                f"Mixing entry at threshold {threshold} has {len(weights)} weight(s) for {n_models} model(s).",
                hint="Give exactly one weight per model.",
            )
        if any(
            isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w) or w < 0
            for w in weights
        ):
            raise InvalidScheduleError(
                f"Mixing weights at threshold {threshold} must be finite non-negative numbers, got {weights}.",
                hint=hint,
            )
        total = float(sum(weights))
        if total <= 0:
            raise InvalidScheduleError(
                f"Mixing weights at threshold {threshold} sum to 0.",
                hint="Give at least one positive weight.",
            )
        result.append((threshold, [float(w) / total for w in weights]))
    if result[-1][0] != 0:
        raise InvalidScheduleError(
            f"The last mixing threshold must be 0 (so every timestep has weights), got {result[-1][0]}.",
            hint=hint,
        )
    return result


class MixedModel:
    """ε = Σ_i w_i(t)·ε_i with per-sample weights chosen by the first threshold <= t."""

    def __init__(self, models: Sequence[EpsModel], schedule: list[tuple[int, list[float]]]) -> None:
        self.models = list(models)
        self.schedule = schedule
        self._thresholds = torch.tensor([thr for thr, _ in schedule], dtype=torch.float64)
        self._weights = torch.tensor([w for _, w in schedule], dtype=torch.float64)  # (entries, models)

    def weights_at(self, t: torch.Tensor) -> torch.Tensor:
        """Return the normalised weights (B, n_models), float64, for timesteps ``t`` of shape (B,)."""
        t64 = t.detach().to("cpu", torch.float64).reshape(-1)
        if bool((t64 < 0).any()):
            raise InvalidScheduleError(f"Mixing got a negative timestep {t64.min().item()}.")
        # thresholds descend, so the first entry with threshold <= t is after all entries with threshold > t
        index = (self._thresholds[None, :] > t64[:, None]).sum(dim=1)
        return self._weights[index]

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        weights = self.weights_at(t)  # (B, M)
        eps: torch.Tensor | None = None
        for i, model in enumerate(self.models):
            w = weights[:, i]
            if not bool((w != 0).any()):
                continue  # contributes 0 to every sample: not evaluated
            w = w.to(device=x.device, dtype=x.dtype).reshape(-1, *([1] * (x.ndim - 1)))
            term = w * model(x, t)
            eps = term if eps is None else eps + term
        assert eps is not None  # every row has a positive sum
        return eps

    def __repr__(self) -> str:
        return f"MixedModel(models={len(self.models)}, schedule={self.schedule})"


def mix(models: Sequence[EpsModel], schedule: Schedule) -> MixedModel:
    """Mix eps-models with timestep-dependent weights (the original's ``hybrid_noise``, fixed).

    At timestep t the first entry whose threshold is <= t applies, separately for every sample of a batch.

    Args:
        models: the eps-models (the base model may be one of them).
        schedule: ``[(threshold, [w_1, ..., w_n]), ...]`` (or a ``{threshold: weights}`` dict in that order),
            thresholds strictly descending and ending at 0, one non-negative weight per model, positive sums;
            weights are normalised to sum to 1.

    Returns:
        An eps-callable ``(x, t) -> Σ_i w_i(t)·ε_i(x, t)``.

    Raises:
        InvalidScheduleError: the schedule breaks one of the rules above.
    """
    models = list(models)
    return MixedModel(models, validate_schedule(schedule, len(models)))
