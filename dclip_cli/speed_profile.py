"""Per-machine speed records of the UNet forward, kept in the user cache (issue 13).

A command that runs many UNet calls on a CPU first prints an estimate of its duration. Measuring one call for that
estimate costs a whole UNet call; this module remembers the measurement instead, so a machine pays for it once per
model configuration, not once per command. :class:`~dclip_cli.precision.OptimizedEpsModel` records the time of a
warm call (the first call of a process also builds oneDNN's kernels), and
:func:`~dclip_cli.precision.estimate_seconds` reads the record back.

Layout::

    <cache_dir>/
      speed/
        <sha256 of the key, 24 hex digits>.json   # {"key": {...}, "seconds_per_call": 0.3, "recorded": ...}

A record is keyed by everything that changes the speed of a call: the format version, the dclip and torch
versions, the CPU (model name and feature flags) or GPU name, the thread count, the model's architecture and
configuration, the precision, the execution path (fused, autocast, compiled or plain float32) and the input shape.
The file name is a hash of the key and the key is stored in the file and compared on reading, so a different
machine, version or model never reuses a record. A file that cannot be read or parsed, or holds an implausible
value, counts as missing and is overwritten by the next measurement. Files are written atomically.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import math
import os
import time
from pathlib import Path
from typing import Any

#: bump when the meaning of a record changes
FORMAT = 1
SPEED_DIR = "speed"

#: CPU features that change which kernels run
_CPU_FEATURES = ("amx_bf16", "amx_tile", "avx512_bf16", "avx512f", "avx2", "avx_ne_convert", "bf16", "sve")


@functools.lru_cache(maxsize=1)
def cpu_signature() -> dict[str, Any]:
    """The CPU's model name and the feature flags that matter for its kernels (``/proc/cpuinfo``)."""
    name, flags = "", set[str]()
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                key, _, value = line.partition(":")
                key = key.strip().lower()
                if key == "model name" and not name:
                    name = value.strip()
                elif key in ("flags", "features") and not flags:
                    flags = set(value.split())
    except OSError:
        pass
    if not name:
        import platform

        name = platform.processor() or platform.machine()
    return {"cpu": name, "cpu_features": sorted(flags & set(_CPU_FEATURES)), "cores": os.cpu_count()}


def _model_identity(model: Any) -> dict[str, Any] | None:
    """Architecture and configuration of a DiffusionModel or raw UNet, or ``None`` for other callables."""
    config = getattr(model, "config", None)
    arch = getattr(model, "arch", None)
    if arch is None:
        name = type(model).__name__
        arch = {"DDPMUNet": "ddpm", "ADMUNet": "adm"}.get(name)
    if arch is None or not isinstance(config, dict):
        return None
    text = json.dumps(config, sort_keys=True, default=str)
    return {"arch": arch, "config_sha256": hashlib.sha256(text.encode()).hexdigest()}


def record_key(
    model: Any,
    shape: tuple[int, ...],
    *,
    device: str,
    precision: str,
    path: str,
    device_name: str | None = None,
) -> dict[str, Any] | None:
    """The key of a speed record, or ``None`` when ``model`` has no known configuration (then nothing is kept).

    Args:
        model: a :class:`~dclip_cli.models.DiffusionModel` or raw UNet (not a wrapper).
        shape: the input shape (B, C, H, W).
        device: ``"cpu"``, ``"cuda"``, ...
        precision: ``"fp32"``, ``"bf16"`` or ``"fp16"``.
        path: how the call runs: ``"fused"``, ``"autocast"``, ``"compiled"`` or ``"plain"``.
        device_name: the GPU's name (CPUs are identified by :func:`cpu_signature`).
    """
    identity = _model_identity(model)
    if identity is None:
        return None
    import torch

    from dclip_cli._version import __version__

    key: dict[str, Any] = {
        "format": FORMAT,
        "dclip": __version__,
        "torch": torch.__version__,
        "device": device,
        "threads": torch.get_num_threads(),
        **identity,
        "precision": precision,
        "path": path,
        "shape": [int(s) for s in shape],
    }
    if device == "cpu":
        key.update(cpu_signature())
    else:
        key["device_name"] = device_name or device
    return key


def _record_path(key: dict[str, Any], root: Path | None = None) -> Path:
    from dclip_cli.checkpoints.cache import cache_dir

    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:24]
    return (root if root is not None else cache_dir()) / SPEED_DIR / f"{digest}.json"


def load_seconds(key: dict[str, Any] | None, *, root: Path | None = None) -> float | None:
    """Seconds per call recorded under ``key``, or ``None`` (no record, another key, or an unreadable file)."""
    if key is None:
        return None
    try:
        doc = json.loads(_record_path(key, root).read_text(encoding="utf-8"))
        seconds = float(doc["seconds_per_call"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if doc.get("key") != key or not (math.isfinite(seconds) and 0 < seconds < 1e5):
        return None
    return seconds


def store_seconds(key: dict[str, Any] | None, seconds: float, *, root: Path | None = None) -> bool:
    """Record ``seconds`` per call under ``key`` (atomically); ``False`` if nothing was written.

    Never raises for an unwritable cache: a missing record only means the next estimate measures a call.
    """
    if key is None or not (math.isfinite(seconds) and seconds > 0):
        return False
    from dclip_cli.checkpoints.cache import ensure_cache_dir
    from dclip_cli.errors import DclipError
    from dclip_cli.fileio import atomic_path

    doc = {
        "key": key,
        "seconds_per_call": round(float(seconds), 6),
        "recorded": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    with contextlib.suppress(OSError, DclipError):
        if root is None:
            ensure_cache_dir()
        dest = _record_path(key, root)
        with atomic_path(dest, overwrite=True) as tmp:
            tmp.write_text(json.dumps(doc, indent=1, sort_keys=True) + "\n", encoding="utf-8")
        return True
    return False


__all__ = ["FORMAT", "SPEED_DIR", "cpu_signature", "load_seconds", "record_key", "store_seconds"]
