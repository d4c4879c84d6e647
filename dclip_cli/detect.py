"""Which preset (domain) does an image belong to? CLIP zero-shot over the presets' ``domain_prompt``.

``dclip edit photo.png --to smiling`` works without ``--domain``: each installed preset describes its domain in one
prompt ("a photo of a human face", "a photo of a church"), CLIP scores the image against all of them, and the most
likely preset is used when its probability reaches ``min_confidence``. Otherwise :class:`DomainDetectionError`
asks for ``--domain``; guessing wrong would download and run the wrong diffusion model.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from dclip_cli.errors import DomainDetectionError, UnknownPresetError
from dclip_cli.presets.preset import Preset

#: default probability the best preset needs before it is used without asking
MIN_CONFIDENCE = 0.6


@dataclass(frozen=True)
class Detection:
    """The outcome of domain detection.

    Args:
        preset: name of the most likely preset.
        confidence: its probability (1.0 when only one preset is installed).
        scores: every preset's probability, highest first.
        method: ``"clip"`` (zero-shot), ``"only-preset"``, ``"edit"`` (the only preset with the named edit asked
            for) or ``"requested"`` (``--domain``).
    """

    preset: str
    confidence: float
    scores: dict[str, float] = field(default_factory=dict)
    method: str = "clip"

    def describe(self) -> str:
        """One line for the user: which domain, and how sure."""
        if self.method == "only-preset":
            return f"domain {self.preset} (the only installed preset)"
        if self.method == "edit":
            return f"domain {self.preset} (the only preset with this edit)"
        if self.method == "requested":
            return f"domain {self.preset}"
        others = ", ".join(f"{k} {v:.0%}" for k, v in list(self.scores.items())[1:3])
        tail = f"; next: {others}" if others else ""
        return f"domain {self.preset} detected by CLIP with {self.confidence:.0%} confidence{tail}"


def _format_scores(scores: dict[str, float], limit: int = 4) -> str:
    return ", ".join(f"{k} {v:.0%}" for k, v in list(scores.items())[:limit])


@torch.no_grad()
def score_domains(clip: object, x: torch.Tensor, presets: Sequence[Preset]) -> list[dict[str, float]]:
    """CLIP zero-shot probabilities of each image over the presets' domain prompts.

    Args:
        clip: a :class:`~dclip_cli.losses.clip.ClipModel`.
        x: (B, 3, S, S) images in [-1, 1].
        presets: candidate presets (at least one).

    Returns:
        One ``{preset name: probability}`` dict per image, sorted by probability (highest first).
    """
    from dclip_cli.losses.clip import zero_shot

    probs = zero_shot(clip, x, [p.domain_prompt for p in presets])  # type: ignore[arg-type]
    rows = []
    for row in probs.float().cpu():
        pairs = sorted(
            zip((p.name for p in presets), (float(v) for v in row), strict=True), key=lambda kv: -kv[1]
        )
        rows.append(dict(pairs))
    return rows


def detect_domain(
    clip: object | None,
    x: torch.Tensor,
    presets: Sequence[Preset],
    *,
    min_confidence: float = MIN_CONFIDENCE,
    label: str = "the image",
) -> Detection:
    """Pick the preset an image (or a batch showing one domain) belongs to.

    Probabilities are averaged over the batch. With a single installed preset no CLIP call is made.

    Args:
        clip: a :class:`~dclip_cli.losses.clip.ClipModel` (may be ``None`` when only one preset is given).
        x: (B, 3, S, S) images in [-1, 1] (any S; CLIP preprocessing resizes).
        presets: the installed presets.
        min_confidence: probability the winner needs.
        label: how messages name the input (a file name).

    Raises:
        UnknownPresetError: no presets are installed.
        DomainDetectionError: the best preset's probability is below ``min_confidence``.
    """
    presets = list(presets)
    if not presets:
        raise UnknownPresetError(
            "No presets are installed, so the domain cannot be chosen.",
            hint="Install a preset plugin, or check DCLIP_LOAD_PLUGINS.",
        )
    if len(presets) == 1:
        return Detection(presets[0].name, 1.0, {presets[0].name: 1.0}, method="only-preset")
    if clip is None:
        raise DomainDetectionError("Domain detection needs a CLIP model.", hint="Pass --domain.")
    rows = score_domains(clip, x, presets)
    mean = {p.name: sum(r[p.name] for r in rows) / len(rows) for p in presets}
    scores = dict(sorted(mean.items(), key=lambda kv: -kv[1]))
    best, confidence = next(iter(scores.items()))
    if confidence < min_confidence:
        raise DomainDetectionError(
            f"Could not tell which domain {label} belongs to: CLIP gives {_format_scores(scores)}, and the best "
            f"is below the {min_confidence:.0%} needed.",
            hint=f"Pass --domain with one of: {', '.join(sorted(scores))}.",
        )
    winners = [next(iter(r)) for r in rows]
    if any(w != best for w in winners):
        found = ", ".join(sorted(set(winners)))
        raise DomainDetectionError(
            f"The images of {label} look like different domains ({found}); one run edits one domain.",
            hint="Edit each domain in its own run, or pass --domain.",
        )
    return Detection(best, confidence, scores, method="clip")
