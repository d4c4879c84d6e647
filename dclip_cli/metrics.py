"""Edit-quality metrics: how well an edit follows the text and how much of the input it keeps.

Every metric takes images as (B, 3, S, S) float tensors in [-1, 1] and returns one float per image:

============================  =======================================================================  =========
key                           meaning                                                                  better
============================  =======================================================================  =========
``clip_directional``          cos(ΔI, ΔT): image direction (edit - source) vs the 79-template text      higher
                              direction (source text -> target text), the quantity DiffusionCLIP
                              optimises
``clip_target``               cos(E_I(edit), E_T(target text)), the plain CLIP score                     higher
``lpips``                     LPIPS distance between input and edit (perceptual change)                 lower
``identity``                  cos of face embeddings of input and edit (faces only)                    higher
``reconstruction_psnr``       PSNR in dB of the base model's reconstruction against the input: how     higher
                              faithful inversion + generation is before any editing
``psnr``                      PSNR in dB between two given images (``dclip score``)                     higher
============================  =======================================================================  =========

The networks are passed in (:class:`MetricModels`); a missing one leaves its metric out. Whether that is allowed
is the applications' decision: by default a metric whose network cannot be loaded is skipped with a warning, and a
metric asked for with ``--metrics`` is an error (``dclip_cli.apps.session.Session.metric_models``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

#: metric key -> (label for tables, whether higher is better)
METRICS: dict[str, tuple[str, bool]] = {
    "clip_directional": ("CLIP directional similarity", True),
    "clip_target": ("CLIP similarity to target", True),
    "lpips": ("LPIPS to input", False),
    "identity": ("identity similarity", True),
    "reconstruction_psnr": ("reconstruction PSNR (dB)", True),
    "psnr": ("PSNR (dB)", True),
}


@dataclass
class MetricModels:
    """The networks metrics need; ``None`` leaves the corresponding metrics out.

    Args:
        clip: a :class:`~dclip_cli.losses.clip.ClipModel` (directional and target similarity).
        lpips: callable ``(x, y) -> (B,)`` LPIPS distances for images in [-1, 1].
        identity: module mapping faces (B, 3, S, S) in [-1, 1] to (B, D) embeddings.
    """

    clip: object | None = None
    lpips: Callable[[Tensor, Tensor], Tensor] | None = None
    identity: Callable[[Tensor], Tensor] | None = None

    def computed(self, wanted: Sequence[str]) -> list[str]:
        """The ``wanted`` metric names (``clip``, ``lpips``, ``identity``, ``psnr``) these networks compute
        (``psnr`` needs none)."""
        return [w for w in wanted if w == "psnr" or getattr(self, w, None) is not None]


def psnr(x: Tensor, y: Tensor) -> Tensor:
    """Peak signal-to-noise ratio per image, in dB, of images in [-1, 1] compared on the [0, 1] scale.

    Both are clamped to [-1, 1] first (as saved PNGs are). Identical images give +inf.

    Args:
        x: (B, 3, H, W) in [-1, 1].
        y: (B, 3, H, W) or (1, 3, H, W) in [-1, 1].

    Returns:
        (B,) float32.
    """
    a = (x.detach().float().clamp(-1, 1) + 1) / 2
    b = (y.detach().float().clamp(-1, 1) + 1) / 2
    mse = ((a - b) ** 2).flatten(1).mean(dim=1)
    return 10.0 * torch.log10(1.0 / mse)


@torch.no_grad()
def identity_similarity(net: Callable[[Tensor], Tensor], x_src: Tensor, x_edit: Tensor) -> Tensor:
    """cos(f(x_src), f(x_edit)) per image for a face-embedding network f: (B,) float32 in [-1, 1]."""
    a = net(x_src).float()
    b = net(x_edit).float()
    if a.shape[0] == 1 and b.shape[0] > 1:
        a = a.expand_as(b)
    return torch.nn.functional.cosine_similarity(a, b, dim=1, eps=1e-8)


def _values(t: Tensor) -> list[float]:
    return [float(v) for v in t.detach().float().cpu().reshape(-1)]


@torch.no_grad()
def compute_metrics(
    models: MetricModels,
    *,
    x_src: Tensor,
    x_edit: Tensor,
    src_text: str | None = None,
    trg_text: str | None = None,
    x_rec: Tensor | None = None,
) -> list[dict[str, float]]:
    """Compute every metric the given networks allow, one dict per edited image.

    Args:
        models: the networks (:class:`MetricModels`).
        x_src: (B, 3, S, S) or (1, 3, S, S) inputs in [-1, 1].
        x_edit: (B, 3, S, S) edits in [-1, 1].
        src_text: source text (directional similarity needs both texts).
        trg_text: target text.
        x_rec: (B, 3, S, S) reconstructions by the base model, for ``reconstruction_psnr``.

    Returns:
        ``[{"clip_directional": ..., "clip_target": ..., "lpips": ..., "identity": ..., "reconstruction_psnr":
        ...}, ...]`` with the keys that could be computed.
    """
    from dclip_cli.losses import clip as clip_mod

    x_edit = x_edit.detach().float().clamp(-1, 1)
    x_src = x_src.detach().float().clamp(-1, 1).to(x_edit.device)
    n = x_edit.shape[0]
    x_src_b = x_src.expand(n, -1, -1, -1) if x_src.shape[0] == 1 and n > 1 else x_src
    columns: dict[str, list[float]] = {}
    if models.clip is not None and trg_text:
        if src_text:
            columns["clip_directional"] = _values(
                clip_mod.directional_similarity(models.clip, x_src_b, x_edit, src_text, trg_text)  # type: ignore[arg-type]
            )
        columns["clip_target"] = _values(clip_mod.text_similarity(models.clip, x_edit, trg_text))  # type: ignore[arg-type]
    if models.lpips is not None:
        columns["lpips"] = _values(models.lpips(x_src_b, x_edit))
    if models.identity is not None:
        columns["identity"] = _values(identity_similarity(models.identity, x_src_b, x_edit))
    if x_rec is not None:
        columns["reconstruction_psnr"] = _values(psnr(x_rec.to(x_edit.device), x_src_b))
    return [{key: values[i] for key, values in columns.items()} for i in range(n)]


def mean_metrics(rows: Sequence[dict[str, float]]) -> dict[str, float]:
    """Average each metric over rows that have it."""
    keys = [k for k in METRICS if any(k in r for r in rows)]
    return {k: sum(r[k] for r in rows if k in r) / sum(1 for r in rows if k in r) for k in keys}
