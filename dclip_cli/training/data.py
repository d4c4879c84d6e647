"""Training images for fine-tuning: photos prepared like edit inputs and/or samples drawn from the base model,
with their DDIM inversions (content-keyed latent cache, reference sections 8.2 and 21.2-12)."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from dclip_cli.distributed import current
from dclip_cli.latents import LatentCache, tensor_sha256
from dclip_cli.presets.preset import Preset
from dclip_cli.progress import Event, Reporter
from dclip_cli.training.ddp import map_chunks
from dclip_cli.training.loop import model_device

if TYPE_CHECKING:
    from dclip_cli.training.config import FinetuneConfig


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


def load_training_images(
    files: Sequence[Path], preset: Preset, aligner: object | None, reporter: Reporter
) -> tuple[torch.Tensor, list[str]]:
    """Load and prepare photos like edit inputs (the preset's aligner or a centre crop, resized to S).

    Returns:
        ``(x0, keys)``: (N, 3, S, S) in [-1, 1] and a content key per image.
    """
    from dclip_cli.images import load_and_prepare

    images, keys = [], []
    for i, path in enumerate(files):
        x, info = load_and_prepare(path, preset.image_size, aligner=aligner)
        for message in info.get("warnings", []):
            reporter.warn(message)
        images.append(x)
        keys.append(tensor_sha256(x))  # (1, 3, S, S): the same key dclip edit uses for this image
        _phase(reporter, "load", i + 1, len(files))
    return torch.cat(images), keys


_PHASES = {
    "load": "Loading training images",
    "sample": "Drawing samples",
    "invert": "Inverting training images",
}


def _phase(reporter: Reporter, phase: str, done: int, total: int, status: str = "") -> None:
    """A ``progress`` event of a data phase; ``data["phase"]`` is ``load``, ``sample`` or ``invert``."""
    label = reporter.prefix + _PHASES[phase]
    reporter.emit(Event("progress", label, done=done, total=total, status=status, data={"phase": phase}))


@torch.no_grad()
def draw_samples(
    model: nn.Module,
    n: int,
    *,
    seed: int,
    n_steps: int,
    batch_size: int = 4,
    reporter: Reporter | None = None,
    keep: Callable[[int, torch.Tensor], None] | None = None,
    done: Mapping[int, torch.Tensor] | None = None,
) -> torch.Tensor:
    """Draw ``n`` images from the base model by DDIM (η = 0) from seeded Gaussian noise at t = 999.

    The noise is drawn on the CPU from ``torch.Generator().manual_seed(seed)``, so the samples do not depend on
    the device or the batch size (up to floating-point differences). Progress is reported per DDIM step.
    Under torchrun the batches still to draw are dealt to the ranks and every rank receives them all.

    Args:
        keep: called with ``(start index, samples)`` for every batch as soon as it is drawn (to store it).
        done: batches drawn before, by start index; they are used instead of drawing them again.

    Returns:
        (n, 3, S, S) images clamped to [-1, 1], on the CPU.
    """
    from dclip_cli.diffusion.ddim import generate
    from dclip_cli.diffusion.schedule import NUM_TIMESTEPS

    reporter = reporter or Reporter()
    size = int(getattr(model, "image_size", 256))
    device = model_device(model)
    noise = torch.randn((n, 3, size, size), generator=torch.Generator().manual_seed(seed))
    slots: list[torch.Tensor | None] = [None] * n
    for start, x in (done or {}).items():
        for j in range(x.shape[0]):
            if 0 <= start + j < n:
                slots[start + j] = x[j : j + 1]
    ctx = current()
    missing = [i for i in range(0, n, batch_size) if any(s is None for s in slots[i : i + batch_size])]
    # under torchrun: a batch any rank lacks is drawn (by one rank, dealt in turn) and shared with all
    todo = sorted(set().union(*ctx.all_gather_object(missing)))[ctx.rank :: ctx.world_size]
    total = len(todo) * n_steps
    model.eval()
    for k, start in enumerate(todo):
        x_t = noise[start : start + batch_size].to(device)
        drawn = sum(s is not None for s in slots)

        def step(info: dict[str, object], k: int = k, drawn: int = drawn) -> None:
            done_calls = min(k * n_steps + int(info["step"]), total)  # type: ignore[call-overload]
            _phase(reporter, "sample", done_calls, total, f"{drawn}/{n} drawn")

        x0 = generate(model, x_t, t0=NUM_TIMESTEPS - 1, n_steps=n_steps, callback=step).clamp(-1, 1).cpu()
        for j in range(x0.shape[0]):
            slots[start + j] = x0[j : j + 1]
        if keep is not None:
            keep(start, x0)
    if ctx.active:
        mine = {start: torch.cat(slots[start : start + batch_size]) for start in todo}  # type: ignore[arg-type]
        for part in ctx.all_gather_object(mine):
            for start, x in part.items():
                for j in range(x.shape[0]):
                    slots[start + j] = x[j : j + 1]
    if not todo:
        _phase(reporter, "sample", n, n, f"{n}/{n} drawn")
    return torch.cat([s for s in slots if s is not None]) if n else noise[:0]


def _samples_folder(root: Path, model_sha256: str, seed: int, n_steps: int, n: int, batch_size: int) -> Path:
    return root / f"{model_sha256[:16]}_seed{seed}_steps{n_steps}_n{n}_b{batch_size}"


def _read_batches(folder: Path) -> dict[int, torch.Tensor]:
    """The batches already stored in a samples folder, by start index (unreadable files are ignored)."""
    from safetensors.torch import load_file

    found: dict[int, torch.Tensor] = {}
    if folder.is_dir():
        for path in sorted(folder.glob("batch-*.safetensors")):
            try:
                found[int(path.stem.split("-")[1])] = load_file(str(path))["x0"]
            except Exception:  # noqa: BLE001, S112 - a damaged file is drawn again
                continue
    return found


def samples_to_draw(
    n: int, *, model_sha256: str, seed: int, n_steps: int, batch_size: int = 4, cache_root: Path | None = None
) -> int:
    """How many of :func:`cached_samples`'s ``n`` samples are not in the cache yet (for the time estimate)."""
    if cache_root is None:
        from dclip_cli.checkpoints.cache import cache_dir

        cache_root = cache_dir() / "samples"
    folder = _samples_folder(Path(cache_root), model_sha256, seed, n_steps, n, batch_size)
    done = sum(int(x.shape[0]) for x in _read_batches(folder).values())
    return max(0, n - done)


def cached_samples(
    model: nn.Module,
    n: int,
    *,
    model_sha256: str,
    seed: int,
    n_steps: int,
    batch_size: int = 4,
    cache_root: str | os.PathLike[str] | None = None,
    reporter: Reporter | None = None,
) -> torch.Tensor:
    """:func:`draw_samples`, stored in ``<cache_dir>/samples`` keyed by model SHA-256, seed, steps, count and
    batch size, one file per batch written as soon as the batch is drawn.

    A repeated, resumed or interrupted run then skips the batches already drawn (n_steps model calls each).
    """
    from safetensors.torch import save_file

    from dclip_cli.fileio import atomic_path

    reporter = reporter or Reporter()
    if cache_root is None:
        from dclip_cli.checkpoints.cache import cache_dir

        cache_root = cache_dir() / "samples"
    folder = _samples_folder(Path(cache_root), model_sha256, seed, n_steps, n, batch_size)
    done = _read_batches(folder)
    have = sum(int(x.shape[0]) for x in done.values())
    if have < n:
        more = f" ({have} kept from an earlier run)" if have else ""
        reporter.info(f"Drawing {n - have} sample(s) from the base model{more}")

    def keep(start: int, x: torch.Tensor) -> None:
        meta = {"model_sha256": model_sha256, "seed": str(seed), "start": str(start)}
        with atomic_path(folder / f"batch-{start:05d}.safetensors", overwrite=True) as tmp:
            save_file({"x0": x.contiguous()}, str(tmp), metadata=meta)

    return draw_samples(
        model, n, seed=seed, n_steps=n_steps, batch_size=batch_size, reporter=reporter, keep=keep, done=done
    )


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
    reporter: Reporter | None = None,
) -> TrainingData:
    """Invert images to t₀ and reconstruct them, reusing the content-keyed latent cache (FIX 12).

    For each image not in the cache (of any rank, under torchrun: each rank inverts its chunks and stores them, and
    every rank receives them all): x_lat = DDIM inversion with ``n_inv_steps`` points, x_rec = generation from
    x_lat with the same sequence (η = 0), as the original's precompute stage (section 8.2); both are stored under
    the key (image content, model SHA-256, t₀, steps).

    Args:
        model: the base model (inversion always uses it).
        x0: (N, 3, S, S) images in [-1, 1].
        keys: a content key per image.
        model_sha256: SHA-256 of the model's checkpoint file.
        cache_root: latent cache folder; default ``<cache_dir>/latents``.
        reporter: receives ``progress`` events; ``None`` reports nothing.

    Returns:
        :class:`TrainingData` on the CPU.
    """
    from dclip_cli.diffusion.ddim import generate, invert

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
    missing = [i for i in range(n) if x_lat[i] is None]
    todo = sorted(set().union(*current().all_gather_object(missing)))  # a miss on any rank is computed
    hits = n - len(todo)
    device = model_device(model)
    model.eval()
    if reporter is not None:
        _phase(reporter, "invert", hits, n)

    def invert_chunk(rows: range) -> tuple[torch.Tensor, torch.Tensor]:
        idx = todo[rows.start : rows.stop]
        with torch.no_grad():
            lat = invert(model, x0[idx].to(device), t0=t0, n_steps=n_inv_steps).cpu()
            rec = generate(model, lat.to(device), t0=t0, n_steps=n_inv_steps).cpu()
        for j, i in enumerate(idx):
            cache.put(keys[i], model_sha256, t0, n_inv_steps, lat[j : j + 1], rec[j : j + 1])
        if reporter is not None:
            _phase(reporter, "invert", hits + rows.stop, n)
        return lat, rec

    chunks = map_chunks(invert_chunk, len(todo), batch_size, current())
    for start, (lat, rec) in zip(range(0, len(todo), batch_size), chunks, strict=True):
        for j, i in enumerate(todo[start : start + batch_size]):
            x_lat[i], x_rec[i] = lat[j : j + 1], rec[j : j + 1]
    return TrainingData(
        x0=x0.cpu(),
        x_lat=torch.cat([t for t in x_lat if t is not None]) if n else x0[:0],
        x_rec=torch.cat([t for t in x_rec if t is not None]) if n else x0[:0],
        keys=list(keys),
        cache_hits=hits,
    )


def training_images(
    preset: Preset,
    files: Sequence[Path],
    n_samples: int,
    n_preview: int,
    model: Callable[..., Any],
    cache_sha: str,
    cfg: FinetuneConfig,
    reporter: Reporter,
) -> tuple[torch.Tensor, list[str], torch.Tensor]:
    """``(x0, keys, x_preview)``: the photos and ``n_samples`` samples to train on, ``n_preview`` held-out
    samples to preview."""
    x0_parts: list[torch.Tensor] = []
    keys: list[str] = []
    if files:
        from dclip_cli.presets.manager import get_registry

        reporter.info(f"Preparing {len(files)} training image(s)")
        aligner = None
        if preset.preprocess == "align" and preset.aligner:
            aligner = get_registry().aligners.get(preset.aligner)
            if aligner is None:
                reporter.warn(f"The aligner {preset.aligner!r} is not installed; using centre crops.")
        x_photos, photo_keys = load_training_images(files, preset, aligner, reporter)
        x0_parts.append(x_photos)
        keys.extend(photo_keys)
    if n_samples + n_preview > 0:
        drawn = cached_samples(
            model,  # type: ignore[arg-type]
            n_samples + n_preview,
            model_sha256=cache_sha,
            seed=cfg.seed,
            n_steps=cfg.n_gen_steps,
            batch_size=max(cfg.batch_size, 4),
            reporter=reporter,
        )
        if n_samples:
            x0_parts.append(drawn[:n_samples])
            keys.extend(tensor_sha256(drawn[i : i + 1]) for i in range(min(n_samples, len(drawn))))
        x_preview = drawn[n_samples:]
    else:
        x_preview = torch.zeros((0, 3, preset.image_size, preset.image_size))
    return torch.cat(x0_parts), keys, x_preview


def uncached_latents(keys: Sequence[str], model_sha256: str, settings: set[tuple[int, int]]) -> int:
    """How many of the inversions of images ``keys`` at each ``(t0, n_inv_steps)`` are not in the latent cache."""
    from dclip_cli.checkpoints.cache import cache_dir

    cache = LatentCache(cache_dir() / "latents")
    return sum(not all(cache.has(k, model_sha256, t0, n)) for k in keys for t0, n in settings)
