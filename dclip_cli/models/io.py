"""The one safe loader of weight files: ``torch.load(weights_only=True)``, safetensors and TorchScript archives.

Nothing here unpickles arbitrary objects. A pickle that needs arbitrary code (a class, a function) is refused with
:class:`~dclip_cli.errors.UnsafeCheckpointError`.
"""

from __future__ import annotations

import json
import os
import pickle
import warnings
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from dclip_cli.errors import CheckpointError, NonFiniteWeightsError, UnsafeCheckpointError

#: keys of common checkpoint containers that hold the state dict
_CONTAINER_KEYS = ("state_dict", "model_state_dict", "model", "net")


def _is_torchscript(path: Path) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as zf:
        return any(name.split("/", 1)[-1].startswith("constants.pkl") for name in zf.namelist())


def _is_tensor_dict(obj: Any) -> bool:
    return (
        isinstance(obj, Mapping)
        and len(obj) > 0
        and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())
    )


def _unwrap(obj: Any, path: Path) -> dict[str, torch.Tensor]:
    """Find the state dict inside a loaded object (plain dict, {'state_dict': ...}, [state_dict, ...])."""
    if _is_tensor_dict(obj):
        return dict(obj)
    if isinstance(obj, Mapping):
        for key in _CONTAINER_KEYS:
            if _is_tensor_dict(obj.get(key)):
                return dict(obj[key])
        # a dict mixing tensors with other entries: keep the tensors
        tensors = {k: v for k, v in obj.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}
        if tensors:
            return tensors
    if isinstance(obj, (list, tuple)) and obj and _is_tensor_dict(obj[0]):
        # ermongroup/ddim training checkpoints: [model_state, optimizer_state, epoch, step, (ema_state)]
        return dict(obj[0])
    raise CheckpointError(
        f"{path} does not contain a state dict of tensors (found {type(obj).__name__}).",
        hint="Pass a checkpoint saved with torch.save(model.state_dict()) or a .safetensors file.",
    )


def strip_prefix(state_dict: Mapping[str, torch.Tensor], prefix: str = "module.") -> dict[str, torch.Tensor]:
    """Remove ``prefix`` (DataParallel's ``module.``) when every key carries it."""
    if state_dict and all(k.startswith(prefix) for k in state_dict):
        return {k[len(prefix) :]: v for k, v in state_dict.items()}
    return dict(state_dict)


def load_checkpoint(path: str | os.PathLike[str]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Load a weight file safely and return ``(state_dict, metadata)``.

    Supported: ``.safetensors`` (metadata from its header), pickled state dicts loadable with
    ``torch.load(weights_only=True)`` (plain, wrapped in ``{"state_dict": ...}`` or a list whose first item is
    the state dict) and TorchScript archives (their parameters and buffers). A ``module.`` prefix on every key is
    stripped. Tensors are loaded onto the CPU.

    Raises:
        CheckpointError: the file is missing, unreadable or holds no state dict.
        UnsafeCheckpointError: the pickle would need arbitrary code to load.
        NonFiniteWeightsError: a floating-point tensor holds NaN or infinite values.
    """
    state_dict, metadata = _load_checkpoint(Path(path))
    check_finite(state_dict, path)
    return state_dict, metadata


def check_finite(state_dict: Mapping[str, torch.Tensor], path: str | os.PathLike[str]) -> None:
    """Refuse weights holding NaN or infinite values: they would only give NaN (grey) images.

    Raises:
        NonFiniteWeightsError: naming how many tensors are affected and the first one.
    """
    # a float64 sum is finite exactly when every element is (no float32 values can overflow it), in one fast pass
    bad = [
        k
        for k, v in state_dict.items()
        if v.is_floating_point() and not bool(torch.isfinite(v.sum(dtype=torch.float64)))
    ]
    if bad:
        raise NonFiniteWeightsError(
            f"{path} holds NaN or infinite values in {len(bad)} of its {len(state_dict)} tensors (the first is "
            f"{bad[0]!r}), so it was refused.",
            hint="The file is damaged or comes from a training run that diverged; download it or fine-tune it again.",
        )


def _load_checkpoint(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    if not path.is_file():
        raise CheckpointError(
            f"Checkpoint file {path} does not exist.",
            hint="Check the path, or fetch it with 'dclip models fetch NAME'.",
        )
    metadata: dict[str, str] = {}
    try:
        with open(path, "rb") as f:
            head = f.read(16)
    except OSError as exc:
        raise CheckpointError(f"Cannot read checkpoint {path}: {exc.strerror or exc}.") from exc
    if path.suffix == ".safetensors" or _looks_like_safetensors(head):
        from safetensors import SafetensorError, safe_open

        try:
            tensors: dict[str, torch.Tensor] = {}
            with safe_open(str(path), framework="pt", device="cpu") as f:
                metadata = dict(f.metadata() or {})
                for key in f.keys():  # noqa: SIM118 - safe_open has no __iter__
                    tensors[key] = f.get_tensor(key)
        except (SafetensorError, OSError, ValueError) as exc:
            raise CheckpointError(
                f"{path} is not a readable safetensors file: {exc}.",
                hint="The file may be truncated or corrupt; download it again.",
            ) from exc
        return strip_prefix(tensors), metadata
    if not (head.startswith(b"PK\x03\x04") or head[:1] == b"\x80"):
        # neither a zip archive (torch.save since 1.6, TorchScript) nor a pickle (older torch.save)
        raise CheckpointError(
            f"{path} is not a PyTorch or safetensors checkpoint (it starts with {head[:8]!r}).",
            hint="Check that you picked the right file; checkpoints are .ckpt/.pt/.pth/.safetensors weight files.",
        )
    if _is_torchscript(path):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)  # torch >= 2.9 deprecates TorchScript
                module = torch.jit.load(str(path), map_location="cpu")
        except Exception as exc:  # noqa: BLE001 - TorchScript raises many types
            raise CheckpointError(
                f"{path} is a TorchScript archive that could not be loaded: {exc}."
            ) from exc
        return strip_prefix(dict(module.state_dict())), metadata
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise UnsafeCheckpointError(
            f"{path} was refused because loading it would run arbitrary code (it pickles more than tensors).",
            hint="Only load files you trust; re-save it as a plain state dict "
            "(torch.save(model.state_dict(), ...)) or as .safetensors.",
        ) from exc
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile) as exc:
        raise CheckpointError(
            f"{path} is not a readable PyTorch checkpoint: {exc}.",
            hint="The file may be truncated or corrupt; download it again.",
        ) from exc
    if isinstance(obj, Mapping) and isinstance(obj.get("metadata"), Mapping):
        metadata = {str(k): v if isinstance(v, str) else json.dumps(v) for k, v in obj["metadata"].items()}
    return strip_prefix(_unwrap(obj, path)), metadata


def _looks_like_safetensors(head: bytes) -> bool:
    # 8-byte little-endian header length followed by a JSON object
    return len(head) >= 9 and head[8:9] == b"{"


def load_state_dict_file(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """Load only the state dict of a weight file (see :func:`load_checkpoint`)."""
    return load_checkpoint(path)[0]
