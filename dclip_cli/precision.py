"""Speed and memory: mixed precision, channels_last, torch.compile, gradient checkpointing and time estimates.

What stays in float32 whatever the precision (issue 6):

* the schedule coefficients ᾱ and the DDIM update: :class:`OptimizedEpsModel` returns ``eps`` as float32, so
  :func:`~dclip_cli.diffusion.ddim.ddim_step` and everything after it run in float32 exactly as before;
* GroupNorm statistics: on CUDA, autocast runs ``group_norm`` in float32; on the CPU its bfloat16 kernel
  accumulates the mean and variance in float32; the ADM's ``GroupNorm32`` casts to float32 itself;
* the weights: autocast casts a low-precision copy per call and leaves the float32 parameters (and the optimizer
  state of a fine-tune) untouched.

Only the UNet's convolutions, linear layers and attention run in the low-precision dtype.

Typical use by a pipeline (``--precision``, ``--compile`` and ``--checkpointing`` of the commands)::

    dtype = resolve_precision("auto", device)              # torch.bfloat16, torch.float16 or None (fp32)
    eps_model = optimize_model(model, precision=dtype, compile=False)
    x_lat = ddim.invert(eps_model, x0, t0=500, n_steps=40)  # fp32 in, fp32 out

    seconds = estimate_seconds(eps_model, x0, n_calls=79)  # before a long CPU run (dclip_cli.estimate words it)

The library never prints: the CLI decides what to show.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import math
import os
import sys
import time
from collections.abc import Callable
from typing import Any, Literal

import torch
from torch import nn

from dclip_cli.errors import ConfigError
from dclip_cli.sysinfo import (
    cpu_flags_have_bf16,
    cpu_name,
    current_rss_bytes,
    device_name,
    peak_memory_bytes,
    reset_peak_memory,
    synchronize,
    track_peak_memory,
    tune_cpu_allocator,
)

PrecisionName = Literal["auto", "fp32", "bf16", "fp16"]
PRECISIONS: tuple[str, ...] = ("auto", "fp32", "bf16", "fp16")
CHECKPOINTING_CHOICES: tuple[str, ...] = ("auto", "on", "off")

_DTYPES: dict[str, torch.dtype | None] = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
_NAMES: dict[torch.dtype | None, str] = {None: "fp32", torch.float32: "fp32", torch.bfloat16: "bf16",
                                         torch.float16: "fp16"}  # fmt: skip

#: runs estimated shorter than this are not worth announcing
ESTIMATE_MIN_SECONDS = 20.0


# --------------------------------------------------------------------------------------------- precision choice


@functools.lru_cache(maxsize=1)
def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bfloat16 natively (AVX512-BF16 or AMX on x86, BF16 on Arm).

    Read from ``/proc/cpuinfo`` (Linux) or ``sysctl hw.optional.arm.FEAT_BF16`` (macOS); ``False`` when neither can
    be read. PyTorch's ``get_cpu_capability()`` only says "AVX512", which does not imply bfloat16 instructions.
    """
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            return cpu_flags_have_bf16(fh.read())
    except OSError:
        pass
    if sys.platform == "darwin":  # pragma: no cover - not exercised on Linux CI
        import subprocess

        try:
            out = subprocess.run(
                ["sysctl", "-n", "hw.optional.arm.FEAT_BF16"], capture_output=True, text=True, timeout=5
            )
            return out.stdout.strip() == "1"
        except (OSError, subprocess.SubprocessError):
            return False
    return False


def device_supports_bf16(device: torch.device | str) -> bool:
    """Whether ``device`` runs bfloat16 at native speed (CUDA compute capability >= 8.0, or a bf16 CPU)."""
    dev = torch.device(device)
    if dev.type == "cuda":
        return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported(including_emulation=False))
    if dev.type == "cpu":
        return cpu_has_native_bf16()
    return False


def resolve_precision(
    spec: str | torch.dtype, device: torch.device | str, *, training: bool = False
) -> torch.dtype | None:
    """Turn a ``--precision`` value into the autocast dtype for ``device``.

    ``auto`` is bfloat16 on CUDA GPUs that support it and float16 on older ones; bfloat16 on CPUs with native
    bfloat16 (AVX512-BF16, AMX, Arm BF16); float32 otherwise (other CPUs, MPS). When ``training`` (fine-tuning),
    ``auto`` never picks float16, which would need loss scaling: it falls back to float32.

    Args:
        spec: ``"auto"``, ``"fp32"``, ``"bf16"``, ``"fp16"`` (also ``"float32"``, ``"bfloat16"``, ``"float16"``),
            or a ``torch.dtype``.
        device: the device the model runs on.
        training: whether gradients will flow through the model.

    Returns:
        ``torch.bfloat16`` or ``torch.float16`` to run the UNet under autocast, or ``None`` for plain float32.

    Raises:
        ConfigError: an unknown name; bf16 on a CUDA GPU without bfloat16; fp16 for training.
    """
    dev = torch.device(device)
    if isinstance(spec, torch.dtype):
        name = _NAMES.get(spec)
        if name is None:
            raise ConfigError(f"Unsupported precision {spec}.", hint="Use float32, bfloat16 or float16.")
    else:
        name = str(spec).strip().lower()
        name = {
            "float32": "fp32",
            "float": "fp32",
            "bfloat16": "bf16",
            "float16": "fp16",
            "half": "fp16",
        }.get(name, name)
    if name not in PRECISIONS:
        raise ConfigError(f"Unknown precision {spec!r}.", hint="Use --precision auto, fp32, bf16 or fp16.")
    if name == "auto":
        if dev.type == "cuda":
            if device_supports_bf16(dev):
                return torch.bfloat16
            return None if training else torch.float16
        if dev.type == "cpu" and cpu_has_native_bf16():
            return torch.bfloat16
        return None
    if name == "bf16" and dev.type == "cuda" and not device_supports_bf16(dev):
        raise ConfigError(
            "--precision bf16 was requested but this GPU has no native bfloat16 support.",
            hint="Use --precision fp16 (editing) or fp32.",
        )
    if name == "fp16" and training:
        raise ConfigError(
            "--precision fp16 cannot be used for fine-tuning: float16 gradients underflow without loss scaling.",
            hint="Use --precision bf16 (on GPUs and CPUs that support it) or fp32.",
        )
    return _DTYPES[name]


def precision_name(dtype: torch.dtype | None) -> str:
    """``"fp32"``, ``"bf16"`` or ``"fp16"`` for a dtype returned by :func:`resolve_precision`."""
    return _NAMES.get(dtype, str(dtype))


def describe_precision(dtype: torch.dtype | None, device: torch.device | str) -> str:
    """A short phrase for logs, e.g. ``"bf16 on cpu, fused oneDNN kernels (native bf16)"`` or ``"fp32 on cuda"``."""
    dev = torch.device(device)
    if dtype is None:
        return f"fp32 on {dev.type}"
    extra = ""
    if dtype is torch.bfloat16 and dev.type == "cpu":
        extra = " (native bf16)" if cpu_has_native_bf16() else " (emulated bf16, slow)"
        from dclip_cli.models.fused import cpu_fusion_supported

        if cpu_fusion_supported(dtype):  # what optimize_model runs for DDPM/ADM inference
            return f"bf16 on cpu, fused oneDNN kernels{extra}"
    return f"{precision_name(dtype)} autocast on {dev.type}{extra}"


def autocast(device: torch.device | str, dtype: torch.dtype | None) -> contextlib.AbstractContextManager[Any]:
    """``torch.autocast`` for ``device`` and ``dtype``, or a no-op context when ``dtype`` is ``None`` (fp32)."""
    if dtype is None or dtype is torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=dtype)


# ------------------------------------------------------------------------------------------- optimized wrapper


def _first_param_device(module: Any) -> torch.device | None:
    if isinstance(module, nn.Module):
        for p in module.parameters():
            return p.device
    return None


class OptimizedEpsModel(nn.Module):
    """An eps-model that runs the wrapped model under autocast (and channels_last / torch.compile).

    ``forward(x, t)`` takes float32 ``x`` (B, C, H, W) and ``t`` (B,) and returns float32 ``eps`` (B, C, H, W) in
    the standard contiguous layout, so the DDIM update and the schedule stay in float32. Attributes it does not
    define itself (``arch``, ``image_size``, ``unet``, ``set_gradient_checkpointing``, ...) are those of the wrapped
    model. The wrapped model is a submodule, so ``parameters()``, ``train()``, ``requires_grad_()`` and
    ``copy.deepcopy`` work on the wrapper as on the model; use :func:`unwrap_model` to get the model back (for
    example before saving a fine-tuned result).

    Args:
        model: an ``nn.Module`` or any callable ``model(x, t) -> eps`` (e.g. a mix of models).
        dtype: autocast dtype (``torch.bfloat16`` / ``torch.float16``) or ``None`` for float32.
        channels_last: feed ``x`` in channels_last memory format (the weights should be converted too, see
            :func:`optimize_model`).
        compile: run the model through ``torch.compile`` (compiled lazily on the first call; a new input shape
            recompiles).
        cache_weights: in calls without gradient, run a low-precision twin of the model whose convolution and
            linear weights were cast once (autocast would cast them again at every call). The twin gives the
            same results as autocast, costs half the model's memory, is rebuilt when the weights change (in-place
            updates, ``load_state_dict``, ``.to()``; after writes through ``.data``, call :meth:`invalidate`),
            and is never used when gradients are enabled.
        fuse: with ``cache_weights``, in bfloat16 on a CPU whose oneDNN has bfloat16 kernels, make the twin the
            fused inference path of :mod:`dclip_cli.models.fused` (prepacked weights, residual adds as
            convolution post-ops, fewer passes over the activations): the results of autocast within bfloat16
            rounding, 1.1-1.35x faster on an AMX CPU. Elsewhere (GPUs, fp16, other models, unsupported CPUs) it
            changes nothing.

    Autocast follows the input's device type. Calls without gradient on a DiffusionModel record their duration in
    the per-machine speed profile (:mod:`dclip_cli.speed_profile`) that :func:`estimate_seconds` reads.
    """

    def __init__(
        self,
        model: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
        *,
        dtype: torch.dtype | None = None,
        channels_last: bool = False,
        compile: bool = False,
        cache_weights: bool = False,
        fuse: bool = False,
    ) -> None:
        super().__init__()
        if isinstance(model, nn.Module):
            self.model = model
        else:
            self._fn = model
        self.autocast_dtype = None if dtype is torch.float32 else dtype
        self.channels_last = bool(channels_last)
        self.use_compile = bool(compile)
        self.cache_weights = bool(cache_weights)
        self.fuse = bool(fuse)
        self.__dict__["_compiled"] = None
        self.__dict__["_twin"] = None
        self.__dict__["_memo"] = None  # (x, t, weights key, eps) of a call whose result is served once more
        self.__dict__["_keep_next"] = False
        self.__dict__["_timings"] = {}  # input shape -> [calls timed, recorded]

    # attribute passthrough -------------------------------------------------------------------------------------
    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            inner = self.__dict__.get("_modules", {}).get("model")
            if inner is None:
                inner = self.__dict__.get("_fn")
            if inner is None or name.startswith("__"):
                raise
            return getattr(inner, name)

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_compiled"] = None  # compiled code is rebuilt on demand (deepcopy, pickling)
        state["_twin"] = None
        state["_memo"] = None
        state["_keep_next"] = False
        state["_timings"] = {}
        return state

    @property
    def inner(self) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
        """The wrapped model or callable."""
        model = self._modules.get("model")
        return model if model is not None else self.__dict__["_fn"]  # type: ignore[return-value]

    def invalidate(self) -> None:
        """Drop the cached low-precision weights, so the next call rebuilds them from the current weights.

        Optimizer steps, in-place tensor operations, ``load_state_dict`` and ``.to()`` are detected by themselves;
        call this after changing weights through ``.data`` (which bypasses PyTorch's version counters).
        """
        self.__dict__["_twin"] = None

    def _weights_key(self, model: nn.Module) -> tuple[Any, ...]:
        # parameter identity (replaced by .to() or assignment), in-place version counter, dtype and device
        return tuple((id(p), p._version, p.dtype, p.device) for p in model.parameters())

    def _low_precision_twin(self) -> nn.Module | None:
        model = self._modules.get("model")
        if not self.cache_weights or self.autocast_dtype is None or model is None or torch.is_grad_enabled():
            return None
        key = self._weights_key(model)
        cached = self.__dict__.get("_twin")
        if cached is not None and cached[0] == key:
            return cached[1]  # type: ignore[no-any-return]
        self.__dict__["_twin"] = None  # free the stale twin before building a new one
        twin: nn.Module | None = None
        if self.fuse:
            from dclip_cli.models.fused import build_fused

            twin = build_fused(model, self.autocast_dtype)  # None where the fused path does not apply
        if twin is None:
            twin = copy.deepcopy(model)
            twin.requires_grad_(False)
            for module in twin.modules():
                if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Linear)):
                    module.to(self.autocast_dtype)  # what autocast casts at every call; norms stay fp32
        self.__dict__["_twin"] = (key, twin)
        return twin

    @property
    def execution_path(self) -> str:
        """How calls without gradient run now: ``"fused"``, ``"autocast"``, ``"compiled"`` or ``"plain"``."""
        if self.use_compile:
            return "compiled"
        cached = self.__dict__.get("_twin")
        if cached is not None and type(cached[1]).__name__ == "FusedUNet":
            return "fused"
        return "plain" if self.autocast_dtype is None else "autocast"

    # the result of a timing call, served once more (warm_call_seconds) ------------------------------------------
    def keep_next_result(self) -> None:
        """Keep the result of the next call without gradient and serve it again if the call after it is identical.

        :func:`warm_call_seconds` times a call on the first batch at t = 0, which is exactly the first call of a
        DDIM inversion of that batch: with this, the timed call is not wasted.
        """
        self.__dict__["_keep_next"] = True

    def _memo_hit(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor | None:
        memo = self.__dict__.get("_memo")
        if memo is None:
            return None
        self.__dict__["_memo"] = None  # served at most once
        mx, mt, key, eps = memo
        model = self._modules.get("model")
        if torch.is_grad_enabled() or (model is not None and self._weights_key(model) != key):
            return None
        same = mx.shape == x.shape and mt.shape == t.shape and mx.device == x.device and mx.dtype == x.dtype
        if same and torch.equal(mx, x) and torch.equal(mt, t):
            return eps  # type: ignore[no-any-return]
        return None

    def _remember(self, x: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> None:
        self.__dict__["_keep_next"] = False
        model = self._modules.get("model")
        if torch.is_grad_enabled():
            return
        key = self._weights_key(model) if model is not None else None
        self.__dict__["_memo"] = (x.detach().clone(), t.detach().clone(), key, eps)

    # the per-machine speed profile ------------------------------------------------------------------------------
    def speed_key(self, x: torch.Tensor) -> dict[str, Any] | None:
        """The :mod:`~dclip_cli.speed_profile` key of a call on ``x`` (``None`` for callables of unknown shape)."""
        from dclip_cli import speed_profile

        model = self._modules.get("model")
        if model is None:
            return None
        path = self.execution_path
        if path == "autocast" and self.fuse and self.cache_weights and x.device.type == "cpu":
            from dclip_cli.models.fused import fused_path_applies

            if fused_path_applies(model, self.autocast_dtype):
                path = "fused"  # not built yet: the calls will run fused
        name = torch.cuda.get_device_name(x.device) if x.device.type == "cuda" else None
        return speed_profile.record_key(
            model, tuple(x.shape), device=x.device.type, precision=precision_name(self.autocast_dtype), path=path,
            device_name=name,
        )  # fmt: skip

    def _record_time(self, x: torch.Tensor, seconds: float) -> None:
        # the second call of a shape is warm (the first builds oneDNN's kernels and reorders the weights): record it
        state = self.__dict__["_timings"].setdefault(tuple(x.shape), [0, False])
        state[0] += 1
        if state[0] < 2 or state[1]:
            return
        state[1] = True
        from dclip_cli import speed_profile

        with contextlib.suppress(Exception):  # a speed record must never break a call
            speed_profile.store_seconds(self.speed_key(x), seconds)

    def _callable(self) -> Callable[..., torch.Tensor]:
        if not self.use_compile:
            twin = self._low_precision_twin()
            return twin if twin is not None else self.inner
        compiled = self.__dict__.get("_compiled")
        if compiled is None:
            # kept out of _modules so that parameters and state_dict are not listed twice
            compiled = torch.compile(self.inner, dynamic=False)
            self.__dict__["_compiled"] = compiled
        return compiled  # type: ignore[no-any-return]

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Predict ε under autocast.

        Args:
            x: (B, C, H, W) float32 samples.
            t: (B,) float32 timesteps.

        Returns:
            eps: (B, C, H, W) float32, contiguous.
        """
        hit = self._memo_hit(x, t) if self.__dict__.get("_memo") is not None else None
        if hit is not None:
            return hit
        x_in = x
        timed = not torch.is_grad_enabled() and "model" in self._modules
        start = time.perf_counter() if timed else 0.0
        if self.channels_last and x.ndim == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast(x.device.type, self.autocast_dtype):
            eps = self._callable()(x, t)
        if self.autocast_dtype is not None or self.channels_last:
            eps = eps.float().contiguous()
        if self.__dict__.get("_keep_next"):
            self._remember(x_in, t, eps)
        if timed and x.device.type == "cpu":  # GPU calls return before the work is done
            self._record_time(x_in, time.perf_counter() - start)
        return eps

    def extra_repr(self) -> str:
        return (
            f"precision={precision_name(self.autocast_dtype)}, channels_last={self.channels_last}, "
            f"compile={self.use_compile}, cache_weights={self.cache_weights}, fuse={self.fuse}"
        )


def optimize_model(
    model: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    *,
    precision: str | torch.dtype | None = "auto",
    device: torch.device | str | None = None,
    channels_last: bool = True,
    compile: bool = False,
    training: bool = False,
    cache_weights: bool | None = None,
    fuse: bool | None = None,
) -> OptimizedEpsModel:
    """Wrap an eps-model for speed: autocast in the chosen precision, channels_last and optionally torch.compile.

    The wrapper computes in the low-precision dtype but takes and returns float32, so it drops into
    :func:`~dclip_cli.diffusion.ddim.invert`, :func:`~dclip_cli.diffusion.ddim.generate`, the mixers and
    :func:`~dclip_cli.finetune.finetune` unchanged. With ``precision="fp32"`` and ``channels_last=False`` the
    results are bit-identical to the plain model.

    ``channels_last`` converts the model's 4-D weights in place (``model.to(memory_format=torch.channels_last)``);
    values are unchanged and saved state dicts are written contiguous. On CUDA it also turns on
    ``torch.backends.cudnn.benchmark`` (fixed image sizes make the autotuned convolutions pay off).

    Args:
        model: a :class:`~dclip_cli.models.DiffusionModel` (or any ``model(x, t) -> eps`` callable; then only
            autocast applies).
        precision: ``"auto"``, ``"fp32"``, ``"bf16"``, ``"fp16"``, a dtype, or ``None`` (fp32, the "already
            resolved" value of :func:`resolve_precision`); checked with :func:`resolve_precision` for ``device``.
        device: the device the model runs on (default: its parameters' device, else CPU).
        channels_last: use the channels_last memory format (faster convolutions on CPUs and GPUs).
        compile: also ``torch.compile`` the model (worth it for long GPU runs; compiling takes minutes on a CPU).
        training: the model will be fine-tuned (``auto`` then avoids fp16, see :func:`resolve_precision`).
        cache_weights: keep low-precision weights across calls without gradient (see :class:`OptimizedEpsModel`);
            default: on unless ``training``.
        fuse: run calls without gradient through the fused bfloat16 CPU path where it applies (see
            :class:`OptimizedEpsModel` and :mod:`dclip_cli.models.fused`); default: same as ``cache_weights``.
            ``DCLIP_CPU_FUSION=0`` turns the default off (for comparisons).

    Returns:
        An :class:`OptimizedEpsModel` (``eps_model(x, t) -> eps``, float32).
    """
    if isinstance(model, OptimizedEpsModel):
        model = model.inner
    dev = torch.device(device) if device is not None else (_first_param_device(model) or torch.device("cpu"))
    dtype = None if precision is None else resolve_precision(precision, dev, training=training)
    if channels_last and isinstance(model, nn.Module):
        model.to(memory_format=torch.channels_last)
    if dev.type == "cuda":
        torch.backends.cudnn.benchmark = True
    cache = (not training) if cache_weights is None else cache_weights
    return OptimizedEpsModel(
        model,
        dtype=dtype,
        channels_last=channels_last and isinstance(model, nn.Module),
        compile=compile,
        cache_weights=cache,
        fuse=(cache and os.environ.get("DCLIP_CPU_FUSION", "1") != "0") if fuse is None else fuse,
    )


def unwrap_model(model: Any) -> Any:
    """Return the model inside an :class:`OptimizedEpsModel` (or ``model`` itself), e.g. before saving weights."""
    while isinstance(model, OptimizedEpsModel):
        model = model.inner
    return model


# ----------------------------------------------------------------------------------------------- checkpointing


def set_gradient_checkpointing(model: Any, enabled: bool = True) -> bool:
    """Switch gradient checkpointing of the UNet blocks on or off.

    Works on a :class:`~dclip_cli.models.DiffusionModel`, a raw UNet or an :class:`OptimizedEpsModel`.

    Returns:
        Whether the model supports it (``False``: nothing was changed).
    """
    target = unwrap_model(model)
    switch = getattr(target, "set_gradient_checkpointing", None)
    if switch is None:
        return False
    switch(bool(enabled))
    return True


def resolve_checkpointing(spec: str | bool | None, *, mode: str = "original") -> bool:
    """Turn a ``--checkpointing`` value into a switch for the fine-tuning ``mode``.

    ``auto`` (or ``None``) is on for the original mode, where the autograd graph holds the activations of every
    chained UNet call (``n_train_steps`` of them, the reason the original needs 24 GB), and off for the efficient
    mode, whose graph holds one call: there checkpointing would cost a third more compute for a smaller saving.

    Raises:
        ConfigError: an unknown value.
    """
    if isinstance(spec, bool):
        return spec
    value = (spec or "auto").strip().lower()
    if value in ("on", "true", "yes", "1"):
        return True
    if value in ("off", "false", "no", "0"):
        return False
    if value == "auto":
        return mode == "original"
    raise ConfigError(f"Unknown checkpointing setting {spec!r}.", hint="Use --checkpointing auto, on or off.")


# ------------------------------------------------------------------------------------------------- timing


def _model_device(model: Any, x: torch.Tensor) -> torch.device:
    return _first_param_device(unwrap_model(model)) or x.device


def time_forward(
    model: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    *,
    t: int | float = 500,
    repeats: int = 1,
    warmup: int = 0,
) -> float:
    """Seconds of one ``model(x, t)`` call without gradient (the fastest of ``repeats``, after ``warmup`` calls).

    Args:
        model: eps-callable.
        x: (B, C, H, W) input batch (its batch size is the one timed).
        t: timestep fed to the model.
        repeats: timed calls (>= 1); the minimum is returned.
        warmup: untimed calls first.
    """
    device = _model_device(model, x)
    tt = torch.full((x.shape[0],), float(t), dtype=torch.float32, device=x.device)
    best = math.inf
    with torch.no_grad():
        for _ in range(max(0, warmup)):
            model(x, tt)
        synchronize(device)
        for _ in range(max(1, repeats)):
            start = time.perf_counter()
            model(x, tt)
            synchronize(device)
            best = min(best, time.perf_counter() - start)
    return best


def _speed_key(model: Any, x: torch.Tensor) -> dict[str, Any] | None:
    if isinstance(model, OptimizedEpsModel):
        return model.speed_key(x)
    if isinstance(model, nn.Module) and x.device.type == "cpu":
        from dclip_cli import speed_profile

        return speed_profile.record_key(model, tuple(x.shape), device="cpu", precision="fp32", path="plain")
    return None


def recorded_seconds(model: Any, x: torch.Tensor) -> float | None:
    """Seconds per call of ``model`` on batches like ``x`` from the machine's speed profile, or ``None``."""
    from dclip_cli import speed_profile

    try:
        return speed_profile.load_seconds(_speed_key(model, x))
    except Exception:  # the profile is an optimisation: never let it break a command
        return None


def record_seconds(model: Any, x: torch.Tensor, seconds: float) -> None:
    """Store a measured (warm) time per call of ``model`` on batches like ``x`` in the machine's speed profile."""
    from dclip_cli import speed_profile

    with contextlib.suppress(Exception):
        speed_profile.store_seconds(_speed_key(model, x), seconds)


def warm_call_seconds(model: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], x: torch.Tensor) -> float:
    """Seconds of one warm ``model(x, t)`` call without gradient, for estimates.

    From the machine's speed profile (:mod:`dclip_cli.speed_profile`) when an earlier command recorded it for this
    model, precision and input shape: then no UNet call is made. Otherwise one untimed warm-up call (the first
    call of a shape builds kernels and reorders weights, and would make the estimate up to 2x too long) and one
    timed call, both on ``x`` at t = 0, and the result is recorded for the next command. On an
    :class:`OptimizedEpsModel` the timed call's result is kept and served to the next call if that is the same
    call, which is the first step of a DDIM inversion of ``x``: the timing then costs one UNet call, once per
    machine, model and shape.

    Args:
        model: eps-callable (time the model you will run: optimized or not).
        x: (B, C, H, W) one batch as it will be fed.
    """
    known = recorded_seconds(model, x)
    if known is not None:
        return known
    device = _model_device(model, x)
    t = torch.zeros((x.shape[0],), dtype=torch.float32, device=x.device)
    with torch.no_grad():
        model(x, t)
        synchronize(device)
        if isinstance(model, OptimizedEpsModel):
            model.keep_next_result()
        start = time.perf_counter()
        model(x, t)
        synchronize(device)
    seconds = time.perf_counter() - start
    record_seconds(model, x, seconds)
    return seconds


#: a training call (forward, backward, its share of the optimizer step) costs about this many forwards (3.3-3.7
#: measured on a CPU, docs/performance.md); checkpointing adds one more forward
BACKWARD_FACTOR = 3.5


def estimate_seconds(
    model: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    n_calls: int,
    *,
    train_calls: int = 0,
    checkpointing: bool = False,
    seconds_per_call: float | None = None,
) -> float:
    """Estimate the run time of ``n_calls`` model calls on batches like ``x`` from one measured call.

    The time of one forward of ``x`` is extrapolated: ``n_calls`` inference calls plus ``train_calls`` calls with
    backward, each worth :data:`BACKWARD_FACTOR` forwards (one more with gradient checkpointing). Optimizer steps,
    losses and I/O are not counted.

    The time per call is :func:`warm_call_seconds`: from the machine's speed profile when an earlier command
    recorded it (no UNet call), else measured on ``x``, at the cost of one extra call on an
    :class:`OptimizedEpsModel` (two on another model).

    Args:
        model: eps-callable (time the model you will run: optimized or not).
        x: (B, C, H, W) one batch as it will be fed.
        n_calls: inference calls (inversion + generation steps times batches).
        train_calls: UNet calls that are back-propagated (fine-tuning).
        checkpointing: whether those recompute their activations.
        seconds_per_call: a measurement to reuse instead of timing one call.

    Returns:
        Estimated seconds.
    """
    per_call = warm_call_seconds(model, x) if seconds_per_call is None else seconds_per_call
    factor = BACKWARD_FACTOR + (1.0 if checkpointing else 0.0)
    return per_call * (max(0, n_calls) + factor * max(0, train_calls))


__all__ = [
    "BACKWARD_FACTOR",
    "CHECKPOINTING_CHOICES",
    "PRECISIONS",
    "OptimizedEpsModel",
    "autocast",
    "cpu_flags_have_bf16",
    "cpu_has_native_bf16",
    "describe_precision",
    "device_name",
    "device_supports_bf16",
    "estimate_seconds",
    "cpu_name",
    "current_rss_bytes",
    "optimize_model",
    "peak_memory_bytes",
    "precision_name",
    "recorded_seconds",
    "reset_peak_memory",
    "resolve_checkpointing",
    "resolve_precision",
    "set_gradient_checkpointing",
    "synchronize",
    "time_forward",
    "warm_call_seconds",
    "track_peak_memory",
    "tune_cpu_allocator",
    "unwrap_model",
]
