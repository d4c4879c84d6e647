"""Latent files and the content-keyed latent cache.

A latent file is a ``.safetensors`` file holding ``x_lat`` (B, 3, S, S), the DDIM-inverted latent at t₀, and
optionally ``x_rec``, the reconstruction generated back from it. Its header metadata says what produced it (model
SHA-256, t₀, steps, image SHA-256, dclip version), so ``dclip edit --latent`` can refuse a latent made for another
model or other settings.

The cache (reference section 21.2-12) keys entries by the content of the image *and* the model SHA-256, t₀ and
the number of inversion steps, unlike the original, which keyed only on category, split, t₀ and counts.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from dclip_cli.errors import LatentError
from dclip_cli.fileio import atomic_path

FORMAT_KEY = "format"
FORMAT_VALUE = "dclip.latent/1"
#: metadata values stored as integers
INT_KEYS = ("t0", "steps", "n_inv_steps", "image_size")


def _meta_to_str(metadata: Mapping[str, Any]) -> dict[str, str]:
    out: dict[str, str] = {}
    for key, value in metadata.items():
        if value is None:
            continue
        out[str(key)] = value if isinstance(value, str) else json.dumps(value)
    return out


def _meta_from_str(metadata: Mapping[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = dict(metadata)
    for key in INT_KEYS:
        if key in out:
            try:
                out[key] = int(out[key])
            except ValueError:
                pass
    return out


def tensor_sha256(x: torch.Tensor) -> str:
    """Content hash of a tensor: SHA-256 over its shape, dtype and float32 CPU bytes."""
    x = x.detach().to("cpu", torch.float32).contiguous()
    h = hashlib.sha256(f"{tuple(x.shape)}|float32|".encode())
    h.update(x.numpy().tobytes())
    return h.hexdigest()


def save_latent(
    path: str | os.PathLike[str],
    x_lat: torch.Tensor,
    metadata: Mapping[str, Any] | None = None,
    *,
    x_rec: torch.Tensor | None = None,
    overwrite: bool = False,
) -> Path:
    """Write a latent (and optionally its reconstruction) as ``.safetensors``, atomically.

    Args:
        path: destination file.
        x_lat: (B, 3, S, S) latent at t₀.
        metadata: provenance, for example ``model_sha256``, ``t0``, ``steps``, ``image_sha256``,
            ``dclip_version``; non-string values are stored as JSON, ``None`` values are left out.
        x_rec: optional (B, 3, S, S) reconstruction.
        overwrite: replace an existing file.

    Raises:
        OutputExistsError: ``path`` exists and ``overwrite`` is false.
    """
    from safetensors.torch import save_file

    if x_lat.ndim != 4:
        raise LatentError(f"A latent must be a (B, C, H, W) tensor, got shape {tuple(x_lat.shape)}.")
    tensors = {"x_lat": x_lat.detach().to("cpu", torch.float32).contiguous()}
    if x_rec is not None:
        tensors["x_rec"] = x_rec.detach().to("cpu", torch.float32).contiguous()
    meta = _meta_to_str(metadata or {})
    meta[FORMAT_KEY] = FORMAT_VALUE
    with atomic_path(path, overwrite=overwrite) as tmp:
        save_file(tensors, str(tmp), metadata=meta)
    return Path(path)


def load_latent(path: str | os.PathLike[str]) -> tuple[torch.Tensor, dict[str, Any]]:
    """Read a latent file written by :func:`save_latent`.

    Returns:
        ``(x_lat, metadata)``: x_lat (B, 3, S, S) float32 on the CPU; metadata with ``t0``, ``steps`` and
        ``image_size`` as ints and everything else as strings.

    Raises:
        LatentError: the file is missing, unreadable or not a dclip latent.
    """
    x_lat, _, meta = _read(path)
    return x_lat, meta


def load_latent_and_reconstruction(
    path: str | os.PathLike[str],
) -> tuple[torch.Tensor, torch.Tensor | None, dict[str, Any]]:
    """Like :func:`load_latent`, also returning ``x_rec`` (or ``None`` when the file has none)."""
    return _read(path)


def _read(path: str | os.PathLike[str]) -> tuple[torch.Tensor, torch.Tensor | None, dict[str, Any]]:
    from safetensors import SafetensorError, safe_open

    p = Path(path)
    if not p.is_file():
        raise LatentError(
            f"The latent file {p} does not exist.", hint="Create one with 'dclip invert IMAGE'."
        )
    try:
        with safe_open(str(p), framework="pt", device="cpu") as f:
            meta = dict(f.metadata() or {})
            keys = set(f.keys())
            if "x_lat" not in keys:
                raise LatentError(
                    f"{p} is not a dclip latent file (it has no 'x_lat' tensor).",
                    hint="Create one with 'dclip invert IMAGE'.",
                )
            x_lat = f.get_tensor("x_lat")
            x_rec = f.get_tensor("x_rec") if "x_rec" in keys else None
    except (SafetensorError, OSError, ValueError) as exc:
        if isinstance(exc, LatentError):
            raise
        raise LatentError(
            f"{p} is not a readable latent file: {exc}.", hint="Create it again with 'dclip invert IMAGE'."
        ) from exc
    if x_lat.ndim != 4:
        raise LatentError(f"The latent in {p} has shape {tuple(x_lat.shape)}; expected (B, C, H, W).")
    return x_lat.float(), (x_rec.float() if x_rec is not None else None), _meta_from_str(meta)


def check_latent(
    metadata: Mapping[str, Any],
    *,
    path: str | os.PathLike[str] | None = None,
    model_sha256: str | None = None,
    t0: int | None = None,
    steps: int | None = None,
) -> None:
    """Raise :class:`LatentError` when a latent's metadata disagrees with the model or settings about to use it.

    Values that are ``None`` (on either side) are not checked.
    """
    name = str(path) if path is not None else "The latent"
    checks = [("model_sha256", model_sha256), ("t0", t0), ("steps", steps)]
    for key, wanted in checks:
        have = metadata.get(key)
        if wanted is None or have is None:
            continue
        if str(have) != str(wanted):
            what = {"model_sha256": "model", "t0": "t0", "steps": "number of inversion steps"}[key]
            raise LatentError(
                f"{name} was made with another {what} ({key} {have}, this run uses {wanted}).",
                hint="Invert the image again with the current settings (dclip invert), or drop --latent.",
            )


class LatentCache:
    """Latents and reconstructions stored under ``root``, keyed by (image content, model SHA-256, t₀, steps).

    Layout: ``root/<key[:2]>/<key>.safetensors`` with tensors ``x_lat`` and ``x_rec``. Writes are atomic, so a
    concurrent or interrupted run never leaves a half-written entry.

    Args:
        root: cache folder (for example ``<cache_dir>/latents``); created on first write.
    """

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)

    @staticmethod
    def key(image: str | torch.Tensor, model_sha256: str, t0: int, steps: int) -> str:
        """The entry key: SHA-256 of the image key (or the tensor's content hash), model hash, t₀ and steps."""
        image_key = image if isinstance(image, str) else tensor_sha256(image)
        doc = json.dumps([image_key, model_sha256, int(t0), int(steps)])
        return hashlib.sha256(doc.encode("utf-8")).hexdigest()

    def path(self, image: str | torch.Tensor, model_sha256: str, t0: int, steps: int) -> Path:
        """Where the entry for these settings lives (whether or not it exists)."""
        key = self.key(image, model_sha256, t0, steps)
        return self.root / key[:2] / f"{key}.safetensors"

    def get(
        self, image: str | torch.Tensor, model_sha256: str, t0: int, steps: int
    ) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Return ``(x_lat, x_rec)`` for the entry, or ``None`` on a miss (an unreadable entry, or one stored
        without its reconstruction, counts as a miss; see :meth:`get_latent` for the latent alone).

        Args:
            image: a content key of the image (e.g. the SHA-256 of its file or of the prepared tensor), or the
                prepared image tensor itself (hashed with :func:`tensor_sha256`).
        """
        found = self.get_latent(image, model_sha256, t0, steps)
        if found is None or found[1] is None:
            return None
        return found[0], found[1]

    def get_latent(
        self, image: str | torch.Tensor, model_sha256: str, t0: int, steps: int
    ) -> tuple[torch.Tensor, torch.Tensor | None] | None:
        """Return ``(x_lat, x_rec or None)`` for the entry, or ``None`` on a miss."""
        p = self.path(image, model_sha256, t0, steps)
        if not p.is_file():
            return None
        try:
            x_lat, x_rec, _ = _read(p)
        except LatentError:
            return None
        return x_lat, x_rec

    def put(
        self,
        image: str | torch.Tensor,
        model_sha256: str,
        t0: int,
        steps: int,
        x_lat: torch.Tensor,
        x_rec: torch.Tensor | None,
        metadata: Mapping[str, Any] | None = None,
    ) -> Path:
        """Store ``x_lat`` and, when known, ``x_rec`` (both (B, 3, S, S)) for these settings, replacing any old
        entry."""
        image_key = image if isinstance(image, str) else tensor_sha256(image)
        meta = {"image_key": image_key, "model_sha256": model_sha256, "t0": int(t0), "steps": int(steps)}
        meta.update(dict(metadata or {}))
        return save_latent(
            self.path(image_key, model_sha256, t0, steps), x_lat, meta, x_rec=x_rec, overwrite=True
        )

    def clear(self) -> int:
        """Delete every entry; return how many files were removed."""
        removed = 0
        if self.root.is_dir():
            for p in self.root.glob("*/*.safetensors"):
                p.unlink(missing_ok=True)
                removed += 1
        return removed


# ---------------------------------------------------------------------------------------------------------------
# inverting image files (the library side of ``dclip invert``)

#: t0 and step count used with ``--checkpoint`` when no preset gives them (the original CLI's defaults)
DEFAULT_T0 = 400
DEFAULT_STEPS = 40
LATENT_SUFFIX = ".latent.safetensors"
RECON_SUFFIX = ".recon.png"


@dataclass
class InvertedImage:
    """What :func:`invert_images` produced for one input image."""

    image: Path
    latent: Path
    reconstruction: Path
    mse: float
    psnr: float
    image_sha256: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "image": str(self.image),
            "latent": str(self.latent),
            "reconstruction": str(self.reconstruction),
            "mse": self.mse,
            "psnr": self.psnr,
            "image_sha256": self.image_sha256,
        }


@dataclass
class InvertReport:
    """The run of :func:`invert_images`: per-image results plus the model and settings used."""

    images: list[InvertedImage]
    checkpoint: str
    model_sha256: str
    arch: str
    image_size: int
    t0: int
    steps: int
    device: str
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "checkpoint": self.checkpoint,
            "model_sha256": self.model_sha256,
            "arch": self.arch,
            "image_size": self.image_size,
            "t0": self.t0,
            "steps": self.steps,
            "device": self.device,
            "seconds": round(self.seconds, 3),
            "images": [r.to_dict() for r in self.images],
        }


def reconstruction_metrics(x0: torch.Tensor, x_rec: torch.Tensor) -> list[tuple[float, float]]:
    """Per-image (MSE, PSNR in dB) of a reconstruction, on the [0, 1] pixel scale with ``x_rec`` clamped.

    Args:
        x0: (B, 3, S, S) originals in [-1, 1].
        x_rec: (B, 3, S, S) reconstructions (unclamped).
    """
    a = (x0.detach().float().cpu().clamp(-1, 1) + 1) / 2
    b = (x_rec.detach().float().cpu().clamp(-1, 1) + 1) / 2
    mse = (a - b).pow(2).flatten(1).mean(dim=1)
    return [(float(m), 10.0 * math.log10(1.0 / max(float(m), 1e-12))) for m in mse]


def plan_latent_outputs(
    inputs: Sequence[Path], output: str | os.PathLike[str] | None = None, *, overwrite: bool = False
) -> list[tuple[Path, Path]]:
    """Decide the (latent, reconstruction) paths of every input before any work starts.

    ``<stem>.latent.safetensors`` and ``<stem>.recon.png`` next to each input, or in the ``-o`` directory; ``-o``
    ending in ``.safetensors`` names the latent of a single input (its reconstruction takes the same stem).

    Raises:
        ConfigError: ``-o`` names a file for several inputs or has another suffix; two inputs share a stem.
        OutputExistsError: an output exists and ``overwrite`` is false.
        OutputError: the output directory is not writable.
    """
    from dclip_cli.editing import check_writable_dir, split_output
    from dclip_cli.errors import ConfigError, OutputExistsError

    out_dir, out_file = split_output(
        output, len(inputs), suffix=".safetensors", what="latents are written as safetensors files",
        verb="inverting",
    )  # fmt: skip
    plans: list[tuple[Path, Path]] = []
    owner: dict[Path, Path] = {}
    for src in inputs:
        if out_file is not None:
            latent = out_file
            stem = out_file.name[: -len(".safetensors")]
            stem = stem[: -len(".latent")] if stem.endswith(".latent") else stem
            recon = out_file.with_name(stem + RECON_SUFFIX)
        else:
            folder = out_dir if out_dir is not None else src.parent
            latent, recon = folder / (src.stem + LATENT_SUFFIX), folder / (src.stem + RECON_SUFFIX)
        for path in (latent, recon):
            key = path.resolve()
            if key in owner:
                raise ConfigError(
                    f"{owner[key]} and {src} would both be written to {path}.",
                    hint="Give the inputs different names, or invert them into different -o directories.",
                )
            owner[key] = src
        plans.append((latent, recon))
    for directory in sorted({p.parent for plan in plans for p in plan}):
        check_writable_dir(directory)
    if not overwrite:
        existing = [p for plan in plans for p in plan if p.exists()]
        if existing:
            more = f" (and {len(existing) - 1} more)" if len(existing) > 1 else ""
            raise OutputExistsError(
                f"{existing[0]} already exists{more}.",
                hint="Pass --overwrite to replace it, or choose another output with -o.",
            )
    return plans


def _known_sha256(path: Path) -> str:
    """SHA-256 of a checkpoint: from the cache's verified record when it matches the file, else hashed."""
    try:
        from dclip_cli.checkpoints import cache

        meta = cache.read_meta(path)
        if meta is not None and meta.sha256 and meta.size == path.stat().st_size:
            return str(meta.sha256)
    except (ImportError, AttributeError, OSError):
        pass
    from dclip_cli.fileio import sha256_file

    return sha256_file(path)


def invert_images(
    inputs: Sequence[str | os.PathLike[str]],
    *,
    domain: str | None = None,
    checkpoint: str | os.PathLike[str] | None = None,
    arch_config: str | os.PathLike[str] | None = None,
    t0: int | None = None,
    n_steps: int | None = None,
    output: str | os.PathLike[str] | None = None,
    overwrite: bool = False,
    device: str | None = "auto",
    batch_size: int = 1,
    require_face: bool = False,
    precision: str = "fp32",
    compile: bool = False,
    callback: Callable[[dict[str, Any]], None] | None = None,
    on_download: Callable[[int, int | None], None] | None = None,
    on_warning: Callable[[str], None] | None = None,
    on_estimate: Callable[[str], None] | None = None,
) -> InvertReport:
    """DDIM-invert image files and write their latents and reconstructions.

    For each image: load and prepare it (centre crop, or the preset's aligner), invert it to t0 with ``n_steps``
    points (N-1 model calls), generate back with the same sequence (N calls), write ``x_lat`` as a latent file
    (metadata: model SHA-256, t0, steps, image SHA-256, dclip version, MSE, PSNR) and the reconstruction as PNG.
    Every output path is checked before the model is loaded.

    Args:
        inputs: image files or folders of images.
        domain: preset name; gives the checkpoint (fetched into the cache), preprocessing and default t0/steps.
        checkpoint: local checkpoint used instead of the preset's.
        arch_config: JSON/TOML/YAML file with architecture settings for ``checkpoint``.
        t0: return step (default: the preset's, else 400).
        n_steps: points in the inversion sequence (default: the preset's ``n_inv_steps``, else 40).
        output: directory, or a ``.safetensors`` file for a single image (default: next to each input).
        overwrite: replace existing outputs.
        device: ``auto``, ``cpu``, ``cuda``, ...
        batch_size: images inverted together.
        require_face: with an aligner, fail when no face is found instead of centre-cropping.
        precision: UNet compute precision, ``fp32`` (the original's numerics), ``auto``, ``bf16`` or ``fp16``
            (see :func:`dclip_cli.precision.resolve_precision`); recorded in each latent's metadata.
        compile: ``torch.compile`` the UNet.
        callback: per model call, the DDIM info dict plus ``phase`` (``"invert"``/``"generate"``) and ``images``.
        on_download: download progress of the preset's checkpoint.
        on_warning: receives preprocessing warnings (for example "no face found").
        on_estimate: receives an "Estimated time: ..." line before a long CPU run.

    Raises:
        ConfigError: neither ``domain`` nor ``checkpoint``; bad settings or outputs.
        ImageError: an input is missing or unreadable.
        CheckpointError: the model cannot be fetched or loaded.
    """
    import time

    from dclip_cli import __version__
    from dclip_cli.device import resolve_device
    from dclip_cli.diffusion.ddim import generate, invert
    from dclip_cli.diffusion.schedule import validate_t0
    from dclip_cli.editing import expand_inputs
    from dclip_cli.errors import ConfigError, ImageError
    from dclip_cli.images import load_and_prepare, save_image
    from dclip_cli.models.build import load_arch_config, load_diffusion_model
    from dclip_cli.presets.manager import get_registry

    started = time.perf_counter()
    if domain is None and checkpoint is None:
        raise ConfigError(
            "No model was chosen for the inversion.",
            hint="Pass --domain NAME (see 'dclip presets list') or --checkpoint PATH.",
        )
    if batch_size < 1:
        raise ConfigError(f"The batch size must be at least 1, got {batch_size}.")
    registry = get_registry()
    preset = registry.preset(domain) if domain is not None else None
    t0 = t0 if t0 is not None else (preset.t0 if preset else DEFAULT_T0)
    n_steps = n_steps if n_steps is not None else (preset.n_inv_steps if preset else DEFAULT_STEPS)
    validate_t0(t0, n_steps)
    files = expand_inputs(inputs)
    if not files:
        raise ImageError("No input image was given.", hint="Pass one or more image files or folders.")
    plans = plan_latent_outputs(files, output, overwrite=overwrite)

    arch: str | None = None
    config: dict[str, Any] | None = None
    if arch_config is not None:
        arch, config = load_arch_config(arch_config)
    if checkpoint is not None:
        path = Path(checkpoint)
        name = str(path)
    else:
        assert preset is not None
        from dclip_cli.checkpoints.download import fetch

        path = Path(fetch(preset.checkpoint, on_progress=on_download))
        name = preset.checkpoint
        if arch_config is None:
            arch, config = preset.arch, dict(preset.arch_config)
    dev = resolve_device(device)
    model = load_diffusion_model(path, arch=arch, config=config, device=dev)
    model.requires_grad_(False)
    from dclip_cli.precision import optimize_model, precision_name, resolve_precision

    dtype = resolve_precision(precision, dev)
    eps_model = (
        model if dtype is None and not compile else optimize_model(model, precision=dtype, compile=compile)
    )
    model_sha = _known_sha256(path)
    model.sha256 = model_sha
    size = preset.image_size if preset is not None else model.image_size

    aligner = None
    if preset is not None and preset.preprocess == "align" and preset.aligner:
        aligner = registry.aligners.get(preset.aligner)
        if aligner is None and on_warning is not None:
            on_warning(
                f"Preset {preset.name!r} asks for the aligner {preset.aligner!r}, which no plugin registers; "
                "using a centre crop."
            )
    prepared: list[tuple[torch.Tensor, dict[str, Any]]] = []
    for f in files:
        x0, info = load_and_prepare(f, size, aligner=aligner, require_face=require_face)
        for message in info.get("warnings", []):
            if on_warning is not None:
                on_warning(message)
        prepared.append((x0, info))

    results: list[InvertedImage] = []
    n_images = len(files)
    if on_estimate is not None and dev.type != "cuda":
        from dclip_cli.precision import (
            describe_precision,
            estimate_seconds,
            format_seconds,
            should_print_estimate,
        )

        first = torch.cat([x for x, _ in prepared[:batch_size]]).to(dev)
        n_calls = -(-n_images // batch_size) * (2 * n_steps - 1)
        seconds = estimate_seconds(eps_model, first, n_calls)
        if should_print_estimate(dev, seconds):
            on_estimate(
                f"Estimated time: {format_seconds(seconds)} for {n_calls} UNet calls "
                f"({describe_precision(dtype, dev)})."
            )
    for start in range(0, n_images, batch_size):
        chunk = list(range(start, min(start + batch_size, n_images)))
        x0 = torch.cat([prepared[i][0] for i in chunk]).to(dev)

        def report(
            info: dict[str, Any], phase: str, span: tuple[int, int, int] = (start, chunk[-1] + 1, n_images)
        ) -> None:
            if callback is not None:
                callback({**info, "phase": phase, "images": span})

        with torch.no_grad():
            x_lat = invert(eps_model, x0, t0=t0, n_steps=n_steps, callback=lambda i: report(i, "invert"))
            x_rec = generate(
                eps_model, x_lat, t0=t0, n_steps=n_steps, callback=lambda i: report(i, "generate")
            )
        metrics = reconstruction_metrics(x0, x_rec)
        for j, i in enumerate(chunk):
            latent_path, recon_path = plans[i]
            image_sha = str(prepared[i][1].get("image_sha256") or "")
            mse, psnr = metrics[j]
            meta = {
                "model_sha256": model_sha,
                "t0": t0,
                "steps": n_steps,
                "image_sha256": image_sha,
                "dclip_version": __version__,
                "arch": model.arch,
                "image_size": size,
                "checkpoint": name,
                "image": files[i].name,
                "mse": f"{mse:.8g}",
                "psnr": f"{psnr:.4f}",
                "precision": precision_name(dtype),
            }
            save_latent(latent_path, x_lat[j : j + 1], meta, overwrite=overwrite)
            save_image(x_rec[j : j + 1].clamp(-1, 1).cpu(), recon_path, overwrite=overwrite)
            results.append(InvertedImage(files[i], latent_path, recon_path, mse, psnr, image_sha))
    return InvertReport(
        images=results,
        checkpoint=name,
        model_sha256=model_sha,
        arch=model.arch,
        image_size=size,
        t0=t0,
        steps=n_steps,
        device=str(dev),
        seconds=time.perf_counter() - started,
    )
