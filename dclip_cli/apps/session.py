"""The session: what one run of an application shares (the preset registry, the device and precision, networks
loaded once, the progress reporter). A long-lived caller (the web UI, a notebook) can keep one session across
runs; its caches stay bounded."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dclip_cli.apps.config import Runtime
from dclip_cli.distributed import current
from dclip_cli.errors import ConfigError, DclipError
from dclip_cli.progress import ProgressCallback, Reporter

if TYPE_CHECKING:
    from dclip_cli.presets.preset import Preset
    from dclip_cli.store import LoadedModel


class Session:
    """What one command run shares: the preset registry, the device, and networks loaded once.

    Args:
        runtime: device, precision, compile, CLIP model, batch size and face requirement; or give its fields as
            keyword arguments (``Session(device="cpu", precision="bf16")``).
        progress: a :class:`~dclip_cli.progress.Reporter` or a callback receiving the run's events.
    """

    #: edit models whose fast wrappers a session keeps (mixes use several at once)
    KEEP_EDIT_MODELS = 4

    def __init__(
        self,
        runtime: Runtime | None = None,
        *,
        progress: Reporter | ProgressCallback | None = None,
        **runtime_fields: Any,
    ) -> None:
        from dclip_cli.device import resolve_device
        from dclip_cli.precision import resolve_precision
        from dclip_cli.presets.manager import get_registry

        self.runtime = runtime if runtime is not None else Runtime(**runtime_fields)
        self.device = resolve_device(self.runtime.device)
        self.clip_model = self.runtime.clip_model
        self.require_face = self.runtime.require_face
        self.precision_spec = self.runtime.precision
        self.precision = resolve_precision(self.runtime.precision, self.device)  # autocast dtype, None = fp32
        self.compile = self.runtime.compile
        self.reporter = Reporter.of(progress)
        self.registry = get_registry()
        self._fast: dict[
            int, tuple[Any, Any]
        ] = {}  # id(model) -> (model, wrapper), least recently used first
        self._clip: Any = None
        self._bases: dict[str, LoadedModel] = {}
        self._lpips: Any = None
        self._identity: dict[str, Any] = {}
        self.extra_models: list[dict[str, Any]] = []
        #: whether the user already agreed to a long run in this session (later estimates do not ask again)
        self.approved = False
        self._per_call: dict[tuple[Any, ...], float] = {}

    # -- speed ---------------------------------------------------------------------------------------------------

    def fast(self, model: Any) -> Any:
        """The eps-model to run for inference: a wrapper running ``model`` in the session's precision (autocast,
        channels_last, optionally compiled). In float32 the wrapper calls ``model`` itself, bit for bit (the
        original's numerics); it is there for the time estimate, whose timed call then serves the first inversion
        step, and for the machine's speed profile.

        Wrappers are kept for the base models and the few most recently used edit models, so that a session reused
        for many edits does not keep every edit model (and its low-precision weight copy) alive.
        """
        hit = self._fast.pop(id(model), None)
        if hit is None or hit[0] is not model:
            from dclip_cli.precision import optimize_model

            plain = self.precision is None and not self.compile
            hit = (
                model,
                optimize_model(model, precision=self.precision, device=self.device, compile=self.compile,
                               channels_last=not plain),
            )  # fmt: skip
        self._fast[id(model)] = hit  # most recently used last
        bases = {id(b.model) for b in self._bases.values()}
        others = [key for key in self._fast if key not in bases]
        for key in others[: max(0, len(others) - self.KEEP_EDIT_MODELS)]:
            del self._fast[key]
        return hit[1]

    def check_time(
        self,
        model: Any,
        x: Any,
        *,
        infer_calls: int,
        train_calls: int = 0,
        checkpointing: bool = False,
        what: str = "",
        choices: Sequence[str] = (),
    ) -> None:
        """Before the run's UNet calls, estimate their time from one warm call of ``model`` (in this session's
        precision) on ``x`` (one batch), say it, and, when it is long, ask or stop as the runtime's ``long_runs``
        says (:func:`dclip_cli.estimate.check_estimate`).

        Raises:
            NotConfirmedError: the run is long and was not confirmed.
        """
        from dclip_cli.estimate import check_estimate, estimate_run

        long_runs = None if self.approved else self.runtime.long_runs
        ctx = current()
        if ctx.active:  # under torchrun no rank asks (the ranks must decide alike); rank 0 says the estimate
            long_runs = None
            if not ctx.is_main:
                return
        if self.reporter.callback is None and long_runs is None:
            return
        fast = self.fast(model)
        key = (id(fast), tuple(x.shape))
        estimate = estimate_run(
            fast, x, infer_calls=infer_calls, train_calls=train_calls, checkpointing=checkpointing,
            dtype=self.precision, device=self.device, what=what, seconds_per_call=self._per_call.get(key),
        )  # fmt: skip
        if estimate is not None:
            self._per_call[key] = estimate.per_call
        if check_estimate(self.reporter, estimate, long_runs=long_runs, choices=choices):
            self.approved = True

    def confirm(self, message: str, choices: Sequence[str]) -> None:
        """Before doing more than the user may expect (``message`` says what): go on with a warning when the
        runtime has no ``long_runs`` policy (the library default, ``--yes``) or the user already agreed; else ask
        on a terminal, or stop.

        Raises:
            NotConfirmedError: no terminal to ask on, or the user declined; the error lists ``choices``.
        """
        from dclip_cli.errors import NotConfirmedError

        policy = self.runtime.long_runs
        if policy is None or self.approved or current().active:  # under torchrun no rank asks
            self.reporter.warn(message)
            return
        options = "; ".join(choices)
        if policy.ask is not None and policy.ask(f"{message} Other choices: {options}. Go on?"):
            self.approved = True
            return
        raise NotConfirmedError(
            message + " Stopped before starting; nothing was written.",
            hint=f"Choose: {options}; or pass --yes to go on.",
        )

    def precision_name(self) -> str:
        """``fp32``, ``bf16`` or ``fp16``: what the UNets of this session compute in (for the sidecars)."""
        from dclip_cli.precision import precision_name

        return precision_name(self.precision)

    def latent_key(self, sha256: str) -> str:
        """The model part of latent-cache keys: latents made in low precision are kept apart from float32 ones."""
        return sha256 if self.precision is None else f"{sha256}+{self.precision_name()}"

    def training_precision(self) -> str:
        """The ``--precision`` value for on-the-fly fine-tuning (float16 has no place in training)."""
        return "auto" if self.precision_spec == "fp16" else self.precision_spec

    # -- presets ------------------------------------------------------------------------------------------------

    def preset(self, name: str) -> Preset:
        return self.registry.preset(name)

    def presets(self) -> list[Preset]:
        return [
            self.registry.presets[n]
            for n in sorted(self.registry.presets)
            if n not in self.registry.duplicates
        ]

    # -- networks -----------------------------------------------------------------------------------------------

    def clip(self) -> Any:
        """The CLIP model (loaded on first use)."""
        if self._clip is None:
            from dclip_cli.store import load_clip

            self._clip = load_clip(self.clip_model, device=self.device, progress=self.reporter)
            self.reporter.info(f"Loaded CLIP {self.clip_model}.")
        return self._clip

    def clip_record(self) -> dict[str, Any]:
        from dclip_cli.manifest import model_record

        path = Path(self.clip_model)
        if path.is_file():
            return model_record("clip", path.name, path=path)
        try:
            from dclip_cli.checkpoints import cache
            from dclip_cli.losses.clip import clip_registry_name
            from dclip_cli.store import get_spec, known_sha256

            spec = get_spec(clip_registry_name(self.clip_model))
            cached = cache.checkpoint_path(spec)
            if cached.is_file():
                return model_record("clip", spec.name, path=cached, sha256=known_sha256(cached))
            return model_record("clip", spec.name, sha256=spec.sha256)
        except Exception:  # the record is informative only
            return model_record("clip", self.clip_model)

    def base(self, preset: Preset) -> LoadedModel:
        """The preset's base diffusion model (fetched and loaded once per session)."""
        loaded = self._bases.get(preset.name)
        if loaded is None:
            from dclip_cli.store import load_base

            loaded = load_base(preset, device=self.device, progress=self.reporter)
            self._bases[preset.name] = loaded
        return loaded

    def lpips(self) -> Any:
        if self._lpips is None:
            from dclip_cli.losses.lpips import LPIPSLoss
            from dclip_cli.manifest import model_record
            from dclip_cli.store import lpips_trunk

            trunk = lpips_trunk("alex", progress=self.reporter)
            self._lpips = LPIPSLoss("alex", trunk_path=trunk).to(self.device)
            self.extra_models.append(model_record("lpips", "lpips-alex", path=trunk))
        return self._lpips

    def identity(self, preset: Preset) -> Any | None:
        """The preset's identity network (faces), or ``None`` when the preset has none."""
        name = preset.identity_model
        if not name:
            return None
        if name not in self._identity:
            from dclip_cli.manifest import model_record
            from dclip_cli.store import identity_network

            if name not in self.registry.identity_models:
                raise ConfigError(
                    f"Preset {preset.name!r} names the identity model {name!r}, which no plugin registers."
                )
            net, checkpoint, weights = identity_network(preset, self.device, progress=self.reporter)
            self._identity[name] = net
            self.extra_models.append(model_record("identity", checkpoint, path=weights))
        return self._identity[name]

    def metric_models(self, preset: Preset | None, wanted: Sequence[str], *, required: bool = False) -> Any:
        """Load the networks for the ``wanted`` metrics.

        Args:
            preset: the run's preset (for the identity network).
            wanted: metric names (``clip``, ``lpips``, ``identity``; ``psnr`` needs no network).
            required: the metrics were asked for explicitly: one that cannot be loaded is an error. Otherwise it is
                skipped with one warning naming the fix.

        Raises:
            DclipError: ``required`` and a network cannot be loaded (its own error, naming the metric).
        """
        from dclip_cli.metrics import MetricModels

        models = MetricModels()
        loaders: list[tuple[str, str, Any]] = [
            ("clip", "CLIP metrics", lambda: self.clip()),
            ("lpips", "LPIPS", lambda: self.lpips().per_sample),
            ("identity", "Identity similarity", lambda: self.identity(preset) if preset else None),
        ]
        for name, label, load in loaders:
            if name not in wanted:
                continue
            try:
                setattr(models, name, load())
            except DclipError as exc:
                if required:
                    raise type(exc)(
                        f"{label} cannot be computed ('--metrics {name}' was asked for): {exc.message}",
                        hint=exc.hint,
                    ) from exc
                fix = f" {exc.hint}" if exc.hint else ""
                self.reporter.warn(f"{label} skipped: {exc.message}{fix}")
        return models
