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
import os
from collections.abc import Mapping
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

    def has(self, image: str | torch.Tensor, model_sha256: str, t0: int, steps: int) -> tuple[bool, bool]:
        """``(latent stored, reconstruction stored)`` for the entry, reading only the file's header."""
        from safetensors import safe_open

        p = self.path(image, model_sha256, t0, steps)
        if not p.is_file():
            return False, False
        try:
            with safe_open(str(p), framework="pt", device="cpu") as f:
                keys = set(f.keys())
        except Exception:  # noqa: BLE001 - an unreadable entry is a miss
            return False, False
        return "x_lat" in keys, "x_lat" in keys and "x_rec" in keys

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
