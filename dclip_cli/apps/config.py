"""Settings the applications share, as small frozen records, and their validation.

A command builds them once (``dclip_cli.cli.settings``) and hands them to ``edit_images``, ``mix_images``,
``translate_images`` and ``invert_images``:

* :class:`Sampling`: t0, inversion and generation steps, eta, seed (``None`` means "the preset's");
* :class:`Outputs`: where results go, overwriting, the comparison sheet, which metrics;
* :class:`Runtime`: device, precision, ``torch.compile``, CLIP model, batch size, face requirement;
* :class:`AutoFinetune`: whether (and how) an edit may fine-tune a model on the fly;
* :class:`RunConfig`: the four together, what every application takes.

:func:`resolve_sampling` turns a :class:`Sampling` into checked :class:`SamplingSettings` for one preset, with t0
chosen from its five possible sources by :func:`resolve_t0`.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from dclip_cli.errors import ConfigError

if TYPE_CHECKING:
    from dclip_cli.estimate import LongRuns
    from dclip_cli.presets.preset import Preset

DEFAULT_CLIP_MODEL = "ViT-B/16"
ALL_METRICS = ("clip", "lpips", "identity", "psnr")
DEFAULT_BATCH_SIZE = 4
#: samples drawn from the base model, beside the input images, by the quick on-the-fly fine-tuning
QUICK_SAMPLES = 8
#: at most this many input images join the quick on-the-fly fine-tuning
QUICK_MAX_IMAGES = 8


def check_batch_size(batch_size: int) -> int:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(
            f"--batch-size must be a positive integer, got {batch_size!r}.", hint="Use --batch-size 1."
        )
    return batch_size


@dataclass(frozen=True)
class Sampling:
    """DDIM settings as the user gave them (``None``: decided by the preset, the edit model or the latent).

    Args:
        t0: return step.
        inv_steps: points of the inversion sequence.
        steps: points of the generation sequence.
        eta: DDIM η of generation (0 = deterministic).
        seed: seed of the η noise, of translation's q-sample noise and of on-the-fly fine-tuning's samples.
    """

    t0: int | None = None
    inv_steps: int | None = None
    steps: int | None = None
    eta: float = 0.0
    seed: int = 0


@dataclass(frozen=True)
class Outputs:
    """Where results go.

    Args:
        output: output file (one input) or directory; ``None``: next to each input.
        overwrite: replace existing outputs.
        compare: also write an ``input | reconstruction | result`` sheet.
        metrics: metrics to compute (``clip``, ``lpips``, ``identity``, ``psnr``), a promise: one that cannot be
            computed is an error. ``None`` (the default): those that cost no extra diffusion pass (the CLIP
            metrics, LPIPS, identity for faces, and the reconstruction PSNR when ``compare`` or a sweep computes the
            reconstruction anyway), each skipped with a warning when its network cannot be loaded.
    """

    output: str | os.PathLike[str] | None = None
    overwrite: bool = False
    compare: bool = False
    metrics: tuple[str, ...] | None = None


@dataclass(frozen=True)
class Runtime:
    """How to compute.

    Args:
        device: ``auto``, ``cpu``, ``cuda``, ``cuda:N`` or ``mps``.
        precision: UNet compute precision: ``fp32`` (the original's numerics), ``auto``, ``bf16`` or ``fp16``.
        compile: run the UNets through ``torch.compile``.
        clip_model: CLIP name or file for detection, fine-tuning and metrics.
        batch_size: images per batch.
        require_face: with a face-aligning preset, treat an input without a detectable face as unreadable
            (reported and skipped) instead of centre-cropping it with a warning.
        long_runs: what to do before a run estimated to take long (:class:`~dclip_cli.estimate.LongRuns`: ask,
            or stop with ``RunTooLongError``); ``None`` (the default, and ``--yes``) starts every run.
    """

    device: str | None = "auto"
    precision: str = "fp32"
    compile: bool = False
    clip_model: str = DEFAULT_CLIP_MODEL
    batch_size: int = DEFAULT_BATCH_SIZE
    require_face: bool = False
    long_runs: LongRuns | None = None

    def __post_init__(self) -> None:
        check_batch_size(self.batch_size)


@dataclass(frozen=True)
class AutoFinetune:
    """On-the-fly fine-tuning when no edit model exists yet.

    Args:
        allowed: fine-tune now (else stop with an error naming the other ways).
        samples: base-model samples added to the input images.
    """

    allowed: bool = True
    samples: int = QUICK_SAMPLES


@dataclass(frozen=True)
class RunConfig:
    """The settings an application run takes, together (each part defaults to its defaults)."""

    sampling: Sampling = Sampling()
    outputs: Outputs = Outputs()
    runtime: Runtime = Runtime()
    auto: AutoFinetune = AutoFinetune()


@dataclass(frozen=True)
class SamplingSettings:
    """The DDIM settings of a run once decided and checked: :class:`Sampling` with every gap filled
    (``n_inv_steps``/``n_gen_steps`` for ``inv_steps``/``steps``)."""

    t0: int
    n_inv_steps: int
    n_gen_steps: int
    eta: float = 0.0
    seed: int = 0

    def generator(self, device: Any, offset: int = 0) -> Any:
        import torch

        return torch.Generator(device=device).manual_seed(self.seed + offset)

    def image_generators(self, device: Any, image_keys: Sequence[str], salt: str) -> list[Any]:
        """One generator per image, seeded by :func:`image_seed` from what the user gave: ``seed``, the input's
        content hash (``image_keys``, one per image) and the edit (``salt``). No image's noise depends on the batch
        it is in, its position there, the number of processes, or the last bits of a computed latent."""
        import torch

        return [
            torch.Generator(device=device).manual_seed(image_seed(self.seed, k, salt)) for k in image_keys
        ]


def image_seed(seed: int, image_key: str, salt: str) -> int:
    """The seed of one image's noise: 63 bits of SHA-256 over ``[seed, image_key, salt]`` (JSON)."""
    import hashlib
    import json

    digest = hashlib.sha256(json.dumps([int(seed), str(image_key), str(salt)]).encode("utf-8")).hexdigest()
    return int(digest[:16], 16) & ((1 << 63) - 1)


def resolve_t0(
    preset: Preset,
    *,
    requested: int | None = None,
    latent: int | None = None,
    models: Iterable[int | None] = (),
    edits: Iterable[int | None] = (),
) -> int:
    """The return step of a run, from its five possible sources in order: ``--t0``; the t0 a ``--latent`` was
    inverted to; the t0 the edit model(s) were fine-tuned at (when they agree); the named edit(s)' recommended t0
    (when they agree); the preset's default."""
    for value in (requested, latent):
        if value is not None:
            return int(value)
    for group in (models, edits):
        found = {int(v) for v in group if v is not None}
        if len(found) == 1:
            return found.pop()
    return preset.t0


def resolve_sampling(
    preset: Preset, sampling: Sampling, *, t0: int, inv_steps: int | None = None
) -> SamplingSettings:
    """Fill ``sampling``'s gaps from ``preset`` (``inv_steps``: the steps a latent was inverted with) and check it.

    Raises:
        InvalidScheduleError: t0 and a step count do not fit together.
        ConfigError: eta is outside [0, 1].
    """
    from dclip_cli.diffusion.schedule import validate_t0

    n_inv = sampling.inv_steps if sampling.inv_steps is not None else inv_steps
    settings = SamplingSettings(
        t0=t0,
        n_inv_steps=n_inv if n_inv is not None else preset.n_inv_steps,
        n_gen_steps=sampling.steps if sampling.steps is not None else preset.n_gen_steps,
        eta=float(sampling.eta),
        seed=int(sampling.seed),
    )
    validate_t0(settings.t0, settings.n_inv_steps)
    validate_t0(settings.t0, settings.n_gen_steps)
    if not math.isfinite(settings.eta) or not 0 <= settings.eta <= 1:
        raise ConfigError(
            f"--eta must be between 0 and 1, got {sampling.eta}.",
            hint="Use --eta 0 for deterministic DDIM (at most 1).",
        )
    return settings


def parse_metrics(text: str) -> tuple[str, ...] | None:
    """Parse ``--metrics``: ``auto`` (``None``: the free ones, best effort), ``all``, ``none`` or a comma list of
    ``clip,lpips,identity,psnr``."""
    value = text.strip().lower()
    if value in ("", "auto"):
        return None
    if value == "all":
        return ALL_METRICS
    if value == "none":
        return ()
    chosen = []
    for index, part in enumerate(p.strip() for p in value.split(",")):
        if part not in ALL_METRICS:
            raise ConfigError(
                f'--metrics item {index + 1} "{part}" is not a metric.',
                hint=f"Use auto, all, none, or a comma list of {', '.join(ALL_METRICS)}.",
            )
        if part not in chosen:
            chosen.append(part)
    return tuple(chosen)


def choose_metrics(
    requested: tuple[str, ...] | None,
    preset: Preset | None,
    *,
    reconstruction: bool,
    psnr_possible: bool = True,
) -> tuple[tuple[str, ...], bool]:
    """Which metrics a run computes, and whether each is required.

    Args:
        requested: :attr:`Outputs.metrics` (``None``: the default).
        preset: the run's preset (identity needs one with an identity model).
        reconstruction: whether the run computes the base reconstruction anyway (``--compare``, ``--sweep``).
        psnr_possible: whether the command has a reconstruction at all (``translate`` has none).

    Returns:
        ``(names, required)``: by default the metrics that cost no extra UNet call, best effort; asked for
        explicitly, a promise (``all`` meaning every metric that applies to the command and the preset).

    Raises:
        ConfigError: an explicitly requested metric does not apply (identity without an identity model, PSNR in a
            command without a reconstruction).
    """
    has_identity = preset is not None and bool(preset.identity_model)
    if requested is None:
        names = ["clip", "lpips"] + (["identity"] if has_identity else [])
        return tuple(names + (["psnr"] if reconstruction and psnr_possible else [])), False
    names = list(requested)
    if tuple(requested) == ALL_METRICS:
        names = [n for n in names if (n != "identity" or has_identity) and (n != "psnr" or psnr_possible)]
    if "identity" in names and not has_identity:
        where = f"the preset {preset.name!r} has none" if preset is not None else "no --domain was given"
        raise ConfigError(
            f"--metrics identity needs a preset with an identity network, and {where}.",
            hint="Drop identity from --metrics.",
        )
    if "psnr" in names and not psnr_possible:
        raise ConfigError(
            "--metrics psnr compares the reconstruction with the input, and this command makes no reconstruction.",
            hint="Drop psnr from --metrics.",
        )
    return tuple(names), True


def parse_sweep(text: str) -> list[float]:
    """Parse ``--sweep 0,0.25,0.5,0.75,1`` into strengths in [0, 1], in the given order.

    Raises:
        ConfigError: naming the value that is not a number, out of range or repeated.
    """
    hint = "Pass comma-separated strengths between 0 and 1, e.g. --sweep 0,0.25,0.5,0.75,1."
    parts = [p.strip() for p in text.split(",")]
    if not text.strip() or all(not p for p in parts):
        raise ConfigError("--sweep is empty.", hint=hint)
    values: list[float] = []
    for index, part in enumerate(parts, start=1):
        if not part:
            raise ConfigError(
                f"--sweep value {index} is empty (two commas in a row or a trailing comma).", hint=hint
            )
        try:
            value = float(part)
        except ValueError:
            raise ConfigError(f'--sweep value {index} "{part}" is not a number.', hint=hint) from None
        if not math.isfinite(value) or not 0.0 <= value <= 1.0:
            raise ConfigError(f"--sweep value {index} ({part}) is outside 0..1.", hint=hint)
        if value in values:
            raise ConfigError(f"--sweep value {index} ({part}) is listed twice.", hint=hint)
        values.append(value)
    return values


def check_strength(strength: float) -> float:
    """Return ``strength`` if it lies in [0, 1], else raise :class:`ConfigError`."""
    if not math.isfinite(strength) or not 0.0 <= strength <= 1.0:
        raise ConfigError(
            f"--strength must be between 0 and 1, got {strength}.",
            hint="0 reproduces the base model's reconstruction, 1 is the full edit.",
        )
    return float(strength)


def batches(items: Sequence[Any], size: int) -> list[Sequence[Any]]:
    """``items`` in consecutive chunks of ``size``."""
    return [items[i : i + size] for i in range(0, len(items), size)]
