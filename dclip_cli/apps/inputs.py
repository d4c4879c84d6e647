"""The inputs of an application run: image files expanded and loaded at the preset's size, the domain chosen
(``--domain`` or CLIP detection), and a ``--latent`` file read and checked."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dclip_cli.distributed import Context, current, shard_chunks
from dclip_cli.errors import ConfigError, ImageError

if TYPE_CHECKING:
    from dclip_cli.apps.config import SamplingSettings
    from dclip_cli.apps.session import Session
    from dclip_cli.detect import Detection
    from dclip_cli.presets.preset import Preset
    from dclip_cli.store import LoadedModel

#: size the inputs are prepared at for domain detection (CLIP resizes to its own input size anyway)
DETECTION_SIZE = 224


@dataclass
class InputImage:
    """One readable input, prepared at the model size: ``x0`` is (1, 3, S, S) in [-1, 1] (``None`` under torchrun
    for an input another rank loaded and processes)."""

    path: Path
    x0: Any
    info: dict[str, Any]


@dataclass
class Inputs:
    """The readable inputs of a run, the unreadable ones with their reason, and the domain chosen for them."""

    preset: Preset
    detection: Detection | None
    images: list[InputImage]
    failed: list[tuple[Path, str]] = field(default_factory=list)


def load_inputs(
    session: Session, paths: Sequence[Path], size: int, preset: Preset | None = None, *, quiet: bool = False
) -> tuple[list[InputImage], list[tuple[Path, ImageError]]]:
    """Load and prepare every input; unreadable ones are returned as ``(path, error)`` instead.

    ``quiet`` drops preprocessing warnings (used for the detection probe, which is not the model input).
    """
    from dclip_cli import images

    aligner = None
    if preset is not None and preset.preprocess == "align" and preset.aligner:
        aligner = session.registry.aligners.get(preset.aligner)
        if aligner is None:
            session.reporter.warn(
                f"Preset {preset.name!r} asks for the aligner {preset.aligner!r}, which no plugin registers; "
                "using a centre crop."
            )
    ok: list[InputImage] = []
    failed: list[tuple[Path, ImageError]] = []
    for path in paths:
        try:
            x0, info = images.load_and_prepare(
                path, size, aligner=aligner, require_face=session.require_face and not quiet
            )
        except ImageError as exc:
            failed.append((path, exc))
            continue
        for w in [] if quiet else info.get("warnings", []):
            session.reporter.warn(w)
        ok.append(InputImage(path, x0, info))
    return ok, failed


def detect(
    session: Session, inputs: Sequence[InputImage], label: str, candidates: Sequence[Preset] | None = None
) -> tuple[Preset, Detection]:
    """CLIP zero-shot detection of the domain over the ``candidates`` (default: every installed preset)."""
    import torch

    from dclip_cli.detect import detect_domain

    if not inputs:
        raise ImageError("No readable input image was left to detect the domain from.")
    presets = list(candidates) if candidates is not None else session.presets()
    clip = session.clip() if len(presets) > 1 else None
    x = torch.cat([inp.x0 for inp in inputs]).to(session.device)
    detection = detect_domain(clip, x, presets, label=label)
    session.reporter.info(f"Using {detection.describe()}.")
    return session.preset(detection.preset), detection


def presets_with_edits(session: Session, keys: Sequence[str]) -> list[Preset]:
    """The installed presets that have every named edit in ``keys`` (all presets when ``keys`` is empty)."""
    return [p for p in session.presets() if all(k.strip() in p.edits for k in keys)]


def prepare_inputs(
    session: Session,
    paths: Sequence[str | os.PathLike[str]],
    domain: str | None,
    *,
    edits: Sequence[str] = (),
) -> Inputs:
    """Expand the inputs, pick the preset and load the inputs at its size.

    The preset is ``domain``; else, when the targets in ``edits`` (``--to`` values) are named edits that only one
    installed preset has, that preset (no CLIP needed); else CLIP detection among the presets that have them (all
    presets for free text).

    Unreadable inputs are reported (one warning each) and kept in :attr:`Inputs.failed`; if none is readable, the
    problem is raised instead (the loader's own error and hint when there is one input).
    Under torchrun each rank loads its share (:func:`load_share`) and every rank knows every input.
    """
    from dclip_cli.detect import Detection
    from dclip_cli.images import expand_inputs

    files = expand_inputs(paths)
    failed: list[tuple[Path, ImageError]] = []
    ctx = current()
    candidates = presets_with_edits(session, edits) if edits else []
    if domain is None and len(candidates) == 1:
        preset = candidates[0]
        detection: Detection | None = Detection(preset.name, 1.0, {preset.name: 1.0}, method="edit")
        keys = ", ".join(repr(k) for k in edits)
        session.reporter.info(f"Using domain {preset.name}: the only preset with the edit {keys}.")
        domain = preset.name
    elif domain is None:
        probe, failed = load_inputs(session, files, DETECTION_SIZE, quiet=True)
        _raise_if_none_readable(probe, failed)
        label = str(files[0]) if len(files) == 1 else f"{len(probe)} images"
        preset, detection = detect(session, probe, label, candidates or None)
        if ctx.active:  # every rank detected on every input; rank 0's choice holds for all
            name, detection = ctx.broadcast_object((preset.name, detection))
            preset = session.preset(name)
        files = [p.path for p in probe]
    else:
        preset = session.preset(domain)
        detection = None
    if ctx.active:
        ok, more = load_share(session, files, preset, ctx)
    else:
        ok, more = load_inputs(session, files, preset.image_size, preset)
    failed.extend(more)
    _raise_if_none_readable(ok, failed)
    for path, exc in failed if ctx.is_main else ():
        session.reporter.warn(f"Skipping {path}: {exc.message}")
    return Inputs(preset, detection, ok, [(path, exc.message) for path, exc in failed])


def load_share(
    session: Session, files: Sequence[Path], preset: Preset, ctx: Context
) -> tuple[list[InputImage], list[tuple[Path, ImageError]]]:
    """Under torchrun: load this rank's whole batches of ``files`` (batch j goes to rank j mod N, see
    :func:`~dclip_cli.distributed.shard_chunks`), so each input keeps the batch it has in one process.

    Returns:
        Like :func:`load_inputs`, for every input in input order: the other ranks' readable inputs have
        ``x0 = None`` (their rank processes them); the unreadable inputs of every rank.
    """
    share = shard_chunks(len(files), session.runtime.batch_size, ctx.world_size, ctx.rank)
    ok, bad = load_inputs(session, [files[i] for rows in share for i in rows], preset.image_size, preset)
    mine = {str(inp.path): inp for inp in ok}
    reasons: dict[str, tuple[str, str | None]] = {}
    for part in ctx.all_gather_object({str(p): (exc.message, exc.hint) for p, exc in bad}):
        reasons.update(part)
    images = [mine.get(str(p), InputImage(p, None, {})) for p in files if str(p) not in reasons]
    return images, [
        (p, ImageError(reasons[str(p)][0], hint=reasons[str(p)][1])) for p in files if str(p) in reasons
    ]


def _raise_if_none_readable(ok: Sequence[InputImage], failed: Sequence[tuple[Path, ImageError]]) -> None:
    if ok:
        return
    if len(failed) == 1:
        raise failed[0][1]
    hints = {exc.hint for _, exc in failed}
    path, first = failed[0]
    raise ImageError(
        f"None of the {len(failed)} inputs could be read; the first, {path}: {first.message}",
        hint=hints.pop() if len(hints) == 1 and None not in hints else "Pass PNG, JPEG or WebP images.",
    )


@dataclass
class LatentArg:
    """A ``--latent`` file from ``dclip invert``: ``x`` (1, 3, S, S), its metadata, and the t0 and number of
    inversion steps it records (``None`` when it does not)."""

    path: Path
    x: Any
    meta: dict[str, Any]
    t0: int | None = None
    steps: int | None = None

    def check(
        self, base: LoadedModel, settings: SamplingSettings, inp: InputImage, preset: Preset, session: Session
    ) -> None:
        """Refuse a latent made with another model, t0, step count or image size; warn about another image."""
        from dclip_cli.latents import check_latent

        check_latent(
            self.meta, path=self.path, model_sha256=base.sha256, t0=settings.t0, steps=settings.n_inv_steps
        )
        if inp.x0 is None:  # under torchrun the rank that holds the image checks it
            return
        if tuple(self.x.shape[-3:]) != tuple(inp.x0.shape[-3:]):
            raise ConfigError(
                f"The latent {self.path} has shape {tuple(self.x.shape)}, which does not fit the preset's "
                f"{preset.image_size}x{preset.image_size} images.",
                hint=f"Invert the image with 'dclip invert --domain {preset.name}'.",
            )
        image_sha = self.meta.get("image_sha256")
        if image_sha and image_sha != inp.info.get("image_sha256"):
            session.reporter.warn(f"The latent {self.path} was inverted from another image than {inp.path}.")


def read_latent_arg(
    latent: str | os.PathLike[str] | None, n_inputs: int, requested_t0: int | None
) -> LatentArg | None:
    """Read ``--latent`` (one input only) and refuse a ``--t0`` that contradicts it."""
    from dclip_cli.latents import load_latent

    if latent is None:
        return None
    path = Path(latent)
    if n_inputs != 1:
        raise ConfigError(
            f"--latent gives the inversion of one image, but {n_inputs} images were given.",
            hint="Pass the one image the latent was inverted from.",
        )
    x_lat, meta = load_latent(path)
    t0, steps = meta.get("t0"), meta.get("steps")
    arg = LatentArg(
        path, x_lat.unsqueeze(0) if x_lat.dim() == 3 else x_lat, dict(meta or {}),
        t0=int(t0) if t0 is not None else None, steps=int(steps) if steps else None,
    )  # fmt: skip
    if arg.t0 is not None and requested_t0 is not None and arg.t0 != requested_t0:
        raise ConfigError(
            f"The latent {path} was inverted to t0 = {arg.t0}, but --t0 {requested_t0} was given.",
            hint="Drop --t0 (the latent's t0 is used), or invert again with 'dclip invert --t0'.",
        )
    return arg
