"""Settings of one fine-tuning run (defaults: the README recipe of the original, reference section 8.6)."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from dclip_cli.diffusion.schedule import validate_t0
from dclip_cli.errors import ConfigError

if TYPE_CHECKING:
    from dclip_cli.presets.preset import Edit, Preset

FinetuneMode = Literal["original", "efficient"]
MODES: tuple[str, ...] = ("original", "efficient")


@dataclass(frozen=True)
class FinetuneConfig:
    """Settings of one fine-tuning run (defaults: the README recipe of the original, section 8.6).

    Args:
        t0: return step t₀ (1-999); training starts from latents inverted to t₀.
        n_inv_steps: points N of the inversion sequence that produced the latents (and their reconstructions).
        n_train_steps: points N of the training generative sequence (6 in the README recipe).
        n_gen_steps: points N of the generation sequence for previews (and for drawing samples).
        mode: ``"original"`` (backprop through the chain) or ``"efficient"`` (loss on x̂₀ at every step).
        epochs: passes over the training images; the learning rate is multiplied by ``lr_gamma`` after each.
        lr: Adam learning rate (the original's default is 2e-6; the README uses 8e-6).
        lr_gamma: StepLR factor applied once per epoch (1.3 in the original).
        clip_weight: weight of L_clip = -log((2 - L_dir)/2) (3 in the original).
        l1_weight: weight of mean |x0 - x|.
        id_weight: weight of the identity loss (needs an identity loss; 0 never builds the network).
        lpips_weight: weight of the LPIPS loss (needs an LPIPS loss).
        eta: DDIM η of the training (and preview) generation; 0 is deterministic.
        batch_size: images per optimizer batch (any size works; the original used 1).
        seed: seed of every random choice (η noise, drawn samples).
        precision: UNet compute precision, ``"fp32"`` (the original's numerics), ``"bf16"`` or ``"auto"`` (bf16
            where the device has it natively, else fp32; fp16 is refused for training). The DDIM update, the
            losses and the weights stay float32 (see :mod:`dclip_cli.precision`).
        checkpointing: gradient checkpointing of the UNet blocks, ``"auto"`` (on in the original mode), ``"on"``
            or ``"off"``: less memory for about a third more compute, identical gradients.
    """

    t0: int = 500
    n_inv_steps: int = 40
    n_train_steps: int = 6
    n_gen_steps: int = 40
    mode: FinetuneMode = "original"
    epochs: int = 1
    lr: float = 8e-6
    lr_gamma: float = 1.3
    clip_weight: float = 3.0
    l1_weight: float = 0.0
    id_weight: float = 0.0
    lpips_weight: float = 0.0
    eta: float = 0.0
    batch_size: int = 1
    seed: int = 0
    precision: str = "fp32"
    checkpointing: str = "auto"

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise :class:`~dclip_cli.errors.ConfigError` (or its subclass ``InvalidScheduleError``) on a bad value."""
        validate_t0(self.t0, self.n_inv_steps)
        validate_t0(self.t0, self.n_train_steps)
        validate_t0(self.t0, self.n_gen_steps)
        if self.mode not in MODES:
            raise ConfigError(
                f"Unknown fine-tuning mode {self.mode!r}.",
                hint="Use --mode original (backprop through all steps) or --mode efficient (less memory).",
            )
        if not _is_int(self.epochs) or self.epochs < 1:
            raise ConfigError(
                f"The number of epochs must be a positive integer, got {self.epochs!r}.",
                hint="Pass --epochs 1 or more.",
            )
        if not _is_int(self.batch_size) or self.batch_size < 1:
            raise ConfigError(
                f"The batch size must be a positive integer, got {self.batch_size!r}.",
                hint="Pass --batch-size 1 or more.",
            )
        if not _is_int(self.seed):
            raise ConfigError(f"The seed must be an integer, got {self.seed!r}.", hint="Pass --seed 0.")
        from dclip_cli.precision import CHECKPOINTING_CHOICES, PRECISIONS

        if self.precision not in PRECISIONS or self.precision == "fp16":
            raise ConfigError(
                f"Unknown fine-tuning precision {self.precision!r}.",
                hint="Use --precision auto, bf16 or fp32 (fp16 gradients underflow without loss scaling).",
            )
        if self.checkpointing not in CHECKPOINTING_CHOICES:
            raise ConfigError(
                f"Unknown checkpointing setting {self.checkpointing!r}.",
                hint="Use --checkpointing auto, on or off.",
            )
        if not _finite(self.lr) or self.lr <= 0:
            raise ConfigError(
                f"The learning rate must be a positive number, got {self.lr!r}.",
                hint="Use --lr 8e-6 (the README recipe) or 2e-6 (the original default).",
            )
        if not _finite(self.lr_gamma) or self.lr_gamma <= 0:
            raise ConfigError(
                f"The learning-rate factor per epoch must be positive, got {self.lr_gamma!r}.",
                hint="Use 1.3 (the original) or 1.0 for a constant learning rate.",
            )
        if not _finite(self.eta) or not 0 <= self.eta <= 1:
            raise ConfigError(
                f"eta must be a number between 0 and 1, got {self.eta!r}.",
                hint="Use --eta 0 for deterministic DDIM (at most 1).",
            )
        weights = self.loss_weights()
        for name, weight in weights.items():
            if not _finite(weight) or weight < 0:
                raise ConfigError(
                    f"The {name} loss weight must be a number >= 0, got {weight!r}.",
                    hint=f"Pass --{name}-weight 0 to switch the term off.",
                )
        if not any(w > 0 for w in weights.values()):
            raise ConfigError(
                "Every loss weight is 0, so there is nothing to train.",
                hint="Keep --clip-weight 3 (the default) or give another term a positive weight.",
            )

    def loss_weights(self) -> dict[str, float]:
        """Return ``{"clip": …, "l1": …, "id": …, "lpips": …}``."""
        return {
            "clip": self.clip_weight,
            "l1": self.l1_weight,
            "id": self.id_weight,
            "lpips": self.lpips_weight,
        }

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FinetuneConfig:
        """Build a config from a dict, ignoring unknown keys (artifacts of newer versions)."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})

    @classmethod
    def from_preset(cls, preset: Preset, edit: Edit | None = None, **overrides: Any) -> FinetuneConfig:
        """Defaults of ``preset`` (and the t₀ of ``edit`` when it has one), then ``overrides`` not ``None``."""
        values: dict[str, Any] = {
            "t0": preset.t0,
            "n_inv_steps": preset.n_inv_steps,
            "n_train_steps": preset.n_train_steps,
            "n_gen_steps": preset.n_gen_steps,
            "mode": preset.finetune_mode,
            "epochs": preset.epochs,
            "lr": preset.lr,
            "clip_weight": preset.clip_weight,
            "l1_weight": preset.l1_weight,
            "id_weight": preset.id_weight,
            "lpips_weight": preset.lpips_weight,
        }
        if edit is not None and edit.t0 is not None:
            values["t0"] = edit.t0
        unknown = set(overrides) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ConfigError(f"Unknown fine-tuning setting(s): {', '.join(sorted(unknown))}.")
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
