"""JSON sidecars: what produced an output file, so a result can be trusted and reproduced.

Every image ``dclip edit``, ``mix`` and ``translate`` writes gets a sidecar next to it (``photo.smiling.png`` ->
``photo.smiling.json``) holding the resolved settings, the seed, the dclip version, the input's SHA-256, the name and
SHA-256 of every model that touched it, timings and metrics. The layout (``schema`` 1)::

    {
      "schema": 1,
      "dclip_version": "0.1.0",
      "command": "edit",
      "created": "2025-01-01T12:00:00+00:00",
      "inputs": [{"path": "/abs/photo.png", "sha256": "..."}],
      "outputs": {"image": "/abs/photo.smiling.png", "compare": null},
      "settings": {"domain": "face", "t0": 500, ...},
      "seed": 0,
      "models": [{"role": "base", "name": "celeba_hq", "path": "...", "sha256": "..."}, ...],
      "timings": {"inversion": 1.2, "generation": 1.5, "total": 3.0},
      "metrics": {"clip_directional": 0.21, ...},
      "environment": {"torch": "2.4.0", "device": "cpu", "python": "3.11.9"},
      "numerics": {"torch": "2.4.0", "device": "cpu", "precision": "bf16", "cpu_threads": 2, ...}
    }
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import math
import os
import platform
import time
from collections.abc import Iterator, Mapping
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Any

from dclip_cli._version import __version__
from dclip_cli.errors import ConfigError
from dclip_cli.fileio import atomic_path, sha256_file

SCHEMA_VERSION = 1

_SHA_CACHE: dict[tuple[str, int, int], str] = {}


def file_sha256(path: str | os.PathLike[str]) -> str:
    """SHA-256 of a file, memoised per process on (resolved path, size, mtime) so big checkpoints hash once."""
    p = Path(path).resolve()
    st = p.stat()
    key = (str(p), st.st_size, st.st_mtime_ns)
    digest = _SHA_CACHE.get(key)
    if digest is None:
        digest = sha256_file(p)
        _SHA_CACHE[key] = digest
    return digest


def input_record(path: str | os.PathLike[str]) -> dict[str, Any]:
    """``{"path", "sha256", "size"}`` of an input file."""
    p = Path(path)
    return {"path": str(p.resolve()), "sha256": file_sha256(p), "size": p.stat().st_size}


def model_record(
    role: str,
    name: str,
    *,
    path: str | os.PathLike[str] | None = None,
    sha256: str | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """Describe one model that produced an output.

    Args:
        role: what it did (``base``, ``edit``, ``mix-member``, ``clip``, ``lpips``, ``identity``).
        name: registry name, edit key or file name.
        path: the file it was loaded from, when there is one; its SHA-256 is computed when ``sha256`` is not given.
        sha256: known SHA-256 (skips hashing).
        **extra: further fields (source, texts, t0, ...), stored as given.
    """
    record: dict[str, Any] = {"role": role, "name": name, "path": None, "sha256": sha256}
    if path is not None:
        record["path"] = str(Path(path).resolve())
        if sha256 is None and Path(path).is_file():
            record["sha256"] = file_sha256(path)
    record.update(extra)
    return record


def to_jsonable(value: Any) -> Any:
    """Convert settings and metrics to plain JSON values (paths -> str, tuples -> lists, NaN -> None, tensors)."""
    if value is None or isinstance(value, (bool, str, int)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, os.PathLike):
        return str(value)
    if is_dataclass(value) and not isinstance(value, type):
        return to_jsonable(asdict(value))
    if isinstance(value, Mapping):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [to_jsonable(v) for v in value]
    if hasattr(value, "tolist"):  # torch tensors and numpy values
        return to_jsonable(value.tolist())
    if hasattr(value, "item"):
        return to_jsonable(value.item())
    return str(value)


def _environment(device: str | None) -> dict[str, Any]:
    env: dict[str, Any] = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "device": device,
    }
    try:
        import torch

        env["torch"] = torch.__version__
    except ImportError:  # pragma: no cover - torch is a dependency
        env["torch"] = None
    return env


def numerics_record(device: Any, precision: str) -> dict[str, Any]:
    """What a result's numbers depend on beyond the settings: the torch version, the device (and its model), the
    UNet precision and, for low precision on a CPU, the number of CPU threads (oneDNN's bf16 kernels split their sums
    differently with 1 and 2 threads, so the same edit can differ by several levels out of 255; fp32 results do not
    depend on it).

    Args:
        device: the device the UNets ran on.
        precision: ``fp32``, ``bf16`` or ``fp16`` (what the UNets computed in).
    """
    import torch

    from dclip_cli.precision import device_name

    dev = torch.device(device)
    record: dict[str, Any] = {"torch": torch.__version__, "device": str(dev), "precision": precision}
    with contextlib.suppress(Exception):  # informative only
        record["hardware"] = device_name(dev)
    if precision != "fp32" and dev.type == "cpu":
        record["cpu_threads"] = torch.get_num_threads()
    return record


def build_manifest(
    *,
    command: str,
    inputs: list[dict[str, Any]],
    outputs: Mapping[str, Any],
    settings: Mapping[str, Any],
    seed: int | None,
    models: list[dict[str, Any]],
    timings: Mapping[str, float] | None = None,
    metrics: Mapping[str, Any] | None = None,
    device: str | None = None,
    extra: Mapping[str, Any] | None = None,
    numerics: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Assemble a sidecar document (see the module docstring for the layout); every value is made JSON-safe.

    Args:
        numerics: :func:`numerics_record` of the run (what its numbers depend on).
    """
    doc: dict[str, Any] = {
        "schema": SCHEMA_VERSION,
        "dclip_version": __version__,
        "command": command,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "inputs": inputs,
        "outputs": dict(outputs),
        "settings": dict(settings),
        "seed": seed,
        "models": models,
        "timings": {k: round(float(v), 4) for k, v in (timings or {}).items()},
        "metrics": dict(metrics or {}),
        "environment": _environment(device),
    }
    if numerics is not None:
        doc["numerics"] = dict(numerics)
    if extra:
        doc.update(extra)
    return to_jsonable(doc)


def write_manifest(
    path: str | os.PathLike[str], manifest: Mapping[str, Any], *, overwrite: bool = False
) -> Path:
    """Write ``manifest`` as indented JSON to ``path`` atomically and return the path."""
    path = Path(path)
    text = json.dumps(to_jsonable(manifest), indent=2, ensure_ascii=False) + "\n"
    with atomic_path(path, overwrite=overwrite) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return path


def read_manifest(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a sidecar written by :func:`write_manifest`.

    Raises:
        ConfigError: the file is not a dclip sidecar.
    """
    try:
        doc = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path} is not a readable dclip sidecar: {exc}.") from exc
    if not isinstance(doc, dict) or "schema" not in doc:
        raise ConfigError(f"{path} is not a dclip sidecar (no 'schema' field).")
    return doc


class Timings:
    """Wall-clock timings by phase, accumulated across calls (``with timings.measure("inversion"): ...``)."""

    def __init__(self) -> None:
        self._start = time.perf_counter()
        self.phases: dict[str, float] = {}

    @contextlib.contextmanager
    def measure(self, phase: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.phases[phase] = self.phases.get(phase, 0.0) + time.perf_counter() - start

    def add(self, phase: str, seconds: float) -> None:
        self.phases[phase] = self.phases.get(phase, 0.0) + seconds

    def as_dict(self) -> dict[str, float]:
        """Phases plus ``total`` (seconds since this object was created)."""
        return {**self.phases, "total": time.perf_counter() - self._start}
