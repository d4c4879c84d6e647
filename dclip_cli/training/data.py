"""Training images for fine-tuning: photos prepared like edit inputs and/or samples drawn from the base model,
with their DDIM inversions (content-keyed latent cache, reference sections 8.2 and 21.2-12)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from dclip_cli.distributed import current
from dclip_cli.latents import LatentCache, tensor_sha256
from dclip_cli.presets.preset import Preset
from dclip_cli.progress import Event, Reporter
from dclip_cli.training.ddp import map_chunks
from dclip_cli.training.loop import model_device


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


def _phase(reporter: Reporter, phase: str, done: int, total: int) -> None:
    """A ``progress`` event of a data phase; ``data["phase"]`` is ``load``, ``sample`` or ``invert``."""
    label = reporter.prefix + _PHASES[phase]
    reporter.emit(Event("progress", label, done=done, total=total, data={"phase": phase}))


@torch.no_grad()
def draw_samples(
    model: nn.Module,
    n: int,
    *,
    seed: int,
    n_steps: int,
    batch_size: int = 4,
    reporter: Reporter | None = None,
) -> torch.Tensor:
    """Draw ``n`` images from the base model by DDIM (η = 0) from seeded Gaussian noise at t = 999.

    The noise is drawn on the CPU from ``torch.Generator().manual_seed(seed)``, so the samples do not depend on
    the device or the batch size (up to floating-point differences). Under torchrun each rank draws its batches
    and every rank receives them all.

    Returns:
        (n, 3, S, S) images clamped to [-1, 1], on the CPU.
    """
    from dclip_cli.diffusion.ddim import generate
    from dclip_cli.diffusion.schedule import NUM_TIMESTEPS

    reporter = reporter or Reporter()
    size = int(getattr(model, "image_size", 256))
    device = model_device(model)
    noise = torch.randn((n, 3, size, size), generator=torch.Generator().manual_seed(seed))

    def draw(rows: range) -> torch.Tensor:
        x0 = generate(model, noise[rows.start : rows.stop].to(device), t0=NUM_TIMESTEPS - 1, n_steps=n_steps)
        _phase(reporter, "sample", rows.stop, n)
        return x0.clamp(-1, 1).cpu()

    model.eval()
    out = map_chunks(draw, n, batch_size, current())
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
    reporter: Reporter | None = None,
) -> torch.Tensor:
    """:func:`draw_samples`, stored in ``<cache_dir>/samples`` keyed by model SHA-256, seed, steps and count.

    A repeated or resumed run then skips the sampling (n_steps model calls per image).
    """
    from safetensors.torch import load_file, save_file

    from dclip_cli.fileio import atomic_path

    reporter = reporter or Reporter()
    if cache_root is None:
        from dclip_cli.checkpoints.cache import cache_dir

        cache_root = cache_dir() / "samples"
    path = Path(cache_root) / f"{model_sha256[:16]}_seed{seed}_steps{n_steps}_n{n}.safetensors"
    found: torch.Tensor | None = None
    if path.is_file():
        try:
            found = load_file(str(path))["x0"]
        except Exception:  # noqa: BLE001 - an unreadable entry is a miss
            pass
    hit = found is not None and found.shape[0] == n
    if all(current().all_gather_object(hit)):  # under torchrun the ranks draw together unless all read it
        _phase(reporter, "sample", n, n)
        return found  # type: ignore[return-value]
    reporter.info(f"Drawing {n} sample(s) from the base model")
    x = draw_samples(model, n, seed=seed, n_steps=n_steps, batch_size=batch_size, reporter=reporter)
    if current().is_main:
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
