"""The fine-tuning job behind ``dclip finetune`` (and the on-the-fly fine-tuning of ``dclip edit``).

Steps: load the base model; gather the training images (photos and/or samples of the base model); invert them with
the content-keyed latent cache; load the losses' networks (CLIP, and identity / LPIPS only when weighted); then for
each text edit, starting from the base each time: the pure loop :func:`dclip_cli.training.loop.finetune`, with
per-epoch previews on held-out samples and resumable state in a run folder, and the artifact saved atomically.
"""

from __future__ import annotations

import copy
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dclip_cli.distributed import current, decide_on_main, main_only
from dclip_cli.errors import ConfigError
from dclip_cli.estimate import LongRuns, check_finetune_time
from dclip_cli.latents import tensor_sha256
from dclip_cli.outputs import ArtifactDest
from dclip_cli.precision import optimize_model, precision_name, resolve_precision
from dclip_cli.presets.preset import Preset
from dclip_cli.progress import Event, ProgressCallback, Reporter
from dclip_cli.textedit import TextEdit
from dclip_cli.training.config import FinetuneConfig
from dclip_cli.training.data import (
    TrainingData,
    invert_training_images,
    samples_to_draw,
    training_images,
    uncached_latents,
)
from dclip_cli.training.ddp import agree_on_start
from dclip_cli.training.loop import LossFn, StepInfo, TrainingState, finetune, model_device
from dclip_cli.training.records import (  # noqa: F401 - importable from here too
    artifact_metadata,
    default_run_dir,
    numerics_record,
    run_fingerprint,
    weights_sha256,
)
from dclip_cli.training.safety import edit_locks, finish_failed, reusable_artifact

DEFAULT_CLIP_MODEL = "ViT-B/16"
STATE_FILE = "state.pt"
RUN_FILE = "run.json"
PREVIEWS = "previews"


@dataclass
class PairResult:
    """The outcome of training one text edit.

    Args:
        pair: the edit.
        config: the settings used.
        artifacts: files written (library and/or ``output``).
        run_dir: the run folder (previews, ``run.json``).
        losses: mean loss terms of the last epoch (``clip``, ``l1``, …, ``total``).
        seconds: wall-clock time of this edit.
        previews: preview images written.
        resumed_from: epochs skipped because ``resume`` found them finished.
        model: the fine-tuned model when ``return_models`` was set, else ``None``.
        reused: the artifacts were made by another process while this one waited for the edit's lock (nothing
            was trained).
    """

    pair: TextEdit
    config: FinetuneConfig
    artifacts: list[Path]
    run_dir: Path
    losses: dict[str, float]
    seconds: float
    previews: list[Path] = field(default_factory=list)
    resumed_from: int = 0
    model: nn.Module | None = None
    reused: bool = False


@dataclass
class FinetuneResult:
    """The outcome of :func:`run_finetune`.

    Args:
        preset: preset name.
        base_checkpoint: name of the base checkpoint (registry name or file name).
        base_sha256: its SHA-256.
        pairs: one :class:`PairResult` per trained edit.
        n_images: training images per edit.
        cache_hits: inversions taken from the latent cache (training and preview images, all edits).
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


def _save_preview(
    model: nn.Module, preview: TrainingData, config: FinetuneConfig, dest: Path, label: str
) -> Path:
    from dclip_cli.diffusion.ddim import generate
    from dclip_cli.images import image_grid, save_image

    device = model_device(model)
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


def _configs(
    preset: Preset,
    pairs: Sequence[TextEdit],
    config: FinetuneConfig | None,
    overrides: Mapping[str, Any] | None,
) -> list[FinetuneConfig]:
    """Per edit: ``config``, else the preset's defaults, the named edit's t₀ and ``overrides``."""
    extra = {k: v for k, v in (overrides or {}).items() if v is not None}
    configs = []
    for pair in pairs:
        if config is not None:
            configs.append(config)
            continue
        values = dict(extra)
        if pair.t0 is not None and "t0" not in values:
            values["t0"] = pair.t0
        configs.append(FinetuneConfig.from_preset(preset, **values))
    return configs


def _losses(
    preset: Preset,
    configs: Sequence[FinetuneConfig],
    clip_loss: LossFn | None,
    clip_model: str,
    device: torch.device,
    reporter: Reporter,
) -> dict[str, Any]:
    """The loss callables, built first so that a missing identity model or CLIP file fails before any long work
    (identity and LPIPS only when weighted: FIX 8)."""
    from dclip_cli.store import identity_network, load_clip, load_lpips

    if clip_loss is None:
        from dclip_cli.losses.clip import DirectionalCLIPLoss

        reporter.info(f"Loading CLIP {clip_model}")
        clip_loss = DirectionalCLIPLoss(load_clip(clip_model, device=device, progress=reporter))
    id_loss = lpips_loss = None
    if any(c.id_weight > 0 for c in configs):
        from dclip_cli.losses.identity import IdentityLoss

        reporter.info(f"Loading the identity network {preset.identity_model}")
        net, _, _ = identity_network(preset, device, progress=reporter)
        id_loss = IdentityLoss(net).to(device)
    if any(c.lpips_weight > 0 for c in configs):
        reporter.info("Loading LPIPS")
        lpips_loss = load_lpips(progress=reporter, device=device)
    return {"clip_loss": clip_loss, "id_loss": id_loss, "lpips_loss": lpips_loss}


def run_finetune(
    preset: Preset | str,
    *,
    edits: Sequence[str | TextEdit] = (),
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
    library_names: Sequence[str] | None = None,
    save_dtype: str = "fp32",
    overwrite: bool = False,
    run_dir: str | os.PathLike[str] | None = None,
    resume: bool = False,
    n_preview: int = 4,
    return_models: bool = False,
    origin: str = "finetune",
    estimate: bool = True,
    long_runs: LongRuns | None = None,
    progress: Reporter | ProgressCallback | None = None,
) -> FinetuneResult:
    """Fine-tune one or more edits of a preset from its base model and save each as an artifact.

    Fine-tunes of the same edit of a preset run one at a time (:func:`dclip_cli.training.safety.edit_locks`): a
    second run waits, then reuses what the first saved where it was going to save (``PairResult.reused``), or, with
    ``overwrite``, trains after it.

    Args:
        preset: a :class:`~dclip_cli.presets.preset.Preset` or its name.
        edits: named edits of the preset (their source/target texts and t₀), or :class:`TextEdit` records.
        texts: free target texts, with ``src_text`` or the preset's ``source_text`` as the source.
        src_text: source text for ``texts``.
        pairs: explicit (source, target) pairs.
        images: a folder of photos, or image files (prepared like edit inputs).
        n_samples: number of images to draw from the base model by DDIM from seeded noise (default:
            ``preset.n_train_images`` when no photos are given, else 0).
        config: settings for every edit (else the preset's defaults, a named edit's t₀ and ``overrides``).
        overrides: :class:`FinetuneConfig` fields to set over the preset's defaults (``None`` values ignored).
        checkpoint: local base checkpoint file instead of the preset's (loaded with the preset's architecture).
        base_model: an already loaded base model (then give ``base_checkpoint`` and ``base_sha256`` too).
        base_checkpoint: name of that base, for the artifact metadata.
        base_sha256: SHA-256 of that base's file.
        clip_model: CLIP name or file (default ViT-B/16).
        clip_loss: an already built directional loss (then ``clip_model`` only labels the metadata).
        device: ``auto``, ``cpu``, ``cuda``, ... (default auto).
        output: a ``.safetensors`` file (one edit) or a folder for the artifacts.
        library: also save into the edit library as ``<preset>/<key>``; default: only when ``output`` is None.
        library_names: library names to use instead of ``<preset>/<key>``, one per edit.
        save_dtype: ``fp32``, ``fp16`` or ``bf16``.
        overwrite: replace existing artifacts.
        run_dir: run folder (one sub-folder per edit when several); default
            ``<data_dir>/runs/<preset>-<key>-<hash>``.
        resume: continue from the last finished epoch saved in the run folder.
        n_preview: held-out samples previewed after each epoch (0: none).
        return_models: keep each fine-tuned model in its :class:`PairResult`.
        origin: recorded in the artifacts: ``finetune`` (trained on purpose) or ``auto`` (on the fly by an edit;
            such an artifact never takes the place of an official model).
        estimate: estimate the time first (leaving out cached samples and inversions), say it, and apply
            ``long_runs`` (ask or stop before a long run; ``None``: start it).
        progress: receives :class:`~dclip_cli.progress.Event` records: ``info``, ``warning``, ``download``,
            ``progress`` (``data["phase"]`` load/sample/invert), ``pair_start`` (``data``: ``pair``, ``index``,
            ``pairs``, ``config``, ``run_dir``, ``start_epoch``), ``step`` (``data``: the
            :func:`~dclip_cli.training.loop.finetune` step info plus ``index``), ``epoch_end`` (``data``:
            ``index``, ``epoch``, ``epochs``, ``losses``, ``preview``) and ``pair_end`` (``data``: ``index``,
            ``result``). It may raise ``KeyboardInterrupt``: no artifact or temporary file is left (finished
            epochs stay resumable).

    Returns:
        A :class:`FinetuneResult`.

    Raises:
        ConfigError, UnknownEditError, ImageError, CheckpointError, OutputExistsError: as their names say; output
        clashes are detected before any work starts.
        TrainingDivergedError: the loss or the weights became NaN or infinite (no artifact is saved; the state of
            the last finished epoch stays in the run folder, whose ``run.json`` says ``diverged``).
    """
    from dclip_cli.images import expand_inputs
    from dclip_cli.outputs import plan_artifacts
    from dclip_cli.presets.manager import get_registry
    from dclip_cli.textedit import training_edits

    started = time.perf_counter()
    reporter = Reporter.of(progress)
    if isinstance(preset, str):
        preset = get_registry().preset(preset)
    text_pairs = training_edits(preset, edits=edits, texts=texts, src_text=src_text, pairs=pairs)
    configs = _configs(preset, text_pairs, config, overrides)
    if n_preview < 0:
        raise ConfigError(f"The number of preview images must be >= 0, got {n_preview}.")
    if n_samples is not None and n_samples < 0:
        raise ConfigError(f"The number of samples must be >= 0, got {n_samples}.", hint="Pass --samples 8.")
    files = (
        expand_inputs(images, hint="Pass --images with a folder of training photos.")
        if images is not None
        else []
    )
    if n_samples is None:
        n_samples = 0 if files else preset.n_train_images
    if not files and n_samples == 0:
        raise ConfigError("There are no training images.", hint="Pass --images DIR or --samples N (N > 0).")
    destinations = plan_artifacts(
        preset.name, text_pairs, [c.t0 for c in configs], output=output,
        library=output is None if library is None else library, library_names=library_names, overwrite=overwrite,
    )  # fmt: skip
    with edit_locks(preset.name, [p.key for p in text_pairs], reporter):
        reused = decide_on_main(
            lambda: [
                reusable_artifact(dests, pair, base_sha256=base_sha256, t0=cfg.t0, overwrite=overwrite)
                for pair, cfg, dests in zip(text_pairs, configs, destinations, strict=True)
            ]
        )
        if all(paths is not None for paths in reused):  # another process made them all while this one waited
            pairs_done = [
                _reused(p, c, paths or [], reporter)
                for p, c, paths in zip(text_pairs, configs, reused, strict=True)
            ]
            base = base_checkpoint or preset.checkpoint
            return FinetuneResult(
                preset.name, base, base_sha256 or "", pairs_done, 0, 0, 0, time.perf_counter() - started
            )
        return _run(
            preset, text_pairs, configs, destinations, files, n_samples, reporter, started, clip_loss=clip_loss,
            clip_model=clip_model, device=device, checkpoint=checkpoint, base_model=base_model,
            base_checkpoint=base_checkpoint, base_sha256=base_sha256, n_preview=n_preview, run_dir=run_dir,
            resume=resume, save_dtype=save_dtype, overwrite=overwrite, return_models=return_models, origin=origin,
            estimate=estimate, long_runs=long_runs,
        )  # fmt: skip


def _run(
    preset: Preset,
    text_pairs: Sequence[TextEdit],
    configs: Sequence[FinetuneConfig],
    destinations: Sequence[Sequence[ArtifactDest]],
    files: Sequence[Path],
    n_samples: int,
    reporter: Reporter,
    started: float,
    *,
    clip_loss: LossFn | None,
    clip_model: str,
    device: str | torch.device | None,
    checkpoint: str | os.PathLike[str] | None,
    base_model: nn.Module | None,
    base_checkpoint: str | None,
    base_sha256: str | None,
    n_preview: int,
    run_dir: str | os.PathLike[str] | None,
    resume: bool,
    save_dtype: str,
    overwrite: bool,
    return_models: bool,
    origin: str,
    estimate: bool,
    long_runs: LongRuns | None,
) -> FinetuneResult:
    """:func:`run_finetune` once its settings are checked, its outputs planned and the edits' locks held."""
    from dclip_cli.device import resolve_device

    # 1. the losses first (a missing identity model or CLIP file fails before any long work)
    if base_model is not None and device is None:
        dev = model_device(base_model)
    else:
        dev = device if isinstance(device, torch.device) else resolve_device(device)
    losses = _losses(preset, configs, clip_loss, clip_model, dev, reporter)

    # 2. the base model
    if base_model is not None:
        from dclip_cli.artifacts import base_sha256_of

        model, base_name = base_model, base_checkpoint or preset.checkpoint
        # the latent cache and the artifact need an identity for the base: its file hash, else its weights' hash
        base_sha = base_sha256_of(model, base_sha256) or weights_sha256(model)
    else:
        from dclip_cli.store import load_base

        arch = dict(arch=preset.arch, arch_config=dict(preset.arch_config)) if checkpoint is not None else {}
        loaded = load_base(preset, checkpoint=checkpoint, device=dev, progress=reporter, **arch)  # type: ignore[arg-type]
        model, base_name, base_sha = loaded.model, loaded.name, str(loaded.sha256)
    model.eval()
    dev = model_device(model)
    # sampling and inversion run in the configured precision; latents made in low precision are cached apart
    # from float32 ones (which reproduce the original bit for bit)
    infer_dtype = resolve_precision(configs[0].precision, dev)
    infer_model = model if infer_dtype is None else optimize_model(model, precision=infer_dtype)
    cache_sha = base_sha if infer_dtype is None else f"{base_sha}+{precision_name(infer_dtype)}"
    # the time estimate (asking before a long run) comes before any long work; when the samples are cached it
    # comes after loading them, so that cached inversions are left out too
    check_time = partial(check_finetune_time, reporter=reporter, model=infer_model, configs=configs, device=dev,
                         long_runs=long_runs, n_images=len(files) + n_samples, n_preview=n_preview,
                         image_size=preset.image_size)  # fmt: skip
    n_draw = samples_to_draw(n_samples + n_preview, model_sha256=cache_sha, seed=configs[0].seed,
                             n_steps=configs[0].n_gen_steps, batch_size=max(configs[0].batch_size, 4))  # fmt: skip
    if estimate and n_draw:
        check_time(n_draw=n_draw, n_invert=len(files) + n_samples + n_preview)

    # 3. the training images (photos and/or samples) and the held-out preview samples
    x0_all, keys, x_preview = training_images(preset, files, n_samples, n_preview, infer_model, cache_sha,
                                               configs[0], reporter)  # fmt: skip
    preview_keys = [tensor_sha256(x) for x in x_preview]
    if estimate and not n_draw:
        todo = uncached_latents([*keys, *preview_keys], cache_sha, {(c.t0, c.n_inv_steps) for c in configs})
        check_time(n_draw=0, n_invert=todo)

    # 4. each edit, from the base (section 8.1: weights, optimizer and scheduler reset per edit)
    job = _Job(
        preset=preset, model=model, base_name=base_name, base_sha=base_sha, clip_model=clip_model, losses=losses,
        reporter=reporter, n_pairs=len(text_pairs),
        run_dir=Path(run_dir).expanduser() if run_dir is not None else None, resume=resume, save_dtype=save_dtype,
        overwrite=overwrite, return_models=return_models, origin=origin, n_photos=len(files),
    )  # fmt: skip
    data: dict[tuple[int, int], tuple[TrainingData, TrainingData]] = {}
    hits = misses = 0
    results: list[PairResult] = []
    for index, (pair, cfg, dests) in enumerate(zip(text_pairs, configs, destinations, strict=True)):
        if (cfg.t0, cfg.n_inv_steps) not in data:
            reporter.info(f"Inverting the images to t0 = {cfg.t0} ({cfg.n_inv_steps} steps)")
            common = {"model_sha256": cache_sha, "t0": cfg.t0, "n_inv_steps": cfg.n_inv_steps}
            train = invert_training_images(infer_model, x0_all, keys, reporter=reporter, **common)  # type: ignore[arg-type]
            preview = invert_training_images(infer_model, x_preview, preview_keys, **common)  # type: ignore[arg-type]
            hits += train.cache_hits + preview.cache_hits
            misses += len(keys) + len(preview_keys) - train.cache_hits - preview.cache_hits
            data[(cfg.t0, cfg.n_inv_steps)] = (train, preview)
        train, preview = data[(cfg.t0, cfg.n_inv_steps)]
        reuse = decide_on_main(
            partial(reusable_artifact, dests, pair, base_sha256=base_sha, t0=cfg.t0, overwrite=overwrite)
        )
        if reuse is not None:  # another process saved this edit while this one waited for its lock
            result = _reused(pair, cfg, reuse, reporter)
        else:
            result = job.train_pair(index, pair, cfg, dests, train, preview)
        results.append(result)
        reporter.emit(Event("pair_end", message="", data={"index": index, "result": result}))

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


def _reused(pair: TextEdit, cfg: FinetuneConfig, paths: Sequence[Path], reporter: Reporter) -> PairResult:
    """The result of an edit another process fine-tuned while this one waited for its lock."""
    reporter.info(
        f"Another dclip process fine-tuned {pair.key} meanwhile: reusing {', '.join(map(str, paths))}."
    )
    return PairResult(pair, cfg, list(paths), paths[0].parent, {}, 0.0, reused=True)


@dataclass
class _Job:
    """What every edit of a :func:`run_finetune` call shares, and the training of one edit."""

    preset: Preset
    model: nn.Module
    base_name: str
    base_sha: str
    clip_model: str
    losses: dict[str, Any]
    reporter: Reporter
    n_pairs: int
    run_dir: Path | None
    resume: bool
    save_dtype: str
    overwrite: bool
    return_models: bool
    origin: str = "finetune"
    n_photos: int = 0

    def train_pair(
        self,
        index: int,
        pair: TextEdit,
        cfg: FinetuneConfig,
        dests: Sequence[ArtifactDest],
        train: TrainingData,
        preview: TrainingData,
    ) -> PairResult:
        from dclip_cli.artifacts import save_artifact
        from dclip_cli.store import write_entry_meta

        started = time.perf_counter()
        fingerprint = run_fingerprint(
            preset=self.preset.name, base_sha256=self.base_sha, pair=pair, config=cfg, image_keys=train.keys
        )
        if self.run_dir is None:
            folder = default_run_dir(self.preset.name, pair, fingerprint)
        else:
            folder = self.run_dir / pair.key if self.n_pairs > 1 else self.run_dir
        run = _RunFolder(folder, fingerprint)
        state = run.load_state(model_device(self.model)) if self.resume else None
        if self.resume and state is None:
            self.reporter.warn(f"No saved state for {pair.key!r} in {folder}; starting anew.")
        start_epoch = int(state["epochs_done"]) if state is not None else 0
        agree_on_start(start_epoch, current(), folder)  # under torchrun every rank resumes the same state
        run.doc = {
            "preset": self.preset.name,
            "edit": pair.key,
            "src_text": pair.src,
            "trg_text": pair.trg,
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
        resuming = f"; resuming after epoch {start_epoch}" if start_epoch else ""
        self.reporter.emit(
            Event(
                "pair_start",
                message=f"Edit {index + 1}/{self.n_pairs} {pair.key}: {pair.src!r} -> {pair.trg!r} (t0 {cfg.t0}, "
                f"{cfg.n_train_steps} steps, {cfg.mode}, lr {cfg.lr:g}; run folder {folder}){resuming}",
                data={
                    "pair": pair,
                    "index": index,
                    "pairs": self.n_pairs,
                    "config": cfg,
                    "run_dir": folder,
                    "start_epoch": start_epoch,
                },
            )  # fmt: skip
        )
        label = f"Fine-tuning {pair.key}"
        per_epoch = -(-len(train.keys) // cfg.batch_size) * cfg.n_train_steps

        def on_epoch_end(ts: TrainingState) -> None:
            shot = run.end_epoch(ts, preview, cfg)
            text = "  ".join(f"{k} {v:.4f}" for k, v in ts.losses.items())
            self.reporter.emit(
                Event(
                    "epoch_end",
                    message=f"  epoch {ts.epochs_done}/{cfg.epochs}: {text}"
                    + (f"; preview {shot}" if shot else ""),
                    data={
                        "index": index,
                        "epoch": ts.epochs_done - 1,
                        "epochs": cfg.epochs,
                        "losses": ts.losses,
                        "preview": shot,
                    },
                )  # fmt: skip
            )

        def on_step(info: StepInfo) -> None:
            done = info["epoch"] * per_epoch + info["batch"] * cfg.n_train_steps + info["step"]
            losses = info.get("losses") or {}
            status = f"loss {losses['total']:.4f}" if "total" in losses else ""
            self.reporter.emit(
                Event("step", label, done=done, total=cfg.epochs * per_epoch, status=status,
                      data={"index": index, **info})
            )  # fmt: skip

        if state is not None and start_epoch >= cfg.epochs:  # trained, but the artifact was not saved
            tuned = copy.deepcopy(self.model)
            tuned.load_state_dict(state["model"])
            tuned.eval()
        else:
            try:
                tuned = finetune(
                    self.model,
                    train.x0,
                    train.x_lat,
                    src_text=pair.src,
                    trg_text=pair.trg,
                    config=cfg,
                    callback=on_step,
                    on_epoch_end=on_epoch_end,
                    resume=state,
                    **self.losses,
                )
            except BaseException as exc:
                finish_failed(run.doc, exc, folder)  # run.json no longer says "training"
                run.write_doc()
                raise
        del state

        meta = artifact_metadata(
            preset=self.preset.name, pair=pair, config=cfg, base_checkpoint=self.base_name,
            base_sha256=self.base_sha, clip_model=self.clip_model, n_images=len(train.keys), model=self.model,
        )  # fmt: skip
        meta.update(origin=self.origin, n_photos=self.n_photos, n_samples=len(train.keys) - self.n_photos)
        dev = model_device(self.model)
        meta["numerics"] = numerics_record(
            dev, precision_name(resolve_precision(cfg.precision, dev, training=True))
        )
        written = []
        for dest in dests:  # under torchrun rank 0 alone writes (the ranks hold the same weights)
            if current().is_main:
                save_artifact(dest.path, tuned, meta, dtype=self.save_dtype, overwrite=self.overwrite)
                if dest.library_name is not None:
                    write_entry_meta(dest.path, dest.library_name)
            written.append(dest.path)
        current().barrier()
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
    """The run folder of one edit: ``run.json``, the resumable ``state.pt`` and ``previews/epoch-NNN.png``.

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

    @main_only
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
        if not current().is_main:  # rank 0 alone writes the state and the previews
            return None
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

    @main_only
    def finish(self, artifacts: Sequence[Path]) -> None:
        self.state_path.unlink(missing_ok=True)
        self.doc.update(status="done", artifacts=[str(p) for p in artifacts])
        self.write_doc()
