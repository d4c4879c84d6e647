"""``dclip invert``: DDIM-invert image files and write their latents and reconstructions."""

from __future__ import annotations

import dataclasses
import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from dclip_cli.apps.config import RunConfig, Runtime
from dclip_cli.apps.session import Session
from dclip_cli.distributed import current, shard_chunks
from dclip_cli.errors import ConfigError, ImageError, NonFiniteError
from dclip_cli.estimate import GPU_CHOICE
from dclip_cli.progress import ProgressCallback, Reporter

#: t0 and step count used with ``--checkpoint`` when no preset gives them (the original CLI's defaults)
DEFAULT_T0 = 400
DEFAULT_STEPS = 40


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
        return {k: str(v) if isinstance(v, Path) else v for k, v in dataclasses.asdict(self).items()}


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
        doc = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "images"}
        return {**doc, "seconds": round(self.seconds, 3), "images": [r.to_dict() for r in self.images]}


def reconstruction_metrics(x0: Any, x_rec: Any) -> list[tuple[float, float]]:
    """Per-image (MSE, PSNR in dB) of a reconstruction, on the [0, 1] pixel scale with ``x_rec`` clamped.

    Args:
        x0: (B, 3, S, S) originals in [-1, 1].
        x_rec: (B, 3, S, S) reconstructions (unclamped).
    """
    a = (x0.detach().float().cpu().clamp(-1, 1) + 1) / 2
    b = (x_rec.detach().float().cpu().clamp(-1, 1) + 1) / 2
    mse = (a - b).pow(2).flatten(1).mean(dim=1)
    return [(float(m), 10.0 * math.log10(1.0 / max(float(m), 1e-12))) for m in mse]


def invert_images(
    inputs: Sequence[str | os.PathLike[str]],
    *,
    domain: str | None = None,
    checkpoint: str | os.PathLike[str] | None = None,
    arch_config: str | os.PathLike[str] | None = None,
    config: RunConfig = RunConfig(runtime=Runtime(batch_size=1)),
    progress: Reporter | ProgressCallback | None = None,
) -> InvertReport:
    """DDIM-invert image files and write their latents and reconstructions.

    For each image: load and prepare it (centre crop, or the preset's aligner), invert it to t0 with
    ``sampling.inv_steps`` points (N-1 model calls), generate back with the same sequence (N calls), write ``x_lat``
    as a latent file (metadata: model SHA-256, t0, steps, image SHA-256, dclip version, MSE, PSNR, precision) and
    the reconstruction as PNG. Every output path is checked before the model is loaded.

    Args:
        inputs: image files or folders of images.
        domain: preset name; gives the checkpoint (fetched into the cache), preprocessing and default t0/steps.
        checkpoint: local checkpoint used instead of the preset's.
        arch_config: JSON/TOML/YAML file with architecture settings for ``checkpoint``.
        config: ``sampling.t0`` (default: the preset's, else 400) and ``sampling.inv_steps`` (default: the
            preset's, else 40); ``outputs.output`` (a directory, or a ``.safetensors`` file for a single image;
            default: next to each input) and ``outputs.overwrite``; the ``runtime`` (device, precision, compile,
            batch size: images inverted together, face requirement).
        progress: receives the run's events (``progress`` of the ``Inverting`` bar, downloads, warnings, the time
            estimate).

    Raises:
        ConfigError: neither ``domain`` nor ``checkpoint``; bad settings or outputs.
        ImageError: an input is missing or unreadable.
        CheckpointError: the model cannot be fetched or loaded.
    """
    import torch

    from dclip_cli import __version__
    from dclip_cli.diffusion.ddim import generate, invert
    from dclip_cli.diffusion.schedule import validate_t0
    from dclip_cli.images import expand_inputs, load_and_prepare
    from dclip_cli.manifest import numerics_record
    from dclip_cli.models.build import load_arch_config
    from dclip_cli.outputs import plan_latents, write_together
    from dclip_cli.progress import Event
    from dclip_cli.store import load_base

    started = time.perf_counter()
    if domain is None and checkpoint is None:
        raise ConfigError(
            "No model was chosen for the inversion.",
            hint="Pass --domain NAME (see 'dclip presets list') or --checkpoint PATH.",
        )
    sampling, outputs, runtime = config.sampling, config.outputs, config.runtime
    session = Session(runtime, progress=progress)
    reporter = session.reporter
    preset = session.preset(domain) if domain is not None else None
    t0 = sampling.t0 if sampling.t0 is not None else (preset.t0 if preset else DEFAULT_T0)
    n_steps = (
        sampling.inv_steps
        if sampling.inv_steps is not None
        else (preset.n_inv_steps if preset else DEFAULT_STEPS)
    )
    validate_t0(t0, n_steps)
    files = expand_inputs(inputs)
    if not files:
        raise ImageError("No input image was given.", hint="Pass one or more image files or folders.")
    plans = plan_latents(files, outputs.output, overwrite=outputs.overwrite)
    ctx = current()  # under torchrun: each rank its whole batches of the inputs (batch j to rank j mod N)
    chunks = [list(rows) for rows in shard_chunks(len(files), runtime.batch_size, ctx.world_size, ctx.rank)]
    ctx.barrier()  # every rank checked every output before any is written

    arch, arch_cfg = load_arch_config(arch_config) if arch_config is not None else (None, None)
    base = load_base(preset, checkpoint=checkpoint, arch=arch, arch_config=arch_cfg, device=session.device,
                     progress=reporter)  # fmt: skip
    name = str(base.path) if checkpoint is not None else base.name
    eps_model = session.fast(base.model)
    size = preset.image_size if preset is not None else base.model.image_size
    aligner = None
    if preset is not None and preset.preprocess == "align" and preset.aligner:
        aligner = session.registry.aligners.get(preset.aligner)
        if aligner is None:
            reporter.warn(
                f"Preset {preset.name!r} asks for the aligner {preset.aligner!r}, which no plugin registers; "
                "using a centre crop."
            )
    prepared: dict[int, tuple[torch.Tensor, dict[str, Any]]] = {}
    for i in (i for chunk in chunks for i in chunk):
        x0, info = load_and_prepare(files[i], size, aligner=aligner, require_face=runtime.require_face)
        for message in info.get("warnings", []):
            reporter.warn(message)
        prepared[i] = (x0, info)

    n_images = len(files)
    total = len(chunks) * (2 * n_steps - 1)
    if chunks:  # under torchrun a rank may have no batch of its own
        session.check_time(
            base.model, torch.cat([prepared[i][0] for i in chunks[0]]).to(session.device), infer_calls=total,
            what=f"inverting and reconstructing {n_images} image(s)",
            choices=[f"fewer steps (--inv-steps 10; now {n_steps})", GPU_CHOICE],
        )  # fmt: skip
    results: list[InvertedImage] = []
    for chunk in chunks:
        x0 = torch.cat([prepared[i][0] for i in chunk]).to(session.device)
        which = f"image {chunk[0] + 1}" if len(chunk) == 1 else f"images {chunk[0] + 1}-{chunk[-1] + 1}"

        def report(info: dict[str, Any], phase: str, which: str = which) -> None:
            reporter.progress("Inverting", total=total, status=f"{which}/{n_images}: {phase} t={info['t']}")

        with torch.no_grad():
            x_lat = invert(eps_model, x0, t0=t0, n_steps=n_steps, callback=lambda i: report(i, "invert"))
            x_rec = generate(
                eps_model, x_lat, t0=t0, n_steps=n_steps, callback=lambda i: report(i, "generate")
            )
        for j, ((mse, psnr), i) in enumerate(zip(reconstruction_metrics(x0, x_rec), chunk, strict=True)):
            latent_path, recon_path = plans[i]
            image_sha = str(prepared[i][1].get("image_sha256") or "")
            meta = {
                "model_sha256": base.sha256,
                "t0": t0,
                "steps": n_steps,
                "image_sha256": image_sha,
                "dclip_version": __version__,
                "arch": base.model.arch,
                "image_size": size,
                "checkpoint": name,
                "image": files[i].name,
                "mse": f"{mse:.8g}",
                "psnr": f"{psnr:.4f}",
                "precision": session.precision_name(),
                "numerics": numerics_record(session.device, session.precision_name()),
            }
            lat_j, rec_j = x_lat[j : j + 1], x_rec[j : j + 1]
            if not (bool(torch.isfinite(lat_j).all()) and bool(torch.isfinite(rec_j).all())):
                raise NonFiniteError(
                    f"The inversion of {files[i]} holds NaN or infinite values, so nothing was written for it.",
                    hint="Check the model (a damaged or diverged checkpoint), or try --precision fp32.",
                )
            write_together(
                [
                    (latent_path, partial(_write_latent, lat_j, meta)),
                    (recon_path, partial(_write_image, rec_j.clamp(-1, 1).cpu())),
                ],
                overwrite=outputs.overwrite,
            )
            results.append(InvertedImage(files[i], latent_path, recon_path, mse, psnr, image_sha))
            reporter.emit(Event("output", data={"result": results[-1]}))
    if ctx.active:  # every rank's results, in input order
        order = {str(f): i for i, f in enumerate(files)}
        results = sorted(sum(ctx.all_gather_object(results), []), key=lambda r: order[str(r.image)])
    return InvertReport(
        images=results,
        checkpoint=name,
        model_sha256=str(base.sha256),
        arch=base.model.arch,
        image_size=size,
        t0=t0,
        steps=n_steps,
        device=str(session.device),
        seconds=time.perf_counter() - started,
    )


def _write_latent(x_lat: Any, meta: dict[str, Any], path: Path) -> None:
    from dclip_cli.latents import save_latent

    save_latent(path, x_lat, meta, overwrite=True)


def _write_image(x: Any, path: Path) -> None:
    from dclip_cli.images import save_image

    save_image(x, path, overwrite=True)
