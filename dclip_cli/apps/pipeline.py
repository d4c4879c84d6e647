"""The batch loop the editing applications share: invert (through the latent cache), generate, write each input's
outputs with its sidecar, and report.

``edit``, ``mix`` and ``translate`` differ only in the eps-model they generate with and in what they record; a
:class:`Run` holds everything else.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dclip_cli.apps.config import Outputs, SamplingSettings, batches
from dclip_cli.apps.inputs import InputImage, Inputs
from dclip_cli.distributed import current

if TYPE_CHECKING:
    from dclip_cli.apps.session import Session
    from dclip_cli.manifest import Timings
    from dclip_cli.outputs import OutputSet
    from dclip_cli.store import LoadedModel

#: progress labels of the phases
INVERTING, RECONSTRUCTING, GENERATING, PROJECTING = "Inverting", "Reconstructing", "Generating", "Projecting"


@dataclass
class ImageResult:
    """What one input produced.

    Args:
        input: the input file.
        outputs: the files written.
        metrics: metric values of the main output (see :mod:`dclip_cli.metrics`).
        manifest: the sidecar document.
    """

    input: Path
    outputs: OutputSet
    metrics: dict[str, float]
    manifest: dict[str, Any]


@dataclass
class RunReport:
    """The outcome of :func:`edit_images`, :func:`mix_images` or :func:`translate_images`.

    Args:
        results: one entry per input that was processed.
        failed: ``(input, reason)`` for each input that could not be read.
        preset: the preset (domain) used.
        detection: how the domain was chosen.
        models: the diffusion models used (base first).
    """

    results: list[ImageResult]
    failed: list[tuple[Path, str]]
    preset: str
    detection: Any
    models: list[LoadedModel]

    @property
    def ok(self) -> bool:
        return not self.failed


@dataclass
class Batch:
    """One batch of inputs with their planned outputs; ``x0`` is (B, 3, S, S) on the session's device; ``keys``
    the content hash of each input file (what its noise is seeded from)."""

    items: Sequence[tuple[InputImage, OutputSet]]
    x0: Any
    timings: Timings
    keys: list[str]


class Run:
    """One run of an editing application over its inputs.

    Args:
        session: the session.
        command: ``edit``, ``mix`` or ``translate`` (recorded in the sidecars).
        inputs: the prepared inputs and the domain.
        plans: the planned outputs, one per input.
        outputs: the output settings.
        salt: what the run does (the edit's tag), mixed into every image's noise seed with ``--seed`` and the
            image's content hash (:func:`~dclip_cli.apps.config.image_seed`).
    """

    def __init__(
        self,
        session: Session,
        command: str,
        inputs: Inputs,
        plans: Sequence[OutputSet],
        outputs: Outputs,
        *,
        salt: str = "",
    ) -> None:
        from dclip_cli.manifest import Timings

        self.session = session
        self.command = command
        self.salt = salt
        self.inputs = inputs
        self.preset = inputs.preset
        self.plans = list(plans)
        self.outputs = outputs
        self.timings = Timings()  # the phases before the batches (loading models)
        self.started = time.perf_counter()
        self.results: list[ImageResult] = []
        self.totals: dict[str, int] = {}
        #: the metrics this run computes (set by the application; recorded in the sidecars)
        self.metric_names: list[str] = []
        # under torchrun the inputs another rank loaded (x0 None) are its work; every rank planned every output
        # before any is written
        mine = [
            (inp, plan) for inp, plan in zip(inputs.images, self.plans, strict=True) if inp.x0 is not None
        ]
        self._batches = batches(mine, session.runtime.batch_size)
        current().barrier()

    @property
    def reporter(self) -> Any:
        return self.session.reporter

    @property
    def n_batches(self) -> int:
        return len(self._batches)

    def first_batch(self) -> Any:
        """The inputs of the first batch on the device (what the time estimate runs on)."""
        import torch

        return torch.cat([inp.x0 for inp, _ in self._batches[0]]).to(self.session.device)

    def plan(
        self,
        totals: dict[str, int],
        model: Any,
        *,
        calls: int | None = None,
        what: str = "",
        choices: Sequence[str] = (),
    ) -> None:
        """Set the number of UNet calls of each phase (by progress label) and, before the run, estimate the time of
        ``calls`` of them (default: all; leave out what the caches serve) from one warm call of ``model`` on the
        first batch: say it, and ask (or stop) before a long run (:meth:`Session.check_time`; ``what`` and
        ``choices`` word it)."""
        self.totals = {label: n for label, n in totals.items() if n}
        n_calls = sum(self.totals.values()) if calls is None else calls
        if self._batches:  # under torchrun a rank may have no batch of its own
            self.session.check_time(
                model, self.first_batch(), infer_calls=n_calls, what=what, choices=choices
            )

    def plan_generation(
        self,
        base: LoadedModel,
        settings: SamplingSettings,
        *,
        inverted: bool,
        need_rec: bool,
        gen_calls: int,
        what: str,
    ) -> None:
        """:meth:`plan` for a run that inverts its inputs (unless ``inverted``: a ``--latent`` was given),
        reconstructs them when ``need_rec`` and makes ``gen_calls`` generation calls; the estimate leaves out the
        inversions and reconstructions the latent cache already holds (``what`` gets "inverting and " before it
        when some inversion is left)."""
        from dclip_cli.estimate import GPU_CHOICE

        n = self.n_batches
        inv_b, rec_b = self.uncached(base, settings, need_rec) if not inverted else (0, n * need_rec)
        self.plan(
            {
                INVERTING: (settings.n_inv_steps - 1) * n if not inverted else 0,
                GENERATING: gen_calls,
                RECONSTRUCTING: settings.n_gen_steps * n if need_rec else 0,
            },
            base.model,
            calls=(settings.n_inv_steps - 1) * inv_b + gen_calls + settings.n_gen_steps * rec_b,
            what=("inverting and " if inv_b else "") + what,
            choices=["fewer steps (--inv-steps 10 --steps 10)", GPU_CHOICE],
        )

    def uncached(self, base: LoadedModel, settings: SamplingSettings, need_rec: bool) -> tuple[int, int]:
        """``(batches to invert, batches to reconstruct)``: the batches of this run whose inversion (and, when
        ``need_rec``, reconstruction) is not in the latent cache already (read from the cache files' headers)."""
        if not base.sha256:
            return self.n_batches, self.n_batches if need_rec else 0
        from dclip_cli.checkpoints.cache import cache_dir
        from dclip_cli.latents import LatentCache

        cache = LatentCache(cache_dir() / "latents")
        key = self.session.latent_key(str(base.sha256))
        same = settings.n_gen_steps == settings.n_inv_steps and settings.eta == 0
        inv = rec = 0
        for items in self._batches:
            found = [cache.has(inp.x0, key, settings.t0, settings.n_inv_steps) for inp, _ in items]
            inv += not all(lat for lat, _ in found)
            rec += need_rec and not (same and all(r for _, r in found))
        return inv, rec

    def batches(self) -> Iterator[Batch]:
        import torch

        from dclip_cli.manifest import Timings

        for items in self._batches:
            x0 = torch.cat([inp.x0 for inp, _ in items]).to(self.session.device)
            keys = [str(inp.info.get("image_sha256") or inp.path) for inp, _ in items]
            yield Batch(items, x0, Timings(), keys)

    def generators(self, batch: Batch, settings: SamplingSettings) -> list[Any]:
        """One noise generator per image of ``batch`` (see :meth:`SamplingSettings.image_generators`)."""
        return settings.image_generators(self.session.device, batch.keys, self.salt)

    # -- the diffusion steps ---------------------------------------------------------------------------------------

    def callback(self, label: str) -> Callable[[dict[str, Any]], None]:
        """A DDIM callback advancing the ``label`` bar by one model call (its total from :meth:`plan`)."""
        total = self.totals.get(label)

        def callback(info: dict[str, Any]) -> None:
            self.reporter.progress(label, total=total, status=f"t = {info.get('t')}")

        return callback

    def generate(
        self, model: Any, x_lat: Any, settings: SamplingSettings, batch: Batch, label: str = GENERATING
    ) -> Any:
        """DDIM generation from ``x_lat`` (the inputs of ``batch``); η noise from per-image generators seeded with
        ``--seed``, the input file's content and the run's edit (fresh for every call), so the base reconstruction
        and a strength-0 edit are the same computation and no result depends on the batch size."""
        import torch

        from dclip_cli.diffusion.ddim import generate

        generator = self.generators(batch, settings) if settings.eta > 0 else None
        with torch.no_grad():
            return generate(
                model, x_lat, t0=settings.t0, n_steps=settings.n_gen_steps, eta=settings.eta, generator=generator,
                callback=self.callback(label),
            )  # fmt: skip

    def invert(
        self,
        base: LoadedModel,
        x0: Any,
        settings: SamplingSettings,
        batch: Batch,
        *,
        need_rec: bool,
        latent: Any = None,
        use_cache: bool = True,
    ) -> tuple[Any, Any]:
        """DDIM inversion with the base model (always the base model, η = 0; reference sections 5 and 7.1) and,
        when ``need_rec``, the base model's reconstruction generated with the run's settings.

        Inversions are kept in the content-keyed latent cache (image content, base SHA-256, t0, inversion steps;
        FIX 12); the cached reconstruction is reused when it is the same computation (same step count, η = 0).

        Returns:
            ``(x_lat, x_rec)``, both (B, 3, S, S) on the session's device; ``x_rec`` is ``None`` unless
            ``need_rec``.
        """
        import torch

        from dclip_cli.diffusion.ddim import invert
        from dclip_cli.manifest import numerics_record

        session = self.session
        fast_base = session.fast(base.model)
        if latent is not None:
            x_lat = latent.to(session.device)
            return x_lat, (
                self.generate(fast_base, x_lat, settings, batch, RECONSTRUCTING) if need_rec else None
            )
        n = x0.shape[0]
        same = settings.n_gen_steps == settings.n_inv_steps and settings.eta == 0
        cache = None
        lat: list[Any] = [None] * n
        rec: list[Any] = [None] * n
        key = session.latent_key(str(base.sha256))
        if use_cache and base.sha256:
            from dclip_cli.checkpoints.cache import cache_dir
            from dclip_cli.latents import LatentCache

            cache = LatentCache(cache_dir() / "latents")
            for i in range(n):
                hit = cache.get_latent(x0[i : i + 1].detach().cpu(), key, settings.t0, settings.n_inv_steps)
                if hit is not None:
                    lat[i] = hit[0].to(session.device)
                    rec[i] = hit[1].to(session.device) if same and hit[1] is not None else None
        misses = [i for i in range(n) if lat[i] is None]
        had_rec = [r is not None for r in rec]
        if misses:
            x_miss = invert(fast_base, x0[misses], t0=settings.t0, n_steps=settings.n_inv_steps,
                            callback=self.callback(INVERTING))  # fmt: skip
            for j, i in enumerate(misses):
                lat[i] = x_miss[j : j + 1]
        else:
            self.reporter.progress(INVERTING, advance=settings.n_inv_steps - 1, total=self.totals.get(INVERTING),
                                   status="cached")  # fmt: skip
        x_lat = torch.cat(lat)
        x_rec = None
        if need_rec:
            if all(r is not None for r in rec):
                x_rec = torch.cat(rec)
                self.reporter.progress(RECONSTRUCTING, advance=settings.n_gen_steps,
                                       total=self.totals.get(RECONSTRUCTING), status="cached")  # fmt: skip
            else:
                x_rec = self.generate(fast_base, x_lat, settings, batch, RECONSTRUCTING)
        if cache is not None:
            # every new latent is stored; its reconstruction too when it is the same computation (N steps, η = 0)
            keep_rec = x_rec is not None and same
            for i in range(n):
                if i in misses or (keep_rec and not had_rec[i]):
                    cache.put(
                        x0[i : i + 1].detach().cpu(), key, settings.t0, settings.n_inv_steps, x_lat[i : i + 1],
                        x_rec[i : i + 1] if keep_rec and x_rec is not None else None,
                        metadata={"numerics": numerics_record(session.device, session.precision_name())},
                    )  # fmt: skip
        return x_lat, x_rec

    # -- outputs -------------------------------------------------------------------------------------------------

    def sidecar(
        self,
        inp: InputImage,
        plan: OutputSet,
        batch: Batch,
        *,
        settings: dict[str, Any],
        sampling: SamplingSettings,
        models: Sequence[LoadedModel | dict[str, Any]],
        metric_models: Any,
        metrics: dict[str, float],
        extra: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """The sidecar document of one input: the command's ``settings`` after the shared ones."""
        from dclip_cli.manifest import build_manifest, input_record, numerics_record

        session = self.session
        detection = self.inputs.detection
        shared = {
            "domain": self.preset.name,
            "domain_detection": (
                {"method": "requested"}
                if detection is None
                else {
                    "method": detection.method,
                    "confidence": detection.confidence,
                    "scores": detection.scores,
                }
            ),
        }
        common = {
            "t0": sampling.t0,
            "n_inv_steps": sampling.n_inv_steps,
            "n_gen_steps": sampling.n_gen_steps,
            "eta": sampling.eta,
            "batch_size": session.runtime.batch_size,
            "precision": session.precision_name(),
            "clip_model": session.clip_model,
            "metrics": list(self.metric_names),
            "device": str(session.device),
        }
        docs = [m if isinstance(m, dict) else m.record() for m in models]
        if metric_models.clip is not None:
            docs.append(session.clip_record())
        docs.extend(session.extra_models)
        outputs_doc: dict[str, Any] = {
            "image": str(plan.image.resolve()),
            "compare": str(plan.compare.resolve()) if plan.compare is not None else None,
            "sidecar": str(plan.sidecar.resolve()),
        }
        if plan.intermediates:
            outputs_doc["intermediates"] = [str(p.resolve()) for p in plan.intermediates]
        return build_manifest(
            command=self.command,
            inputs=[input_record(inp.path)],
            outputs=outputs_doc,
            settings={**shared, **common, **settings},
            seed=sampling.seed,
            models=docs,
            timings={
                **self.timings.phases,
                **batch.timings.phases,
                "total": time.perf_counter() - self.started,
            },
            metrics=metrics,
            device=str(session.device),
            extra=extra or {},
            numerics=numerics_record(session.device, session.precision_name()),
        )

    def write(
        self,
        inp: InputImage,
        plan: OutputSet,
        *,
        main: Any,
        compare: tuple[list[Any], list[str]] | None,
        intermediates: Sequence[Any] = (),
        metrics: dict[str, float],
        doc: Callable[[], dict[str, Any]],
    ) -> None:
        """Write one input's image, optional compare sheet and intermediates, and its sidecar as one set: the files
        are renamed into place only once all of them are complete (``--overwrite`` keeps the previous set until
        then), and no image is written from non-finite values. Then report the written paths (an ``output``
        event), so a caller interrupted later still knows what was completed."""
        from dclip_cli import images
        from dclip_cli.manifest import write_manifest
        from dclip_cli.outputs import write_together
        from dclip_cli.progress import Event

        document = doc()
        files: list[tuple[Path, Callable[[Path], object]]] = [
            (plan.image, lambda p: images.save_image(main, p, overwrite=True))
        ]
        if plan.compare is not None and compare is not None:
            panels, labels = compare
            files.append(
                (
                    plan.compare,
                    lambda p: images.save_image(images.image_grid(panels, labels), p, overwrite=True),
                )
            )
        for path, x in zip(plan.intermediates, intermediates, strict=True):
            files.append((path, partial(_save_image, x)))
        files.append((plan.sidecar, lambda p: write_manifest(p, document, overwrite=True)))
        write_together(files, overwrite=self.outputs.overwrite)
        result = ImageResult(inp.path, plan, metrics, document)
        self.results.append(result)
        self.reporter.emit(Event("output", data={"result": result}))

    def report(self, models: Sequence[LoadedModel]) -> RunReport:
        """The run's report; under torchrun every rank's results, in input order."""
        results = self.results
        if current().active:
            order = {str(plan.image): i for i, plan in enumerate(self.plans)}
            results = sorted(
                sum(current().all_gather_object(results), []), key=lambda r: order[str(r.outputs.image)]
            )
        return RunReport(results, self.inputs.failed, self.preset.name, self.inputs.detection, list(models))


def _save_image(x: Any, path: Path) -> None:
    from dclip_cli import images

    images.save_image(x, path, overwrite=True)
