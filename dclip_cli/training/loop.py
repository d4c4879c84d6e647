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

This module is the pure loop: tensors and loss callables in, a fine-tuned copy of the model out; no files, no
downloads, no printing. The job around it (run folders, previews, resume, artifacts) is :mod:`dclip_cli.training.job`.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from dclip_cli.diffusion.ddim import ddim_step, timestep_tensor
from dclip_cli.diffusion.schedule import alpha_bar, generation_pairs
from dclip_cli.distributed import current
from dclip_cli.errors import ConfigError, TrainingDivergedError
from dclip_cli.precision import (
    optimize_model,
    resolve_checkpointing,
    resolve_precision,
    set_gradient_checkpointing,
)
from dclip_cli.training import ddp
from dclip_cli.training.config import FinetuneConfig

StepInfo = dict[str, Any]
Callback = Callable[[StepInfo], None]
LossFn = Callable[..., torch.Tensor]


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


def model_device(model: nn.Module) -> torch.device:
    """The device of a model's first parameter (CPU for a model without parameters)."""
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
    n_images: int | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The fine-tuning objective on generated images ``x`` (section 8.1, summed in float32).

    loss = clip_weight·(-log((2 - L_dir(x0, src, x, trg))/2)) + l1_weight·mean|x0 - x| + id_weight·mean(L_id(x0, x))
    + lpips_weight·mean(LPIPS(x0, x)); terms whose weight is 0 are skipped (except L_clip, always reported).

    Args:
        x0: (B, 3, S, S) source images in [-1, 1] (no gradient).
        x: (B, 3, S, S) generated images (final image or x̂₀) with gradient.
        n_images: the weight of this batch under torchrun (default ``B``; 0 for a rank's stand-in image): every
            term is then the mean over the whole global batch (:func:`dclip_cli.training.ddp.reduce_terms`).

    Returns:
        ``(total, terms)``: the scalar loss and the unweighted terms by name (``clip``, ``l1``, ``id``, ``lpips``).
    """
    from dclip_cli.losses.clip import clip_term

    means: dict[str, torch.Tensor] = {"clip": clip_loss(x0, src_text, x, trg_text)}  # L_dir, before the -log
    if config.l1_weight > 0:
        means["l1"] = (x0 - x).abs().mean().float()
    if config.id_weight > 0:
        assert id_loss is not None  # checked by finetune()
        means["id"] = id_loss(x0, x).float().mean()
    if config.lpips_weight > 0:
        assert lpips_loss is not None
        means["lpips"] = lpips_loss(x0, x).float().mean()
    # under torchrun the batch means cover every rank's images, L_dir before its -log (issue 14)
    terms = ddp.reduce_terms(means, x.shape[0] if n_images is None else n_images, current())
    terms["clip"] = clip_term(terms["clip"]).float()
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
    order, ``config.batch_size`` at a time, once per epoch. Under torchrun (:mod:`dclip_cli.distributed`) every
    rank passes all the images and trains on its part of each batch with DistributedDataParallel
    (:mod:`dclip_cli.training.ddp`); the ranks return the same model.

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
            Every optimizer step checks that its loss is finite, and every epoch that the weights are.
        on_epoch_end: called with a :class:`TrainingState` after each finished epoch (used to save resumable
            state); the scheduler has already been stepped.
        resume: a :meth:`TrainingState.state_dict` to continue from (its finished epochs are skipped).

    Returns:
        The fine-tuned copy of ``model``, in eval mode, on the model's device.

    Raises:
        ConfigError: the inputs do not fit, or a weighted loss has no loss function.
        TrainingDivergedError: the loss (checked at every optimizer step) or the weights (checked at the end of
            every epoch) became NaN or infinite; ``on_epoch_end`` never sees damaged weights.
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

    device = model_device(tuned)
    # speed and memory (issue 6): the UNet may run under autocast (weights, optimizer state, DDIM update and
    # losses stay float32) and recompute its activations in the backward pass instead of keeping them
    dtype = resolve_precision(config.precision, device, training=True)
    runner: nn.Module = tuned if dtype is None else optimize_model(tuned, precision=dtype, training=True)
    checkpointing = resolve_checkpointing(config.checkpointing, mode=config.mode)
    set_gradient_checkpointing(tuned, checkpointing)
    ctx = current()  # under torchrun: DDP, and each rank its part of every global batch of config.batch_size
    runner = ddp.wrap_model(runner, ctx)
    pairs = generation_pairs(config.t0, config.n_train_steps)  # [(t0, t_{N-2}), …, (t_1, 0), (0, -1)]
    n_images = x0.shape[0]
    batches = math.ceil(n_images / config.batch_size)
    step_fn = _original_batch if config.mode == "original" else _efficient_batch

    reporter = _StepTracker(optimizer, callback, should_stop)
    with torch.enable_grad():
        for epoch in range(start_epoch, config.epochs):
            # a generator per epoch keeps η > 0 runs reproducible across --resume
            generator = None
            if config.eta > 0:
                generator = torch.Generator(device=device).manual_seed(config.seed + epoch)
            reporter.start_epoch()
            for batch in range(batches):
                start = batch * config.batch_size
                part = ddp.local_batch(x0, x_lat, start, config.batch_size, ctx)
                x0_b = part.x0.to(device=device, dtype=torch.float32)
                x_lat_b = part.x_lat.to(device=device, dtype=torch.float32)
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
                    generator=ddp.batch_generator(generator, part, ctx),
                    report=reporter,
                    src_text=src_text,
                    trg_text=trg_text,
                    clip_loss=clip_loss,
                    id_loss=id_loss,
                    lpips_loss=lpips_loss,
                    n_images=part.n_images,
                )
            reporter.check_weights()  # before the epoch's state is handed on (and saved)
            scheduler.step()  # once per epoch (section 8.1)
            if on_epoch_end is not None:
                on_epoch_end(TrainingState(epoch + 1, tuned, optimizer, scheduler, reporter.means()))

    for p in params:
        p.grad = None
    set_gradient_checkpointing(tuned, False)
    tuned.eval()
    return tuned


class _StepTracker:
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

    def check_finite(self, info: StepInfo) -> None:
        """Stop with :class:`TrainingDivergedError` when an optimizer step's loss is NaN or infinite."""
        bad = [k for k, v in (info.get("losses") or {}).items() if not math.isfinite(v)]
        if bad:
            self.diverged(f"the loss ({', '.join(bad)}) became NaN or infinite at", info["step"])

    def check_weights(self) -> None:
        """Stop with :class:`TrainingDivergedError` when the weights hold NaN or infinite values (checked after
        each epoch, before its state is handed on): a float64 sum of a tensor is finite exactly when all its
        elements are, and costs one pass."""
        params = [p for group in self.optimizer.param_groups for p in group["params"]]
        if params and not bool(
            torch.isfinite(torch.stack([p.detach().sum(dtype=torch.float64) for p in params])).all()
        ):
            self.diverged("the weights became NaN or infinite in", None)

    def diverged(self, what: str, step: int | None) -> None:
        lr = self.optimizer.param_groups[0]["lr"]
        where = f"epoch {self.base.get('epoch', 0) + 1}" + (
            f", batch {self.base.get('batch', 0) + 1}, step {step}" if step is not None else ""
        )
        raise TrainingDivergedError(
            f"Fine-tuning diverged: {what} {where} (learning rate {lr:g}).",
            hint="Lower the learning rate (--lr); no artifact was saved.",
        )

    def __call__(self, info: StepInfo) -> None:
        losses = info.get("losses")
        if info["optimizer_step"]:
            self.check_finite(info)
        if losses is not None:
            self.count += 1
            for k, v in losses.items():
                self.sums[k] = self.sums.get(k, 0.0) + v
        if self.callback is not None:
            self.callback({**self.base, **info, "lr": self.optimizer.param_groups[0]["lr"]})
        if info["optimizer_step"] and self.should_stop is not None and self.should_stop():
            raise KeyboardInterrupt("fine-tuning stopped by should_stop")


def _unet_step(
    model: nn.Module, x: torch.Tensor, t: int, t_next: int, eta: float, generator: Any
) -> tuple[torch.Tensor, torch.Tensor]:
    """One generative DDIM step (t -> t_next) with the shared :func:`~dclip_cli.diffusion.ddim.ddim_step`."""
    eps = model(x, timestep_tensor(t, x))
    noise = generator.draw(x) if isinstance(generator, ddp.BatchNoise) else None
    return ddim_step(
        x, eps, alpha_bar(t, x.device), alpha_bar(t_next, x.device), eta=eta,
        generator=None if noise is not None else generator, noise=noise,
    )  # fmt: skip


def _original_batch(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    params: Sequence[nn.Parameter],
    x0: torch.Tensor,
    x_lat: torch.Tensor,
    pairs: Sequence[tuple[int, int]],
    *,
    config: FinetuneConfig,
    generator: Any,
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
    generator: Any,
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
