"""The time estimate dclip announces before a long run on a CPU (or MPS), one function for every command."""

from __future__ import annotations

from typing import Any

from dclip_cli.progress import Reporter


def announce_estimate(
    reporter: Reporter,
    model: Any,
    x: Any,
    *,
    infer_calls: int,
    train_calls: int = 0,
    checkpointing: bool = False,
    dtype: Any = None,
    device: Any,
    advice: str = "",
) -> float | None:
    """Time one UNet call on ``x`` (one batch as it will be fed) and, when the whole run is long, say how long.

    Nothing is timed on CUDA (GPU runs are fast), when nobody listens or when there is nothing to run.

    Args:
        reporter: where the ``info`` line goes.
        model: the eps-callable that will run (optimized or not).
        x: one batch.
        infer_calls: inference UNet calls of the run (sampling, inversion, generation).
        train_calls: UNet calls with backward (fine-tuning).
        checkpointing: whether those recompute their activations.
        dtype: the UNet's compute dtype (``None``: float32), for the wording.
        device: the device.
        advice: a sentence on how to go faster.

    Returns:
        The estimate in seconds, or ``None`` when nothing was timed.
    """
    import torch

    from dclip_cli.precision import (
        describe_precision,
        estimate_seconds,
        format_seconds,
        should_print_estimate,
    )

    if reporter.callback is None or torch.device(device).type == "cuda" or infer_calls + train_calls <= 0:
        return None
    seconds = estimate_seconds(model, x, infer_calls, train_calls=train_calls, checkpointing=checkpointing)
    if should_print_estimate(device, seconds):
        if train_calls:
            calls = f"up to {format_seconds(seconds)} ({infer_calls} sampling/inversion and {train_calls} training UNet calls"
        else:
            calls = f"{format_seconds(seconds)} for {infer_calls} UNet calls ("
        sep = ", " if train_calls else ""
        text = f"Estimated time: {calls}{sep}{describe_precision(dtype, device)})."
        reporter.info(text + (f" {advice}" if advice else ""))
    return seconds
