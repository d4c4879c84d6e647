"""How long a run will take, said before it starts; and, before a long one, the question (or the stop) that keeps a
newcomer from waiting hours by accident.

Every compute command (``invert``, ``edit``, ``mix``, ``translate``, ``finetune``) counts the UNet calls it will
make, leaving out what the caches already hold (inverted latents, drawn samples), times one *warm* call of the model
it will run on one batch as it will be fed (the first call of a model pays for allocations and kernel selection, so
timing it overstates the run by up to 2x), and multiplies. The result is said plainly: "about 4 min on this CPU in
bf16".

A run estimated over the confirmation threshold (:data:`DEFAULT_CONFIRM_MINUTES`, or ``DCLIP_CONFIRM_MINUTES``)
asks on a terminal and, without one, stops with :class:`~dclip_cli.errors.NotConfirmedError` naming the estimate and
the faster choices, unless the caller passed ``--yes`` (the library's :class:`LongRuns` policy is ``None`` then).
Nothing is timed on CUDA: GPU runs are fast enough not to ask.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from dclip_cli.errors import ConfigError, NotConfirmedError
from dclip_cli.progress import Reporter

#: runs estimated longer than this (minutes) ask first, or stop without a terminal, unless --yes
DEFAULT_CONFIRM_MINUTES = 10.0
#: environment variable overriding :data:`DEFAULT_CONFIRM_MINUTES` (a number of minutes; 0 asks before every run)
CONFIRM_ENV = "DCLIP_CONFIRM_MINUTES"


def confirm_threshold_seconds(environ: dict[str, str] | os._Environ[str] | None = None) -> float:
    """The confirmation threshold in seconds: ``DCLIP_CONFIRM_MINUTES`` or :data:`DEFAULT_CONFIRM_MINUTES`.

    Raises:
        ConfigError: the variable is not a non-negative number.
    """
    env = os.environ if environ is None else environ
    text = env.get(CONFIRM_ENV, "").strip()
    if not text:
        return DEFAULT_CONFIRM_MINUTES * 60.0
    try:
        minutes = float(text)
    except ValueError:
        minutes = -1.0
    if not math.isfinite(minutes) or minutes < 0:
        raise ConfigError(
            f"{CONFIRM_ENV}={text!r} is not a number of minutes.",
            hint=f"Set it to a number such as {DEFAULT_CONFIRM_MINUTES:g}, or unset it.",
        )
    return minutes * 60.0


@dataclass(frozen=True)
class LongRuns:
    """What happens before a run estimated to take longer than ``threshold`` seconds.

    Args:
        threshold: seconds.
        ask: asks the user a yes/no question (a terminal prompt); ``None`` stops with
            :class:`~dclip_cli.errors.NotConfirmedError` instead.
    """

    threshold: float = DEFAULT_CONFIRM_MINUTES * 60.0
    ask: Callable[[str], bool] | None = None


def plain_duration(seconds: float) -> str:
    """``about 45 s``, ``about 4 min``, ``about 1 h 10 min`` (rounded the way people say it)."""
    if not math.isfinite(seconds) or seconds < 0:
        return "an unknown time"
    if seconds < 55:
        return f"about {max(1, round(seconds / 5) * 5 if seconds >= 10 else round(seconds))} s"
    minutes = round(seconds / 60)
    if minutes < 60:
        return f"about {minutes} min"
    hours, rest = divmod(minutes, 60)
    return f"about {hours} h" + (f" {rest:02d} min" if rest else "")


def where(device: Any, dtype: Any) -> str:
    """``on this CPU in bf16``, ``on this GPU in fp16``, ``on this Mac's GPU in fp32``."""
    import torch

    from dclip_cli.precision import precision_name

    kind = torch.device(device).type
    place = {"cpu": "this CPU", "cuda": "this GPU", "mps": "this Mac's GPU"}.get(kind, kind)
    return f"on {place} in {precision_name(dtype)}"


@dataclass(frozen=True)
class Estimate:
    """A run's expected duration and what it covers.

    Args:
        seconds: the estimate.
        device: where it runs.
        dtype: the UNet compute dtype (``None``: float32).
        what: the work, in words ("inverting and generating 3 images").
        per_call: the measured seconds of one inference call it was extrapolated from.
    """

    seconds: float
    device: Any
    dtype: Any
    what: str = ""
    per_call: float = 0.0

    def describe(self) -> str:
        """``about 4 min on this CPU in bf16 (inverting and generating 3 images)``."""
        tail = f" ({self.what})" if self.what else ""
        return f"{plain_duration(self.seconds)} {where(self.device, self.dtype)}{tail}"


def estimate_run(
    model: Callable[..., Any],
    x: Any,
    *,
    infer_calls: int,
    train_calls: int = 0,
    checkpointing: bool = False,
    dtype: Any = None,
    device: Any,
    what: str = "",
    seconds_per_call: float | None = None,
) -> Estimate | None:
    """Time one warm UNet call on ``x`` (one batch as it will be fed) and extrapolate to the run's calls.

    Calls with backward count :data:`dclip_cli.precision.BACKWARD_FACTOR` forwards (one more with gradient
    checkpointing). ``None`` on CUDA (nothing is timed there) or when there is nothing to run.
    """
    import torch

    from dclip_cli.precision import BACKWARD_FACTOR, warm_call_seconds

    if torch.device(device).type == "cuda" or infer_calls + train_calls <= 0:
        return None
    per_call = warm_call_seconds(model, x) if seconds_per_call is None else float(seconds_per_call)
    factor = BACKWARD_FACTOR + (1.0 if checkpointing else 0.0)
    seconds = per_call * (max(0, infer_calls) + factor * max(0, train_calls))
    return Estimate(seconds, device, dtype, what, per_call)


def check_estimate(
    reporter: Reporter,
    estimate: Estimate | None,
    *,
    long_runs: LongRuns | None,
    choices: Sequence[str] = (),
) -> bool:
    """Announce ``estimate`` (when it is long enough to matter) and, when it exceeds the policy's threshold, ask
    or stop.

    Args:
        reporter: where the ``info`` line goes.
        estimate: from :func:`estimate_run` (``None``: nothing to say).
        long_runs: the policy; ``None`` never asks (the library default, and ``--yes``).
        choices: faster ways to do the same, for the question and the error.

    Returns:
        Whether the user was asked and agreed (later estimates of the same session need not ask again).

    Raises:
        NotConfirmedError: the estimate exceeds the threshold and the policy cannot ask, or the user declined.
    """
    from dclip_cli import precision

    if estimate is None:
        return False
    text = estimate.describe()
    if estimate.seconds >= precision.ESTIMATE_MIN_SECONDS:
        reporter.info(f"Estimated time: {text}.")
    if long_runs is None or estimate.seconds <= long_runs.threshold:
        return False
    limit = f"{long_runs.threshold / 60:.3g} min"
    faster = "; ".join(choices)
    if long_runs.ask is not None:
        question = f"This run takes {text}" + (f". Faster: {faster}" if faster else "") + ". Start it now?"
        if long_runs.ask(question):
            return True
        raise NotConfirmedError(
            "Stopped before the long run started; nothing was written.", hint=_hint(faster)
        )
    raise NotConfirmedError(
        f"This run would take {text}, more than the {limit} dclip starts without asking, and there is no terminal "
        "to ask on; nothing was written.",
        hint=_hint(faster),
    )


def _hint(faster: str) -> str:
    head = f"Faster: {faster}. " if faster else ""
    return f"{head}Pass --yes to run it anyway (or raise {CONFIRM_ENV})."


#: faster choices shared by the commands (each command adds its own first)
GPU_CHOICE = "a GPU (--device cuda)"


def finetune_calls(
    configs: Sequence[Any],
    *,
    n_images: int,
    n_draw: int,
    n_invert: int,
    n_preview: int = 0,
    world_size: int = 1,
) -> tuple[int, int]:
    """``(inference calls, training calls)`` of a fine-tuning job, for one process of ``world_size``.

    Under torchrun the ranks share the sampling, the inversions and the training images (each rank at most its
    rounded-up share); the previews are made by rank 0 alone.

    Args:
        configs: the :class:`~dclip_cli.training.config.FinetuneConfig` of each edit.
        n_images: training images per edit (photos and samples).
        n_draw: samples still to draw (those not in the cache).
        n_invert: images still to invert (training and preview images not in the latent cache).
        n_preview: preview images generated after each epoch.
        world_size: processes in the job (1 without torchrun).
    """

    def share(n: int) -> int:
        return -(-n // max(1, world_size))

    cfg = configs[0]
    inference = share(n_draw) * cfg.n_gen_steps + share(n_invert) * (2 * cfg.n_inv_steps - 1)
    inference += sum(c.epochs * n_preview * c.n_gen_steps for c in configs)
    training = sum(c.epochs * share(n_images) * c.n_train_steps for c in configs)
    return inference, training


def check_finetune_time(
    *,
    reporter: Reporter,
    model: Callable[..., Any],
    configs: Sequence[Any],
    device: Any,
    long_runs: LongRuns | None,
    n_images: int,
    n_preview: int,
    n_draw: int,
    n_invert: int,
    image_size: int,
) -> None:
    """Estimate a fine-tuning job from one warm call of ``model`` (the inference model), say it, and ask or stop
    before a long one (:func:`check_estimate`).

    Args:
        configs: the edits' :class:`~dclip_cli.training.config.FinetuneConfig`.
        n_images: training images per edit; n_preview: preview samples per epoch.
        n_draw: samples still to draw; n_invert: inversions not in the latent cache.
        image_size: the model's S (one (1, 3, S, S) image is timed).
    """
    import torch

    from dclip_cli.distributed import current
    from dclip_cli.precision import resolve_checkpointing, resolve_precision

    if reporter.callback is None and long_runs is None:
        return
    cfg = configs[0]
    infer, train = finetune_calls(
        configs, n_images=n_images, n_draw=n_draw, n_invert=n_invert, n_preview=n_preview,
        world_size=current().world_size,
    )  # fmt: skip
    epochs = sum(c.epochs for c in configs)
    parts = [f"drawing {n_draw} sample(s)"] if n_draw else []
    parts += [f"inverting {n_invert} image(s)"] if n_invert else []
    parts += [f"{epochs} epoch(s) on {n_images} image(s) for {len(configs)} edit(s)"]
    estimate = estimate_run(
        model, torch.zeros((1, 3, image_size, image_size), device=device), infer_calls=infer, train_calls=train,
        checkpointing=resolve_checkpointing(cfg.checkpointing, mode=cfg.mode),
        dtype=resolve_precision(cfg.precision, device, training=True), device=device, what=", ".join(parts),
    )  # fmt: skip
    choices = ["fewer training images (--samples 4) or epochs (--epochs 1)", "--inv-steps 10", GPU_CHOICE]
    check_estimate(reporter, estimate, long_runs=long_runs, choices=choices)
