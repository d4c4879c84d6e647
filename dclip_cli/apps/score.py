"""``dclip score``: the edit metrics for any pair of images."""

from __future__ import annotations

import os
from collections.abc import Sequence

from dclip_cli.apps.config import Runtime, choose_metrics
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
    metrics: Sequence[str] | None = None,
    runtime: Runtime = Runtime(),
    progress: Reporter | ProgressCallback | None = None,
    session: Session | None = None,
) -> dict[str, float]:
    """The edit metrics for any pair of images.

    Both images are centre-cropped and resized to ``size`` (the preset's size and aligner with ``domain``). The
    identity similarity needs ``domain`` naming a preset with an identity model; ``psnr`` is between the two images.
    ``metrics``: ``None`` computes every metric that applies, skipping (with a warning) one whose network cannot
    be loaded; named metrics must all be computed (an error otherwise).

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
    names, required = choose_metrics(
        tuple(metrics) if metrics is not None else None, preset, reconstruction=True, psnr_possible=True
    )
    models = session.metric_models(preset, [m for m in names if m != "psnr"], required=required)
    row = compute_metrics(
        models, x_src=x_src.to(session.device), x_edit=x_edit.to(session.device), src_text=src, trg_text=trg
    )[0]
    if "psnr" in names:
        row["psnr"] = float(psnr(x_edit, x_src)[0])
    return row
