"""DiffusionCLIP fine-tuning: the original and the GPU-efficient loops (reference section 8).

Notation (``diffusionclip-reference.md`` sections 4, 8 and 9.5):

* ``x0``      -> x₀, the source images (B, 3, S, S) in [-1, 1]; they carry no gradient
* ``x_lat``   -> x_{t₀}, their deterministic DDIM inversions at the return step t₀
* ``pred_x0`` -> x̂₀ = f_θ(x_t, t), the one-step prediction of the clean image
* ``L_dir``   -> the directional CLIP loss, mean(1 - cos(ΔI, ΔT)) in [0, 2]
* ``L_clip``  -> -log((2 - L_dir) / 2), the training term (weighted by ``clip_weight``, 3 by default)

Two modes, as in the original (section 8.5):

* ``"original"`` (``--clip_finetune``): from x_lat, ``n_train_steps`` chained DDIM steps with autograd through the
  whole chain; the loss is computed on the final image; one backward and one optimizer step per batch.
* ``"efficient"`` (``--clip_finetune_eff``): at each of the ``n_train_steps`` timesteps one UNet call with
  gradient; the loss is computed on that step's x̂₀; backward and an optimizer step at every timestep, gradients
  set to ``None``, and the chain continues from the detached x_next. The identity term is computed on x̂₀ so that
  it has a gradient (parity FIX 3; the original used the detached x_next).

Both use Adam(lr, betas (0.9, 0.999), eps 1e-8, weight decay 0) and StepLR(step 1, gamma ``lr_gamma`` = 1.3) stepped
once per epoch, created fresh for each text pair (KEEP 10). Only the diffusion model's parameters are optimised; the
CLIP and identity networks are frozen (FIX 10). Batches > 1 work (FIX 7).

The lower half of the module is :func:`run_finetune`, the whole job behind ``dclip finetune`` (and the on-the-fly
fine-tuning of ``dclip edit``): load the base model, gather training images (photos and/or samples of the base
model), invert them with a content-keyed latent cache, train each text pair from the base, write per-epoch previews
and resumable state into a run folder, and save each result as an artifact.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import math
import os
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch
from torch import nn

from dclip_cli.diffusion.ddim import ddim_step, timestep_tensor
from dclip_cli.diffusion.schedule import alpha_bar, generation_pairs, validate_t0
from dclip_cli.errors import ConfigError
from dclip_cli.latents import tensor_sha256
from dclip_cli.precision import (
    optimize_model,
    precision_name,
    resolve_checkpointing,
    resolve_precision,
    set_gradient_checkpointing,
)

if TYPE_CHECKING:
    from dclip_cli.presets.preset import Edit, Preset

FinetuneMode = Literal["original", "efficient"]
MODES: tuple[str, ...] = ("original", "efficient")

StepInfo = dict[str, Any]
Callback = Callable[[StepInfo], None]
LossFn = Callable[..., torch.Tensor]


# --------------------------------------------------------------------------------------------------- config


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


# --------------------------------------------------------------------------------------------------- training


@dataclass
class TrainingState:
    """The state after a finished epoch, handed to ``on_epoch_end`` and accepted back as ``resume``.

    Args:
        epochs_done: number of finished epochs (1 after the first).
        model: the model being trained.
        optimizer: its Adam optimizer.
        scheduler: its StepLR scheduler (already stepped for the finished epoch).
        losses: mean of each loss term over the epoch's optimizer steps (floats; ``"total"`` included).
    """

    epochs_done: int
    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    losses: dict[str, float] = field(default_factory=dict)

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume: ``epochs_done``, ``losses``, ``model``, ``optimizer``, ``scheduler``."""
        return {
            "epochs_done": self.epochs_done,
            "losses": dict(self.losses),
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
        }


def _freeze(module: Any) -> None:
    """Switch off gradients of a loss network (FIX 10); callables that are not modules are left alone."""
    if isinstance(module, nn.Module):
        module.requires_grad_(False)
    # a loss object may also hold its network in an attribute instead of being the module itself
    for name in ("clip", "model", "net"):
        inner = getattr(module, name, None)
        if isinstance(inner, nn.Module):
            inner.requires_grad_(False)


def _model_device(model: nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


def _check_inputs(x0: torch.Tensor, x_lat: torch.Tensor, model: nn.Module) -> None:
    for name, x in (("x0", x0), ("x_lat", x_lat)):
        if not isinstance(x, torch.Tensor) or x.dim() != 4 or x.shape[1] != 3:
            shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ConfigError(f"{name} must be a tensor of shape (B, 3, S, S), got {shape}.")
    if x0.shape != x_lat.shape:
        raise ConfigError(
            f"The images (shape {tuple(x0.shape)}) and their latents (shape {tuple(x_lat.shape)}) differ in shape.",
            hint="Pass one inverted latent per training image.",
        )
    if x0.shape[0] == 0:
        raise ConfigError("There are no training images.", hint="Pass --images DIR or --samples N.")
    size = getattr(model, "image_size", None)
    if isinstance(size, int) and x0.shape[-1] != size:
        raise ConfigError(
            f"The training images are {x0.shape[-1]}x{x0.shape[-2]} but the model works at {size}x{size}.",
            hint="Prepare the images at the model's resolution.",
        )


def loss_terms(
    x0: torch.Tensor,
    x: torch.Tensor,
    *,
    src_text: str,
    trg_text: str,
    clip_loss: LossFn,
    config: FinetuneConfig,
    id_loss: LossFn | None = None,
    lpips_loss: LossFn | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The fine-tuning objective on generated images ``x`` (section 8.1, summed in float32).

    loss = clip_weight·(-log((2 - L_dir(x0, src, x, trg))/2)) + l1_weight·mean|x0 - x| + id_weight·mean(L_id(x0, x))
    + lpips_weight·mean(LPIPS(x0, x)); terms whose weight is 0 are skipped (except L_clip, always reported).

    Args:
        x0: (B, 3, S, S) source images in [-1, 1] (no gradient).
        x: (B, 3, S, S) generated images (final image or x̂₀) with gradient.

    Returns:
        ``(total, terms)``: the scalar loss and the unweighted terms by name (``clip``, ``l1``, ``id``, ``lpips``).
    """
    from dclip_cli.losses.clip import clip_term

    terms: dict[str, torch.Tensor] = {"clip": clip_term(clip_loss(x0, src_text, x, trg_text)).float()}
    if config.l1_weight > 0:
        terms["l1"] = (x0 - x).abs().mean().float()
    if config.id_weight > 0:
        assert id_loss is not None  # checked by finetune()
        terms["id"] = id_loss(x0, x).float().mean()
    if config.lpips_weight > 0:
        assert lpips_loss is not None
        terms["lpips"] = lpips_loss(x0, x).float().mean()
    weights = config.loss_weights()
    total = sum((weights[name] * value for name, value in terms.items()), torch.zeros((), device=x.device))
    return total, terms


def _floats(total: torch.Tensor, terms: Mapping[str, torch.Tensor]) -> dict[str, float]:
    out = {name: float(value.detach()) for name, value in terms.items()}
    out["total"] = float(total.detach())
    return out


def finetune(
    model: nn.Module,
    x0: torch.Tensor,
    x_lat: torch.Tensor,
    *,
    src_text: str,
    trg_text: str,
    clip_loss: LossFn,
    config: FinetuneConfig,
    id_loss: LossFn | None = None,
    lpips_loss: LossFn | None = None,
    callback: Callback | None = None,
    should_stop: Callable[[], bool] | None = None,
    on_epoch_end: Callable[[TrainingState], None] | None = None,
    resume: Mapping[str, Any] | None = None,
) -> nn.Module:
    """Fine-tune a copy of ``model`` so that generating from ``x_lat`` moves ``x0`` from ``src_text`` to ``trg_text``.

    The base ``model`` is not modified: a deep copy is trained and returned (in eval mode). Images are visited in
    order, ``config.batch_size`` at a time, once per epoch.

    Args:
        model: the base eps-model (a :class:`~dclip_cli.models.DiffusionModel`); its parameters are optimised.
        x0: (N, 3, S, S) training images in [-1, 1] (on any device; moved per batch).
        x_lat: (N, 3, S, S) their DDIM inversions at ``config.t0``.
        src_text: source text of the directional loss (``"face"``).
        trg_text: target text (``"angry face"``).
        clip_loss: ``clip_loss(x_src, src_text, x_gen, trg_text) -> L_dir`` (a
            :class:`~dclip_cli.losses.clip.DirectionalCLIPLoss`); frozen here.
        config: the settings.
        id_loss: ``id_loss(x0, x) -> (B,) or scalar`` distance, required when ``config.id_weight > 0``.
        lpips_loss: ``lpips_loss(x0, x)``, required when ``config.lpips_weight > 0``.
        callback: called with a dict per UNet call: ``epoch``, ``epochs`` (0-based index and count), ``batch``,
            ``batches``, ``image`` (index of the batch's first image), ``images``, ``batch_size`` (images in this
            batch), ``step``, ``steps`` (1-based index into the ``n_train_steps`` timesteps), ``t``, ``t_next``,
            ``optimizer_step`` (whether the parameters were just updated), ``losses`` (floats by term, plus
            ``total``; ``None`` for the forward steps of the original mode before its loss) and ``lr``. It may
            raise ``KeyboardInterrupt`` to stop.
        should_stop: polled after every optimizer step; returning True raises ``KeyboardInterrupt``.
        on_epoch_end: called with a :class:`TrainingState` after each finished epoch (used to save resumable
            state); the scheduler has already been stepped.
        resume: a :meth:`TrainingState.state_dict` to continue from (its finished epochs are skipped).

    Returns:
        The fine-tuned copy of ``model``, in eval mode, on the model's device.

    Raises:
        ConfigError: the inputs do not fit, or a weighted loss has no loss function.
        KeyboardInterrupt: from ``callback`` or ``should_stop``; nothing is written by this function.
    """
    if config.id_weight > 0 and id_loss is None:
        raise ConfigError(
            "The identity loss weight is positive but no identity loss was given.",
            hint="Set the identity weight to 0, or use a preset with an identity model.",
        )
    if config.lpips_weight > 0 and lpips_loss is None:
        raise ConfigError(
            "The LPIPS loss weight is positive but no LPIPS loss was given.", hint="Set --lpips-weight 0."
        )
    _check_inputs(x0, x_lat, model)
    for loss_fn in (clip_loss, id_loss, lpips_loss):
        if loss_fn is not None:
            _freeze(loss_fn)

    tuned = copy.deepcopy(model)
    tuned.requires_grad_(True)
    params = [p for p in tuned.parameters() if p.requires_grad]
    # KEEP 10: Adam(betas 0.9/0.999, eps 1e-8, wd 0) + StepLR(step 1, gamma 1.3), fresh for each text pair
    optimizer = torch.optim.Adam(params, lr=config.lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=config.lr_gamma)
    start_epoch = 0
    if resume is not None:
        tuned.load_state_dict(resume["model"])
        optimizer.load_state_dict(resume["optimizer"])
        scheduler.load_state_dict(resume["scheduler"])
        start_epoch = int(resume["epochs_done"])

    device = _model_device(tuned)
    # speed and memory (issue 6): the UNet may run under autocast (weights, optimizer state, DDIM update and
    # losses stay float32) and recompute its activations in the backward pass instead of keeping them
    dtype = resolve_precision(config.precision, device, training=True)
    runner: nn.Module = tuned if dtype is None else optimize_model(tuned, precision=dtype, training=True)
    checkpointing = resolve_checkpointing(config.checkpointing, mode=config.mode)
    set_gradient_checkpointing(tuned, checkpointing)
    pairs = generation_pairs(config.t0, config.n_train_steps)  # [(t0, t_{N-2}), …, (t_1, 0), (0, -1)]
    n_images = x0.shape[0]
    batches = math.ceil(n_images / config.batch_size)
    step_fn = _original_batch if config.mode == "original" else _efficient_batch

    reporter = _Reporter(optimizer, callback, should_stop)
    with torch.enable_grad():
        for epoch in range(start_epoch, config.epochs):
            # a generator per epoch keeps η > 0 runs reproducible across --resume
            generator = None
            if config.eta > 0:
                generator = torch.Generator(device=device).manual_seed(config.seed + epoch)
            reporter.start_epoch()
            for batch in range(batches):
                start = batch * config.batch_size
                x0_b = x0[start : start + config.batch_size].to(device=device, dtype=torch.float32)
                x_lat_b = x_lat[start : start + config.batch_size].to(device=device, dtype=torch.float32)
                reporter.base = {
                    "epoch": epoch,
                    "epochs": config.epochs,
                    "batch": batch,
                    "batches": batches,
                    "image": start,
                    "images": n_images,
                    "batch_size": x0_b.shape[0],
                    "steps": len(pairs),
                }
                step_fn(
                    runner,
                    optimizer,
                    params,
                    x0_b,
                    x_lat_b,
                    pairs,
                    config=config,
                    generator=generator,
                    report=reporter,
                    src_text=src_text,
                    trg_text=trg_text,
                    clip_loss=clip_loss,
                    id_loss=id_loss,
                    lpips_loss=lpips_loss,
                )
            scheduler.step()  # once per epoch (section 8.1)
            if on_epoch_end is not None:
                on_epoch_end(TrainingState(epoch + 1, tuned, optimizer, scheduler, reporter.means()))

    for p in params:
        p.grad = None
    set_gradient_checkpointing(tuned, False)
    tuned.eval()
    return tuned


class _Reporter:
    """Forwards per-step info to the callback, polls ``should_stop`` and averages the losses of an epoch."""

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        callback: Callback | None,
        should_stop: Callable[[], bool] | None,
    ) -> None:
        self.optimizer = optimizer
        self.callback = callback
        self.should_stop = should_stop
        self.base: StepInfo = {}
        self.sums: dict[str, float] = {}
        self.count = 0

    def start_epoch(self) -> None:
        self.sums, self.count = {}, 0

    def means(self) -> dict[str, float]:
        return {k: v / max(self.count, 1) for k, v in self.sums.items()}

    def __call__(self, info: StepInfo) -> None:
        losses = info.get("losses")
        if losses is not None:
            self.count += 1
            for k, v in losses.items():
                self.sums[k] = self.sums.get(k, 0.0) + v
        if self.callback is not None:
            self.callback({**self.base, **info, "lr": self.optimizer.param_groups[0]["lr"]})
        if info["optimizer_step"] and self.should_stop is not None and self.should_stop():
            raise KeyboardInterrupt("fine-tuning stopped by should_stop")


def _unet_step(
    model: nn.Module, x: torch.Tensor, t: int, t_next: int, eta: float, generator: torch.Generator | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """One generative DDIM step (t -> t_next) with the shared :func:`~dclip_cli.diffusion.ddim.ddim_step`."""
    eps = model(x, timestep_tensor(t, x))
    return ddim_step(
        x, eps, alpha_bar(t, x.device), alpha_bar(t_next, x.device), eta=eta, generator=generator
    )


def _original_batch(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    params: Sequence[nn.Parameter],
    x0: torch.Tensor,
    x_lat: torch.Tensor,
    pairs: Sequence[tuple[int, int]],
    *,
    config: FinetuneConfig,
    generator: torch.Generator | None,
    report: Callable[[StepInfo], None],
    **losses: Any,
) -> None:
    """Original mode (section 8.3): autograd through all chained steps, loss on the final x, one update."""
    # 1. train mode, zero the gradients, x = x_lat
    model.train()
    optimizer.zero_grad(set_to_none=True)
    x = x_lat.clone()
    # 2. the n_train_steps generative steps with the graph kept through the whole chain
    for step, (t, t_next) in enumerate(pairs, start=1):
        x, _ = _unet_step(model, x, t, t_next, config.eta, generator)
        if step < len(pairs):
            report({"step": step, "t": t, "t_next": t_next, "optimizer_step": False, "losses": None})
    # 3. loss on the final x; 4. one backward and one optimizer step per batch
    total, terms = loss_terms(x0, x, config=config, **losses)
    total.backward()
    optimizer.step()
    t, t_next = pairs[-1]
    report(
        {
            "step": len(pairs),
            "t": t,
            "t_next": t_next,
            "optimizer_step": True,
            "losses": _floats(total, terms),
        }
    )


def _efficient_batch(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    params: Sequence[nn.Parameter],
    x0: torch.Tensor,
    x_lat: torch.Tensor,
    pairs: Sequence[tuple[int, int]],
    *,
    config: FinetuneConfig,
    generator: torch.Generator | None,
    report: Callable[[StepInfo], None],
    **losses: Any,
) -> None:
    """GPU-efficient mode (section 8.4): a loss on x̂₀ and an optimizer step at every timestep."""
    # 1. train mode, zero the gradients once, x = x_lat
    model.train()
    optimizer.zero_grad(set_to_none=True)
    x = x_lat.clone()
    for step, (t, t_next) in enumerate(pairs, start=1):
        # 2.1 one DDIM step with gradient; 2.2 continue from the detached x_next
        x_next, pred_x0 = _unet_step(model, x, t, t_next, config.eta, generator)
        x = x_next.detach().clone()
        # 2.3-2.6 the loss on this step's x̂₀ (the ID term too: FIX 3)
        total, terms = loss_terms(x0, pred_x0, config=config, **losses)
        # 2.7 backward, optimizer step, gradients set to None
        total.backward()
        optimizer.step()
        for p in params:
            p.grad = None
        report(
            {"step": step, "t": t, "t_next": t_next, "optimizer_step": True, "losses": _floats(total, terms)}
        )


# --------------------------------------------------------------------------------------------------- the whole job

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff", ".gif")
DEFAULT_CLIP_MODEL = "ViT-B/16"
STATE_FILE = "state.pt"
RUN_FILE = "run.json"
PREVIEWS = "previews"

Event = dict[str, Any]
EventCallback = Callable[[Event], None]


@dataclass(frozen=True)
class TextPair:
    """One edit to train: a (source, target) text pair and the name its artifact is stored under.

    Args:
        key: artifact name inside the preset (``angry``, ``gothic_church``): letters, digits, ``._-``.
        src_text: source text of the directional loss.
        trg_text: target text.
        t0: the edit's recommended t₀ (from a named edit with an official model), used unless t₀ is given.
    """

    key: str
    src_text: str
    trg_text: str
    t0: int | None = None


def slugify(text: str) -> str:
    """A file-name key for a free-text target: ``"Gothic church!"`` -> ``gothic_church``."""
    slug = re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")[:60].strip("_")
    return slug or "edit_" + hashlib.sha256(text.encode("utf-8")).hexdigest()[:8]


def resolve_pairs(
    preset: Preset,
    *,
    edits: Sequence[str] = (),
    texts: Sequence[str] = (),
    src_text: str | None = None,
    pairs: Sequence[tuple[str, str]] = (),
) -> list[TextPair]:
    """Turn named edits, free target texts and explicit pairs into :class:`TextPair` records, in that order.

    Free texts use ``src_text`` or else the preset's ``source_text``. Duplicate keys get ``-2``, ``-3`` suffixes.

    Raises:
        UnknownEditError: a named edit is not in the preset.
        ConfigError: nothing to train, or an empty text.
    """
    out: list[TextPair] = []
    for key in edits:
        edit = preset.edit(key)
        out.append(TextPair(edit.key, edit.src, edit.trg, edit.t0))
    source = src_text if src_text is not None else preset.source_text
    for trg in texts:
        out.append(TextPair(slugify(trg), source, trg))
    for src, trg in pairs:
        out.append(TextPair(slugify(trg), src, trg))
    if not out:
        raise ConfigError(
            "Nothing to fine-tune: no edit or target text was given.",
            hint="Pass --text 'target description', --edit KEY, or --src/--trg.",
        )
    seen: dict[str, int] = {}
    unique = []
    for pair in out:
        if not pair.src_text.strip() or not pair.trg_text.strip():
            raise ConfigError(
                f"The edit {pair.key!r} has an empty source or target text.", hint="Pass non-empty texts."
            )
        n = seen.get(pair.key, 0) + 1
        seen[pair.key] = n
        unique.append(pair if n == 1 else dataclasses.replace(pair, key=f"{pair.key}-{n}"))
    return unique


def list_images(source: str | os.PathLike[str] | Sequence[str | os.PathLike[str]]) -> list[Path]:
    """The image files of a folder (sorted, not recursive) or an explicit list of files.

    Raises:
        ImageError: the folder does not exist or holds no image.
    """
    from dclip_cli.errors import ImageError

    items = [source] if isinstance(source, (str, os.PathLike)) else list(source)
    files: list[Path] = []
    for item in items:
        p = Path(item).expanduser()
        if p.is_dir():
            files.extend(sorted(f for f in p.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES))
        elif p.is_file():
            files.append(p)
        else:
            raise ImageError(f"{p} does not exist.", hint="Pass --images with a folder of training photos.")
    if not files:
        raise ImageError(
            f"No image files were found in {', '.join(str(i) for i in items)}.",
            hint=f"Put {', '.join(IMAGE_SUFFIXES[:4])} files in the folder.",
        )
    return files


@dataclass
class TrainingData:
    """Training (or preview) images with their inversions.

    Args:
        x0: (N, 3, S, S) images in [-1, 1] (CPU).
        x_lat: (N, 3, S, S) DDIM inversions at t₀ (CPU).
        x_rec: (N, 3, S, S) reconstructions from ``x_lat`` (CPU).
        keys: content key of each image (image hash) used by the latent cache and the run fingerprint.
        cache_hits: how many inversions came from the cache.
    """

    x0: torch.Tensor
    x_lat: torch.Tensor
    x_rec: torch.Tensor
    keys: list[str]
    cache_hits: int = 0


@dataclass
class PairResult:
    """The outcome of training one text pair.

    Args:
        pair: the pair.
        config: the settings used.
        artifacts: files written (library and/or ``output``).
        run_dir: the run folder (previews, ``run.json``).
        losses: mean loss terms of the last epoch (``clip``, ``l1``, …, ``total``).
        seconds: wall-clock time of this pair.
        previews: preview images written.
        resumed_from: epochs skipped because ``resume`` found them finished.
        model: the fine-tuned model when ``return_models`` was set, else ``None``.
    """

    pair: TextPair
    config: FinetuneConfig
    artifacts: list[Path]
    run_dir: Path
    losses: dict[str, float]
    seconds: float
    previews: list[Path] = field(default_factory=list)
    resumed_from: int = 0
    model: nn.Module | None = None


@dataclass
class FinetuneResult:
    """The outcome of :func:`run_finetune`.

    Args:
        preset: preset name.
        base_checkpoint: name of the base checkpoint (registry name or file name).
        base_sha256: its SHA-256.
        pairs: one :class:`PairResult` per trained pair.
        n_images: training images per pair.
        cache_hits: inversions taken from the latent cache (training and preview images, all pairs).
        cache_misses: inversions computed.
        seconds: total wall-clock time.
    """

    preset: str
    base_checkpoint: str
    base_sha256: str
    pairs: list[PairResult]
    n_images: int
    cache_hits: int
    cache_misses: int
    seconds: float

    @property
    def artifacts(self) -> list[Path]:
        return [p for r in self.pairs for p in r.artifacts]


def _emit(callback: EventCallback | None, kind: str, **fields: Any) -> None:
    if callback is not None:
        callback({"kind": kind, **fields})


def load_base_model(
    preset: Preset,
    *,
    checkpoint: str | os.PathLike[str] | None = None,
    device: torch.device | None = None,
    callback: EventCallback | None = None,
) -> tuple[nn.Module, str, str]:
    """Fetch (or take ``checkpoint``) and load the preset's base model.

    Returns:
        ``(model, name, sha256)``: the eval-mode model on ``device``, the registry (or file) name and the file's
        SHA-256 (from the cache's sidecar when it has one).
    """
    from dclip_cli.checkpoints import cache
    from dclip_cli.manifest import file_sha256
    from dclip_cli.models import load_diffusion_model

    if checkpoint is not None:
        path = Path(checkpoint).expanduser()
        name = path.name
    else:
        from dclip_cli.checkpoints import download

        name = preset.checkpoint

        def on_progress(done: int, total: int | None) -> None:
            _emit(callback, "download", name=name, done=done, total=total)

        path = Path(download.fetch(name, on_progress=on_progress))
    _emit(callback, "status", message=f"Loading the base model {name}")
    model = load_diffusion_model(path, arch=preset.arch, config=preset.arch_config, device=device)
    meta = cache.read_meta(path)
    sha = meta.sha256 if meta is not None and meta.size == path.stat().st_size else file_sha256(path)
    return model, name, sha


def load_training_images(
    files: Sequence[Path], preset: Preset, *, callback: EventCallback | None = None
) -> tuple[torch.Tensor, list[str]]:
    """Load and prepare photos like edit inputs (the preset's aligner or a centre crop, resized to S).

    Returns:
        ``(x0, keys)``: (N, 3, S, S) in [-1, 1] and a content key per image.
    """
    from dclip_cli.images import load_and_prepare
    from dclip_cli.presets.manager import get_registry

    aligner = None
    if preset.preprocess == "align" and preset.aligner:
        aligner = get_registry().aligners.get(preset.aligner)
        if aligner is None:
            _emit(
                callback,
                "warning",
                message=f"The aligner {preset.aligner!r} is not installed; using centre crops.",
            )
    images, keys = [], []
    for i, path in enumerate(files):
        x, info = load_and_prepare(path, preset.image_size, aligner=aligner)
        for message in info.get("warnings", []):
            _emit(callback, "warning", message=message)
        images.append(x)
        keys.append(tensor_sha256(x))  # (1, 3, S, S): the same key dclip edit uses for this image
        _emit(callback, "progress", phase="load", done=i + 1, total=len(files))
    return torch.cat(images), keys


@torch.no_grad()
def draw_samples(
    model: nn.Module,
    n: int,
    *,
    seed: int,
    n_steps: int,
    batch_size: int = 4,
    callback: EventCallback | None = None,
) -> torch.Tensor:
    """Draw ``n`` images from the base model by DDIM (η = 0) from seeded Gaussian noise at t = 999.

    The noise is drawn on the CPU from ``torch.Generator().manual_seed(seed)``, so the samples do not depend on
    the device or the batch size (up to floating-point differences).

    Returns:
        (n, 3, S, S) images clamped to [-1, 1], on the CPU.
    """
    from dclip_cli.diffusion.ddim import generate
    from dclip_cli.diffusion.schedule import NUM_TIMESTEPS

    size = int(getattr(model, "image_size", 256))
    device = _model_device(model)
    noise = torch.randn((n, 3, size, size), generator=torch.Generator().manual_seed(seed))
    out = []
    model.eval()
    for start in range(0, n, batch_size):
        x_t = noise[start : start + batch_size].to(device)
        x0 = generate(model, x_t, t0=NUM_TIMESTEPS - 1, n_steps=n_steps)
        out.append(x0.clamp(-1, 1).cpu())
        _emit(callback, "progress", phase="sample", done=min(start + batch_size, n), total=n)
    return torch.cat(out) if out else noise[:0]


def cached_samples(
    model: nn.Module,
    n: int,
    *,
    model_sha256: str,
    seed: int,
    n_steps: int,
    batch_size: int = 4,
    cache_root: str | os.PathLike[str] | None = None,
    callback: EventCallback | None = None,
) -> torch.Tensor:
    """:func:`draw_samples`, stored in ``<cache_dir>/samples`` keyed by model SHA-256, seed, steps and count.

    A repeated or resumed run then skips the sampling (n_steps model calls per image).
    """
    from safetensors.torch import load_file, save_file

    from dclip_cli.fileio import atomic_path

    if cache_root is None:
        from dclip_cli.checkpoints.cache import cache_dir

        cache_root = cache_dir() / "samples"
    path = Path(cache_root) / f"{model_sha256[:16]}_seed{seed}_steps{n_steps}_n{n}.safetensors"
    if path.is_file():
        try:
            x = load_file(str(path))["x0"]
            if x.shape[0] == n:
                _emit(callback, "progress", phase="sample", done=n, total=n)
                return x
        except Exception:  # noqa: BLE001 - an unreadable entry is a miss
            pass
    _emit(callback, "status", message=f"Drawing {n} sample(s) from the base model")
    x = draw_samples(model, n, seed=seed, n_steps=n_steps, batch_size=batch_size, callback=callback)
    with atomic_path(path, overwrite=True) as tmp:
        save_file(
            {"x0": x.contiguous()}, str(tmp), metadata={"model_sha256": model_sha256, "seed": str(seed)}
        )
    return x


def invert_training_images(
    model: nn.Module,
    x0: torch.Tensor,
    keys: Sequence[str],
    *,
    model_sha256: str,
    t0: int,
    n_inv_steps: int,
    cache_root: str | os.PathLike[str] | None = None,
    batch_size: int = 4,
    callback: EventCallback | None = None,
) -> TrainingData:
    """Invert images to t₀ and reconstruct them, reusing the content-keyed latent cache (FIX 12).

    For each image not in the cache: x_lat = DDIM inversion with ``n_inv_steps`` points, x_rec = generation from
    x_lat with the same sequence (η = 0), as the original's precompute stage (section 8.2); both are stored under
    the key (image content, model SHA-256, t₀, steps).

    Args:
        model: the base model (inversion always uses it).
        x0: (N, 3, S, S) images in [-1, 1].
        keys: a content key per image.
        model_sha256: SHA-256 of the model's checkpoint file.
        cache_root: latent cache folder; default ``<cache_dir>/latents``.

    Returns:
        :class:`TrainingData` on the CPU.
    """
    from dclip_cli.diffusion.ddim import generate, invert
    from dclip_cli.latents import LatentCache

    if cache_root is None:
        from dclip_cli.checkpoints.cache import cache_dir

        cache_root = cache_dir() / "latents"
    cache = LatentCache(cache_root)
    n = x0.shape[0]
    x_lat: list[torch.Tensor | None] = [None] * n
    x_rec: list[torch.Tensor | None] = [None] * n
    hits = 0
    for i, key in enumerate(keys):
        found = cache.get(key, model_sha256, t0, n_inv_steps)
        if found is not None:
            x_lat[i], x_rec[i] = found
            hits += 1
    todo = [i for i in range(n) if x_lat[i] is None]
    device = _model_device(model)
    model.eval()
    done = hits
    _emit(callback, "progress", phase="invert", done=done, total=n)
    for start in range(0, len(todo), batch_size):
        idx = todo[start : start + batch_size]
        batch = x0[idx].to(device)
        with torch.no_grad():
            lat = invert(model, batch, t0=t0, n_steps=n_inv_steps)
            rec = generate(model, lat, t0=t0, n_steps=n_inv_steps)
        for j, i in enumerate(idx):
            lat_i, rec_i = lat[j : j + 1].cpu(), rec[j : j + 1].cpu()
            cache.put(keys[i], model_sha256, t0, n_inv_steps, lat_i, rec_i)
            x_lat[i], x_rec[i] = lat_i, rec_i
        done += len(idx)
        _emit(callback, "progress", phase="invert", done=done, total=n)
    return TrainingData(
        x0=x0.cpu(),
        x_lat=torch.cat([t for t in x_lat if t is not None]) if n else x0[:0],
        x_rec=torch.cat([t for t in x_rec if t is not None]) if n else x0[:0],
        keys=list(keys),
        cache_hits=hits,
    )


def run_fingerprint(
    *, preset: str, base_sha256: str, pair: TextPair, config: FinetuneConfig, image_keys: Sequence[str]
) -> str:
    """A hash of everything that determines a run except the number of epochs (so ``--resume`` can extend one)."""
    settings = {k: v for k, v in config.to_dict().items() if k not in ("epochs", "n_gen_steps")}
    doc = {
        "preset": preset,
        "base_sha256": base_sha256,
        "src_text": pair.src_text,
        "trg_text": pair.trg_text,
        "settings": settings,
        "images": list(image_keys),
    }
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode("utf-8")).hexdigest()


def default_run_dir(preset: str, pair: TextPair, fingerprint: str) -> Path:
    """``<data_dir>/runs/<preset>-<key>-<fingerprint[:10]>``."""
    from dclip_cli.checkpoints.cache import data_dir

    return data_dir() / "runs" / f"{preset}-{pair.key}-{fingerprint[:10]}"


def artifact_metadata(
    *,
    preset: str,
    pair: TextPair,
    config: FinetuneConfig,
    base_checkpoint: str,
    base_sha256: str,
    clip_model: str,
    n_images: int,
    model: nn.Module | None = None,
) -> dict[str, Any]:
    """The provenance stored in an artifact (see :mod:`dclip_cli.artifacts`)."""
    meta: dict[str, Any] = {
        "preset": preset,
        "edit": pair.key,
        "base_checkpoint": base_checkpoint,
        "base_sha256": base_sha256,
        "src_text": pair.src_text,
        "trg_text": pair.trg_text,
        "t0": config.t0,
        "n_inv_steps": config.n_inv_steps,
        "n_train_steps": config.n_train_steps,
        "n_gen_steps": config.n_gen_steps,
        "mode": config.mode,
        "loss_weights": config.loss_weights(),
        "lr": config.lr,
        "lr_gamma": config.lr_gamma,
        "epochs": config.epochs,
        "batch_size": config.batch_size,
        "eta": config.eta,
        "seed": config.seed,
        "precision": config.precision,
        "checkpointing": config.checkpointing,
        "clip_model": clip_model,
        "n_train_images": n_images,
    }
    if model is not None:
        meta["arch"] = getattr(model, "arch", None)
        meta["arch_config"] = getattr(model, "config", None)
    return meta


def artifact_destinations(
    preset: str,
    pairs: Sequence[TextPair],
    configs: Sequence[FinetuneConfig],
    *,
    output: str | os.PathLike[str] | None,
    library: bool,
) -> list[list[tuple[Path, str | None]]]:
    """Where each pair's artifact goes: ``<library>/<preset>/<key>.safetensors`` and/or under ``output``.

    ``output`` ending in ``.safetensors`` is the file itself (one pair only); otherwise it is a folder that gets
    ``<preset>_<key>_t<t0>.safetensors`` (the ``_t{t0}`` part follows the official naming).

    Returns:
        Per pair, ``(path, library_name)`` tuples; ``library_name`` (``<preset>/<key>``) for library entries.

    Raises:
        ConfigError: a ``.safetensors`` output with several pairs, or neither library nor output.
    """
    from dclip_cli.checkpoints.cache import library_path

    if output is None and not library:
        raise ConfigError(
            "The fine-tuned model would not be saved anywhere.", hint="Pass -o PATH or --library."
        )
    out = Path(output).expanduser() if output is not None else None
    if out is not None and out.suffix == ".safetensors" and len(pairs) > 1:
        raise ConfigError(
            f"-o {out} names one file but {len(pairs)} edits are trained.",
            hint="Pass a folder with -o when training several edits.",
        )
    if out is not None and out.suffix and out.suffix != ".safetensors" and not out.is_dir():
        raise ConfigError(
            f"-o {out} must be a folder or a .safetensors file.",
            hint="Fine-tuned models are saved as .safetensors.",
        )
    dests = []
    for pair, config in zip(pairs, configs, strict=True):
        paths: list[tuple[Path, str | None]] = []
        if library:
            name = f"{preset}/{pair.key}"
            paths.append((library_path(name), name))
        if out is not None:
            file = (
                out if out.suffix == ".safetensors" else out / f"{preset}_{pair.key}_t{config.t0}.safetensors"
            )
            paths.append((file, None))
        dests.append(paths)
    return dests


def _save_preview(
    model: nn.Module,
    preview: TrainingData,
    config: FinetuneConfig,
    dest: Path,
    label: str,
) -> Path:
    from dclip_cli.diffusion.ddim import generate
    from dclip_cli.images import image_grid, save_image

    device = _model_device(model)
    was_training = model.training
    model.eval()
    generator = torch.Generator(device=device).manual_seed(config.seed) if config.eta > 0 else None
    with torch.no_grad():
        x = generate(
            model,
            preview.x_lat.to(device),
            t0=config.t0,
            n_steps=config.n_gen_steps,
            eta=config.eta,
            generator=generator,
        ).cpu()
    model.train(was_training)
    n = preview.x0.shape[0]
    grid = image_grid([preview.x0, x], labels=["source"] * n + [label] * n, cols=n)
    return save_image(grid, dest, overwrite=True)


def run_finetune(
    preset: Preset | str,
    *,
    edits: Sequence[str] = (),
    texts: Sequence[str] = (),
    src_text: str | None = None,
    pairs: Sequence[tuple[str, str]] = (),
    images: str | os.PathLike[str] | Sequence[str | os.PathLike[str]] | None = None,
    n_samples: int | None = None,
    config: FinetuneConfig | None = None,
    overrides: Mapping[str, Any] | None = None,
    checkpoint: str | os.PathLike[str] | None = None,
    base_model: nn.Module | None = None,
    base_checkpoint: str | None = None,
    base_sha256: str | None = None,
    clip_model: str = DEFAULT_CLIP_MODEL,
    clip_loss: LossFn | None = None,
    device: str | torch.device | None = None,
    output: str | os.PathLike[str] | None = None,
    library: bool | None = None,
    save_dtype: str = "fp32",
    overwrite: bool = False,
    run_dir: str | os.PathLike[str] | None = None,
    resume: bool = False,
    n_preview: int = 4,
    return_models: bool = False,
    callback: EventCallback | None = None,
) -> FinetuneResult:
    """Fine-tune one or more edits of a preset from its base model and save each as an artifact.

    Steps: load the base model (``download.fetch`` of the preset's checkpoint, or ``checkpoint``, or
    ``base_model``); gather the training images (``images``: photos prepared like edit inputs; ``n_samples``: drawn
    from the base model by DDIM from seeded noise; default: ``preset.n_train_images`` samples when no photos are
    given); invert them with the latent cache; load CLIP (and the identity / LPIPS losses only when weighted); then
    for each pair, starting from the base each time: :func:`finetune`, with per-epoch previews on ``n_preview``
    held-out samples and resumable state in the run folder, and the artifact saved atomically.

    Args:
        preset: a :class:`~dclip_cli.presets.preset.Preset` or its name.
        edits: named edits of the preset (their source/target texts and t₀).
        texts: free target texts, with ``src_text`` or the preset's ``source_text`` as the source.
        src_text: source text for ``texts``.
        pairs: explicit (source, target) pairs.
        images: a folder of photos, or image files.
        n_samples: number of images to draw from the base model.
        config: settings for every pair (else the preset's defaults, a named edit's t₀ and ``overrides``).
        overrides: :class:`FinetuneConfig` fields to set over the preset's defaults (``None`` values ignored).
        checkpoint: local base checkpoint file instead of the preset's.
        base_model: an already loaded base model (then give ``base_checkpoint`` and ``base_sha256`` too).
        base_checkpoint: name of that base, for the artifact metadata.
        base_sha256: SHA-256 of that base's file.
        clip_model: CLIP name or file for :func:`~dclip_cli.losses.clip.load_clip` (default ViT-B/16).
        clip_loss: an already built directional loss (then ``clip_model`` only labels the metadata).
        device: ``auto``, ``cpu``, ``cuda``, ... (default auto).
        output: a ``.safetensors`` file (one pair) or a folder for the artifacts.
        library: also save into the edit library as ``<preset>/<key>``; default: only when ``output`` is None.
        save_dtype: ``fp32``, ``fp16`` or ``bf16``.
        overwrite: replace existing artifacts.
        run_dir: run folder (one sub-folder per pair when several); default ``<data_dir>/runs/<preset>-<key>-<hash>``.
        resume: continue from the last finished epoch saved in the run folder.
        n_preview: held-out samples previewed after each epoch (0: none).
        return_models: keep each fine-tuned model in its :class:`PairResult`.
        callback: receives event dicts with a ``kind``: ``status`` (``message``), ``warning`` (``message``),
            ``download`` (``name``, ``done``, ``total``), ``progress`` (``phase`` load/sample/invert, ``done``,
            ``total``), ``pair_start`` (``pair``, ``index``, ``pairs``, ``config``, ``run_dir``, ``start_epoch``),
            ``step`` (the :func:`finetune` step info plus ``index``), ``epoch_end`` (``index``, ``epoch``,
            ``epochs``, ``losses``, ``preview``) and ``pair_end`` (``index``, ``result``). It may raise
            ``KeyboardInterrupt``: no artifact or temporary file is left (finished epochs stay resumable).

    Returns:
        A :class:`FinetuneResult`.

    Raises:
        ConfigError, UnknownEditError, ImageError, CheckpointError, OutputExistsError: as their names say; output
        clashes are detected before any work starts.
    """
    from dclip_cli.device import resolve_device
    from dclip_cli.errors import OutputExistsError
    from dclip_cli.presets.manager import get_registry

    started = time.perf_counter()
    if isinstance(preset, str):
        preset = get_registry().preset(preset)
    text_pairs = resolve_pairs(preset, edits=edits, texts=texts, src_text=src_text, pairs=pairs)
    extra = {k: v for k, v in (overrides or {}).items() if v is not None}
    configs = []
    for pair in text_pairs:
        if config is not None:
            configs.append(config)
            continue
        values = dict(extra)
        if pair.t0 is not None and "t0" not in values:
            values["t0"] = pair.t0
        configs.append(FinetuneConfig.from_preset(preset, **values))
    if n_preview < 0:
        raise ConfigError(f"The number of preview images must be >= 0, got {n_preview}.")
    if n_samples is not None and n_samples < 0:
        raise ConfigError(f"The number of samples must be >= 0, got {n_samples}.", hint="Pass --samples 8.")

    files = list_images(images) if images is not None else []
    if n_samples is None:
        n_samples = 0 if files else preset.n_train_images
    if not files and n_samples == 0:
        raise ConfigError("There are no training images.", hint="Pass --images DIR or --samples N (N > 0).")

    library = output is None if library is None else library
    destinations = artifact_destinations(preset.name, text_pairs, configs, output=output, library=library)
    if not overwrite:
        for paths in destinations:
            for path, _ in paths:
                if path.exists():
                    raise OutputExistsError(
                        f"{path} already exists.",
                        hint="Pass --overwrite to replace it, or choose another name or -o.",
                    )

    # 1. the losses first, so that a missing identity model or CLIP file fails before any long work
    #    (identity and LPIPS only when weighted: FIX 8)
    if base_model is not None and device is None:
        dev = _model_device(base_model)
    else:
        dev = device if isinstance(device, torch.device) else resolve_device(device)
    if clip_loss is None:
        from dclip_cli.losses.clip import DirectionalCLIPLoss, load_clip

        _emit(callback, "status", message=f"Loading CLIP {clip_model}")
        clip_loss = DirectionalCLIPLoss(load_clip(clip_model, device=dev))
    id_loss = _identity_loss(preset, dev, callback) if any(c.id_weight > 0 for c in configs) else None
    lpips_loss = None
    if any(c.lpips_weight > 0 for c in configs):
        from dclip_cli.losses.lpips import LPIPSLoss

        _emit(callback, "status", message="Loading LPIPS")
        lpips_loss = LPIPSLoss().to(dev)

    # 2. the base model
    if base_model is not None:
        model = base_model
        base_name = base_checkpoint or preset.checkpoint
        from dclip_cli.artifacts import base_sha256_of

        # the latent cache and the artifact need an identity for the base: its file hash, else its weights' hash
        base_sha = base_sha256_of(model, base_sha256) or _weights_sha256(model)
    else:
        model, base_name, base_sha = load_base_model(
            preset, checkpoint=checkpoint, device=dev, callback=callback
        )
    model.eval()
    dev = _model_device(model)
    # sampling and inversion run in the configured precision; latents made in low precision are cached apart
    # from float32 ones (which reproduce the original bit for bit)
    infer_dtype = resolve_precision(configs[0].precision, dev)
    infer_model = model if infer_dtype is None else optimize_model(model, precision=infer_dtype)
    cache_sha = base_sha if infer_dtype is None else f"{base_sha}+{precision_name(infer_dtype)}"
    _announce_estimate(
        infer_model, preset, configs, len(files) + n_samples, n_samples + n_preview, dev, callback
    )

    # 3. the training images (photos and/or samples) and the held-out preview samples
    seed = configs[0].seed
    x0_parts: list[torch.Tensor] = []
    keys: list[str] = []
    if files:
        _emit(callback, "status", message=f"Preparing {len(files)} training image(s)")
        x_photos, photo_keys = load_training_images(files, preset, callback=callback)
        x0_parts.append(x_photos)
        keys.extend(photo_keys)
    if n_samples + n_preview > 0:
        drawn = cached_samples(
            infer_model,
            n_samples + n_preview,
            model_sha256=cache_sha,
            seed=seed,
            n_steps=configs[0].n_gen_steps,
            batch_size=max(configs[0].batch_size, 4),
            callback=callback,
        )
        if n_samples:
            x0_parts.append(drawn[:n_samples])
            keys.extend(tensor_sha256(drawn[i : i + 1]) for i in range(min(n_samples, len(drawn))))
        x_preview = drawn[n_samples:]
    else:
        x_preview = torch.zeros((0, 3, preset.image_size, preset.image_size))
    x0_all = torch.cat(x0_parts)
    preview_keys = [tensor_sha256(x) for x in x_preview]

    # 4. each pair, from the base (section 8.1: weights, optimizer and scheduler reset per pair)
    job = _Job(
        preset=preset,
        model=model,
        base_name=base_name,
        base_sha=base_sha,
        clip_model=clip_model,
        losses={"clip_loss": clip_loss, "id_loss": id_loss, "lpips_loss": lpips_loss},
        callback=callback,
        n_pairs=len(text_pairs),
        run_dir=Path(run_dir).expanduser() if run_dir is not None else None,
        resume=resume,
        save_dtype=save_dtype,
        overwrite=overwrite,
        return_models=return_models,
    )
    data: dict[tuple[int, int], tuple[TrainingData, TrainingData]] = {}
    hits = misses = 0
    results: list[PairResult] = []
    for index, (pair, cfg, dests) in enumerate(zip(text_pairs, configs, destinations, strict=True)):
        if (cfg.t0, cfg.n_inv_steps) not in data:
            _emit(
                callback, "status", message=f"Inverting the images to t0 = {cfg.t0} ({cfg.n_inv_steps} steps)"
            )
            train = invert_training_images(
                infer_model,
                x0_all,
                keys,
                model_sha256=cache_sha,
                t0=cfg.t0,
                n_inv_steps=cfg.n_inv_steps,
                callback=callback,
            )
            preview = invert_training_images(
                infer_model,
                x_preview,
                preview_keys,
                model_sha256=cache_sha,
                t0=cfg.t0,
                n_inv_steps=cfg.n_inv_steps,
            )
            hits += train.cache_hits + preview.cache_hits
            misses += len(keys) + len(preview_keys) - train.cache_hits - preview.cache_hits
            data[(cfg.t0, cfg.n_inv_steps)] = (train, preview)
        train, preview = data[(cfg.t0, cfg.n_inv_steps)]
        result = job.train_pair(index, pair, cfg, dests, train, preview)
        results.append(result)
        _emit(callback, "pair_end", index=index, result=result)

    return FinetuneResult(
        preset=preset.name,
        base_checkpoint=base_name,
        base_sha256=base_sha,
        pairs=results,
        n_images=x0_all.shape[0],
        cache_hits=hits,
        cache_misses=misses,
        seconds=time.perf_counter() - started,
    )


@dataclass
class _Job:
    """What every pair of a :func:`run_finetune` call shares, and the training of one pair."""

    preset: Preset
    model: nn.Module
    base_name: str
    base_sha: str
    clip_model: str
    losses: dict[str, Any]
    callback: EventCallback | None
    n_pairs: int
    run_dir: Path | None
    resume: bool
    save_dtype: str
    overwrite: bool
    return_models: bool

    def train_pair(
        self,
        index: int,
        pair: TextPair,
        cfg: FinetuneConfig,
        dests: Sequence[tuple[Path, str | None]],
        train: TrainingData,
        preview: TrainingData,
    ) -> PairResult:
        from dclip_cli.artifacts import save_artifact

        started = time.perf_counter()
        fingerprint = run_fingerprint(
            preset=self.preset.name, base_sha256=self.base_sha, pair=pair, config=cfg, image_keys=train.keys
        )
        if self.run_dir is None:
            folder = default_run_dir(self.preset.name, pair, fingerprint)
        else:
            folder = self.run_dir / pair.key if self.n_pairs > 1 else self.run_dir
        run = _RunFolder(folder, fingerprint)
        state = run.load_state(_model_device(self.model)) if self.resume else None
        if self.resume and state is None:
            _emit(
                self.callback,
                "warning",
                message=f"No saved state for {pair.key!r} in {folder}; starting anew.",
            )
        start_epoch = int(state["epochs_done"]) if state is not None else 0
        run.doc = {
            "preset": self.preset.name,
            "edit": pair.key,
            "src_text": pair.src_text,
            "trg_text": pair.trg_text,
            "base_checkpoint": self.base_name,
            "base_sha256": self.base_sha,
            "settings": cfg.to_dict(),
            "clip_model": self.clip_model,
            "n_train_images": len(train.keys),
            "fingerprint": fingerprint,
            "status": "training",
            "epochs_done": start_epoch,
            "epoch_losses": list(state.get("epoch_losses", [])) if state is not None else [],
            "artifacts": [],
        }
        run.write_doc()
        _emit(
            self.callback,
            "pair_start",
            pair=pair,
            index=index,
            pairs=self.n_pairs,
            config=cfg,
            run_dir=folder,
            start_epoch=start_epoch,
        )

        def on_epoch_end(ts: TrainingState) -> None:
            shot = run.end_epoch(ts, preview, cfg)
            _emit(
                self.callback,
                "epoch_end",
                index=index,
                epoch=ts.epochs_done - 1,
                epochs=cfg.epochs,
                losses=ts.losses,
                preview=shot,
            )

        def on_step(info: StepInfo) -> None:
            _emit(self.callback, "step", index=index, **info)

        if state is not None and start_epoch >= cfg.epochs:  # trained, but the artifact was not saved
            tuned = copy.deepcopy(self.model)
            tuned.load_state_dict(state["model"])
            tuned.eval()
        else:
            tuned = finetune(
                self.model,
                train.x0,
                train.x_lat,
                src_text=pair.src_text,
                trg_text=pair.trg_text,
                config=cfg,
                callback=on_step,
                on_epoch_end=on_epoch_end,
                resume=state,
                **self.losses,
            )
        del state

        meta = artifact_metadata(
            preset=self.preset.name,
            pair=pair,
            config=cfg,
            base_checkpoint=self.base_name,
            base_sha256=self.base_sha,
            clip_model=self.clip_model,
            n_images=len(train.keys),
            model=self.model,
        )
        written = []
        for dest, library_name in dests:
            written.append(save_artifact(dest, tuned, meta, dtype=self.save_dtype, overwrite=self.overwrite))
            if library_name is not None:
                _write_library_meta(dest, library_name)
        run.finish(written)
        epoch_losses = run.doc["epoch_losses"]
        return PairResult(
            pair=pair,
            config=cfg,
            artifacts=written,
            run_dir=folder,
            losses=epoch_losses[-1] if epoch_losses else {},
            seconds=time.perf_counter() - started,
            previews=run.previews,
            resumed_from=start_epoch,
            model=tuned if self.return_models else None,
        )


class _RunFolder:
    """The run folder of one pair: ``run.json``, the resumable ``state.pt`` and ``previews/epoch-NNN.png``.

    Every file is written atomically; ``state.pt`` is replaced after each epoch and removed once the artifact is
    saved.
    """

    def __init__(self, folder: Path, fingerprint: str) -> None:
        self.folder = folder
        self.fingerprint = fingerprint
        self.doc: dict[str, Any] = {}
        self.previews: list[Path] = []

    @property
    def state_path(self) -> Path:
        return self.folder / STATE_FILE

    def write_doc(self) -> None:
        from dclip_cli.manifest import write_manifest

        write_manifest(self.folder / RUN_FILE, self.doc, overwrite=True)

    def load_state(self, device: torch.device) -> dict[str, Any] | None:
        """The saved state of the last finished epoch, or ``None``; refuses a state of other settings."""
        path = self.state_path
        if not path.is_file():
            return None
        try:
            state = torch.load(path, map_location=device, weights_only=True)
        except Exception as exc:  # noqa: BLE001 - torch raises many types for a damaged file
            raise ConfigError(
                f"The saved training state {path} cannot be read: {exc}.",
                hint="Delete the run folder (or drop --resume) to start this edit again.",
            ) from exc
        if not isinstance(state, dict) or state.get("fingerprint") != self.fingerprint:
            raise ConfigError(
                f"The run folder {self.folder} holds a run with other settings, images or base model.",
                hint="Resume with the same settings, or choose another --run-dir.",
            )
        return state

    def end_epoch(self, ts: TrainingState, preview: TrainingData, cfg: FinetuneConfig) -> Path | None:
        from dclip_cli.fileio import atomic_path

        self.doc["epoch_losses"].append(ts.losses)
        self.doc["epochs_done"] = ts.epochs_done
        state = {**ts.state_dict(), "fingerprint": self.fingerprint, "epoch_losses": self.doc["epoch_losses"]}
        with atomic_path(self.state_path, overwrite=True) as tmp:
            torch.save(state, tmp)
        shot = None
        if preview.x0.shape[0]:
            dest = self.folder / PREVIEWS / f"epoch-{ts.epochs_done:03d}.png"
            shot = _save_preview(ts.model, preview, cfg, dest, f"epoch {ts.epochs_done}")
            self.previews.append(shot)
        self.write_doc()
        return shot

    def finish(self, artifacts: Sequence[Path]) -> None:
        self.state_path.unlink(missing_ok=True)
        self.doc.update(status="done", artifacts=[str(p) for p in artifacts])
        self.write_doc()


def _announce_estimate(
    model: Callable[..., torch.Tensor],
    preset: Preset,
    configs: Sequence[FinetuneConfig],
    n_images: int,
    n_drawn: int,
    device: torch.device,
    callback: EventCallback | None,
) -> None:
    """Before a long CPU run, time one UNet call and emit an "Estimated time" status (cache hits make it shorter)."""
    if device.type == "cuda" or callback is None:
        return
    from dclip_cli.precision import (
        describe_precision,
        estimate_seconds,
        format_seconds,
        should_print_estimate,
    )

    cfg = configs[0]
    inference = n_drawn * cfg.n_gen_steps + (n_images + n_drawn) * (2 * cfg.n_inv_steps - 1)
    training = sum(c.epochs * n_images * c.n_train_steps for c in configs)
    checkpointing = resolve_checkpointing(cfg.checkpointing, mode=cfg.mode)
    x = torch.zeros((1, 3, preset.image_size, preset.image_size), device=device)
    seconds = estimate_seconds(model, x, inference, train_calls=training, checkpointing=checkpointing)
    if should_print_estimate(device, seconds):
        dtype = resolve_precision(cfg.precision, device, training=True)
        _emit(
            callback,
            "status",
            message=f"Estimated time: up to {format_seconds(seconds)} ({inference} sampling/inversion and "
            f"{training} training UNet calls, {describe_precision(dtype, device)}); a GPU is much faster.",
        )


def _weights_sha256(model: nn.Module) -> str:
    """SHA-256 over a model's state dict (names, shapes and float32 bytes), for bases not loaded from a file."""
    h = hashlib.sha256()
    for name, value in model.state_dict().items():
        h.update(name.encode("utf-8"))
        h.update(tensor_sha256(value).encode("ascii"))
    return h.hexdigest()


def _write_library_meta(path: Path, name: str) -> None:
    """Record the artifact's SHA-256 beside it, as ``dclip models import`` does, so ``verify`` can check it."""
    from dclip_cli.checkpoints import cache
    from dclip_cli.fileio import sha256_file

    cache.write_meta(
        path, cache.FileMeta(sha256_file(path), path.stat().st_size, name, "dclip", "finetune", None, False)
    )


def _identity_loss(preset: Preset, device: torch.device, callback: EventCallback | None) -> LossFn:
    """Build the preset's identity loss (its registered network, weights through the checkpoint store)."""
    from dclip_cli.checkpoints import download
    from dclip_cli.losses.identity import IdentityLoss
    from dclip_cli.presets.manager import get_registry

    if not preset.identity_model:
        raise ConfigError(
            f"The preset {preset.name!r} has no identity model, so the identity loss cannot be used.",
            hint="Pass --id-weight 0.",
        )
    ident = get_registry().identity_models.get(preset.identity_model)
    if ident is None:
        raise ConfigError(
            f"The identity model {preset.identity_model!r} of preset {preset.name!r} is not installed.",
            hint="Pass --id-weight 0, or install the plugin that provides it.",
        )
    _emit(callback, "status", message=f"Loading the identity network {ident.name}")
    weights = download.fetch(ident.checkpoint)
    return IdentityLoss(ident.build(weights, device)).to(device)
