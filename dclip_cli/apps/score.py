"""``dclip score``: the edit metrics for any pair of images."""

from __future__ import annotations

import os
from collections.abc import Sequence

from dclip_cli.apps.config import ALL_METRICS, Runtime
from dclip_cli.apps.session import Session
from dclip_cli.progress import ProgressCallback, Reporter


def score_images(
    source: str | os.PathLike[str],
    edited: str | os.PathLike[str],
    *,
    src: str,
    trg: str,
    domain: str | None = None,
    size: int | None = None,
    metrics: Sequence[str] = ALL_METRICS,
    runtime: Runtime = Runtime(),
    progress: Reporter | ProgressCallback | None = None,
    session: Session | None = None,
) -> dict[str, float]:
    """The edit metrics for any pair of images.

    Both images are centre-cropped and resized to ``size`` (the preset's size and aligner with ``domain``). The
    identity similarity needs ``domain`` naming a preset with an identity model; ``psnr`` is between the two images.

    Returns:
        ``{"clip_directional", "clip_target", "lpips", "identity", "psnr"}`` (those that could be computed).
    """
    from dclip_cli import images
    from dclip_cli.metrics import compute_metrics, psnr

    session = session or Session(runtime, progress=progress)
    preset = session.preset(domain) if domain is not None else None
    if size is None:
        size = preset.image_size if preset is not None else 256
    aligner = None
    if preset is not None and preset.preprocess == "align" and preset.aligner:
        aligner = session.registry.aligners.get(preset.aligner)
    x_src, _ = images.load_and_prepare(source, size, aligner=aligner)
    x_edit, _ = images.load_and_prepare(edited, size, aligner=aligner)
    metrics = tuple(metrics)
    models = session.metric_models(preset, [m for m in metrics if m != "psnr"])
    row = compute_metrics(
        models, x_src=x_src.to(session.device), x_edit=x_edit.to(session.device), src_text=src, trg_text=trg
    )[0]
    if "psnr" in metrics:
        row["psnr"] = float(psnr(x_edit, x_src)[0])
    return row
