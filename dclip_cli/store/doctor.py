"""``dclip doctor``: what a bug report should contain, gathered in one place.

Versions (dclip, Python, torch, CUDA), the device and precision ``auto`` would pick and why (the CPU's bfloat16
features, the GPU's name and memory), the cache and library folders with their free space, for each preset what is
cached and what is missing, the plugins loaded or failed, and the offline and mirror settings. Every section is
gathered on its own: a failure in one (a broken torch install, an unreadable folder) is recorded as that section's
``error`` and the others are still reported.
"""

from __future__ import annotations

import os
import platform
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from dclip_cli.checkpoints import cache

#: CPU flags (``/proc/cpuinfo``) that decide how fast dclip runs on a CPU, in the order shown
CPU_FEATURES = (
    "avx2",
    "fma",
    "avx512f",
    "avx512_vnni",
    "avx512_bf16",
    "amx_tile",
    "amx_bf16",
    "amx_int8",
    "bf16",
)
#: environment variables that change what dclip does
SETTINGS = (
    "DCLIP_OFFLINE", "DCLIP_MIRROR", "DCLIP_CACHE", "DCLIP_DATA", "DCLIP_DEVICE", "DCLIP_PRECISION",
    "DCLIP_LOAD_PLUGINS", "DCLIP_DEBUG", "TORCH_HOME", "HTTPS_PROXY", "HTTP_PROXY",
)  # fmt: skip


def _guarded(gather: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    try:
        return gather()
    except Exception as exc:  # noqa: BLE001 - the report must come out whatever is broken
        return {"error": f"{type(exc).__name__}: {exc}"}


def cpu_features(cpuinfo: str | None = None) -> list[str]:
    """The flags of :data:`CPU_FEATURES` that the CPU has (from ``/proc/cpuinfo``; empty where unreadable)."""
    if cpuinfo is None:
        try:
            with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
                cpuinfo = fh.read()
        except OSError:
            return []
    flags: set[str] = set()
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip().lower() in ("flags", "features"):
            flags |= set(value.split())
    return [f for f in CPU_FEATURES if f in flags]


def _versions() -> dict[str, Any]:
    from dclip_cli._version import __version__

    out: dict[str, Any] = {
        "dclip": __version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "executable": sys.executable,
    }
    import torch

    out["torch"] = torch.__version__
    out["cuda"] = torch.version.cuda
    out["cudnn"] = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    from importlib.metadata import PackageNotFoundError, version

    for package in ("open-clip-torch", "safetensors", "typer", "rich", "requests"):
        try:
            out[package] = version(package)
        except PackageNotFoundError:
            out[package] = None
    return out


def _compute() -> dict[str, Any]:
    import torch

    from dclip_cli.device import resolve_device
    from dclip_cli.precision import cpu_name, precision_name, resolve_precision

    features = cpu_features()
    gpus = []
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(i)
            gpus.append(
                {
                    "index": i,
                    "name": props.name,
                    "memory": int(props.total_memory),
                    "capability": f"{props.major}.{props.minor}",
                    "bf16": bool(props.major >= 8),
                }
            )
    mps = getattr(torch.backends, "mps", None)
    mps_ok = bool(mps is not None and mps.is_available())
    device = resolve_device("auto")
    if device.type == "cuda":
        why_device = f"a CUDA GPU is available ({gpus[0]['name']})"
    elif device.type == "mps":
        why_device = "Apple MPS is available and no CUDA GPU"
    else:
        built = "this torch has no CUDA support" if torch.version.cuda is None else "torch sees no CUDA GPU"
        why_device = f"there is no GPU ({built}" + (")" if mps is None else "; MPS is not available)")
    infer = precision_name(resolve_precision("auto", device))
    train = precision_name(resolve_precision("auto", device, training=True))
    if device.type == "cuda":
        why = (
            "the GPU computes bfloat16 natively" if gpus and gpus[0]["bf16"] else "the GPU has no native bf16"
        )
    elif device.type == "cpu":
        native = [f for f in features if f in ("avx512_bf16", "amx_bf16", "bf16")]
        why = (
            f"the CPU computes bfloat16 natively ({', '.join(native)})"
            if native
            else "the CPU has no native bfloat16 (no AVX512-BF16 or AMX), so fp32 is faster"
        )
    else:
        why = "MPS runs fp32"
    return {
        "device": device.type,
        "device_reason": why_device,
        "precision": infer,
        "precision_training": train,
        "precision_reason": why,
        "cpu": cpu_name(),
        "cpu_cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cpu_features": features,
        "gpus": gpus,
        "mps": mps_ok,
    }


def _folder(path: Path) -> dict[str, Any]:
    from dclip_cli.fileio import free_bytes

    existing = path if path.exists() else next((p for p in path.parents if p.exists()), path)
    return {
        "path": str(path),
        "exists": path.is_dir(),
        "writable": os.access(existing, os.W_OK),
        "free": free_bytes(path),
    }


def _folders() -> dict[str, Any]:
    return {
        "cache": _folder(cache.cache_dir()),
        "library": _folder(cache.library_dir()),
        "runs": _folder(cache.data_dir() / "runs"),
    }


def _presets() -> dict[str, Any]:
    from dclip_cli.presets.manager import get_registry
    from dclip_cli.store.plan import plan_preset, totals

    out: dict[str, Any] = {}
    for name in sorted(get_registry().presets):
        files = plan_preset(name)
        missing = [f for f in files if not f.cached]
        out[name] = {
            "files": [f.to_dict() for f in files],
            "cached": len(files) - len(missing),
            "missing": len(missing),
            "missing_size": totals(missing).size,
            "missing_approximate": totals(missing).approximate,
            "missing_unknown": totals(missing).unknown,
        }
    return out


def _plugins() -> dict[str, Any]:
    from dclip_cli.presets.manager import get_registry

    registry = get_registry()
    return {
        "loaded": [p.to_dict() for p in registry.plugins if p.error is None],
        "failed": [p.to_dict() for p in registry.plugins if p.error is not None],
        "warnings": list(registry.warnings),
    }


def _redact(value: str) -> str:
    """A URL (proxy, mirror) without its user name and password."""
    from urllib.parse import urlsplit, urlunsplit

    try:
        parts = urlsplit(value)
    except ValueError:
        return "(set)"
    if parts.username or parts.password:
        host = parts.hostname or ""
        netloc = f"***@{host}" + (f":{parts.port}" if parts.port else "")
        return urlunsplit(parts._replace(netloc=netloc))
    return value


def _settings() -> dict[str, Any]:
    from dclip_cli.checkpoints.download import is_offline

    env = {}
    for name in SETTINGS:
        value = os.environ.get(name) or os.environ.get(name.lower())
        if value is not None:
            env[name] = _redact(value) if name.endswith(("PROXY", "MIRROR")) else value
    mirror = os.environ.get("DCLIP_MIRROR") or None
    return {
        "offline": is_offline(),
        "mirror": _redact(mirror) if mirror else None,
        "environment": env,
        "partial_downloads": len(cache.list_partial()),
    }


def diagnose() -> dict[str, Any]:
    """The doctor's report as plain data (JSON-ready): ``versions``, ``compute``, ``folders``, ``presets``,
    ``plugins``, ``settings``; a section that could not be gathered holds ``{"error": ...}``."""
    return {
        "versions": _guarded(_versions),
        "compute": _guarded(_compute),
        "folders": _guarded(_folders),
        "presets": _guarded(_presets),
        "plugins": _guarded(_plugins),
        "settings": _guarded(_settings),
    }
