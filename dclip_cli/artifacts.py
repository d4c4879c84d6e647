"""Fine-tuned models on disk: dclip's self-describing ``.safetensors`` and the official DiffusionCLIP ``.pth``.

A dclip artifact is a safetensors file holding the fine-tuned UNet's state dict under the official key names
(``statedict-keys.txt``), saved in fp32, fp16 or bf16, with its provenance in the safetensors metadata (all values
are strings there)::

    format          "dclip-finetuned"
    format_version  "1"
    dclip.metadata  JSON with every field below
    base_checkpoint, base_sha256, arch, src_text, trg_text, t0  (flat copies, readable by any safetensors tool)

The JSON holds: ``dclip_version``, ``created``, ``dtype``, ``base_checkpoint`` and ``base_sha256``, ``arch`` and
``arch_config``, ``src_text`` and ``trg_text``, ``t0``, ``n_inv_steps``, ``n_train_steps``, ``n_gen_steps``, ``mode``,
``loss_weights``, ``lr``, ``lr_gamma``, ``epochs``, ``batch_size``, ``eta``, ``seed``, ``clip_model`` and the number
of training images (``n_train_images``, of which ``n_photos`` photos and ``n_samples`` drawn samples), ``origin``
(``finetune``: trained on purpose; ``auto``: fine-tuned on the fly by an edit) and ``numerics`` (what the weights'
numbers depend on: torch version, device, precision, CPU threads of low-precision CPU runs), plus anything else the
caller adds.

An official fine-tuned checkpoint (section 15.4) is a plain fp32 state dict of the base architecture; its t₀ is
read from the ``_t{t0}`` part of the file name (``human_pixar_t601.pth`` -> 601), as the original ``predict.py``
does. It carries no record of its base, so only its architecture (keys and shapes) can be checked.

Loading refuses an artifact made for another base: different base SHA-256 when both are known, else a different
architecture or architecture config, else state-dict keys or shapes that do not fit.
"""

from __future__ import annotations

import copy
import datetime as _dt
import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from dclip_cli._version import __version__
from dclip_cli.errors import CheckpointError, ConfigError, IncompatibleModelError
from dclip_cli.fileio import atomic_path

ARTIFACT_FORMAT = "dclip-finetuned"
ARTIFACT_VERSION = 1
METADATA_KEY = "dclip.metadata"
FLAT_KEYS = ("base_checkpoint", "base_sha256", "arch", "src_text", "trg_text", "t0")

SaveDtype = Literal["fp32", "fp16", "bf16"]
SAVE_DTYPES: dict[str, torch.dtype] = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}

_T0_RE = re.compile(r"_t(\d+)(?=$|[^0-9])")


@dataclass
class ArtifactInfo:
    """What is known about a fine-tuned model file before (or after) loading it.

    Args:
        path: the file.
        kind: ``"dclip"`` (a dclip ``.safetensors``), ``"official"`` (an official DiffusionCLIP ``.pth``) or
            ``"plain"`` (a ``.safetensors`` without dclip metadata).
        metadata: the decoded metadata (for official files: ``t0`` from the name, when present, and ``source``).
    """

    path: Path
    kind: Literal["dclip", "official", "plain"]
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def t0(self) -> int | None:
        value = self.metadata.get("t0")
        return int(value) if value is not None else None

    @property
    def src_text(self) -> str | None:
        return self.metadata.get("src_text")

    @property
    def trg_text(self) -> str | None:
        return self.metadata.get("trg_text")

    @property
    def base_sha256(self) -> str | None:
        return self.metadata.get("base_sha256")

    @property
    def base_checkpoint(self) -> str | None:
        return self.metadata.get("base_checkpoint")


def t0_from_name(name: str | os.PathLike[str]) -> int | None:
    """Return the t₀ encoded as ``_t{t0}`` in an official file name (``human_pixar_t601.pth`` -> 601), or None."""
    stem = Path(name).name
    for suffix in (".pth", ".pt", ".ckpt", ".safetensors"):
        if stem.endswith(suffix):
            stem = stem[: -len(suffix)]
            break
    matches = _T0_RE.findall(stem)
    if not matches:
        return None
    t0 = int(matches[-1])
    return t0 if 1 <= t0 <= 999 else None


def _unet(model: nn.Module) -> nn.Module:
    """The raw network whose state dict has the official keys (``DiffusionModel.unet``), or the model itself."""
    inner = getattr(model, "unet", None)
    return inner if isinstance(inner, nn.Module) else model


def _canonical(value: Any) -> Any:
    """JSON round trip so that tuples/lists and int/float spellings compare equal."""
    return json.loads(json.dumps(value, sort_keys=True, default=str))


def _json_safe(value: Any) -> Any:
    from dclip_cli.manifest import to_jsonable

    return to_jsonable(value)


# --------------------------------------------------------------------------------------------------- saving


def save_artifact(
    path: str | os.PathLike[str],
    model: nn.Module,
    metadata: Mapping[str, Any],
    *,
    dtype: SaveDtype | str = "fp32",
    overwrite: bool = False,
) -> Path:
    """Write a fine-tuned model as a dclip ``.safetensors`` artifact, atomically.

    Args:
        path: destination (``.safetensors``); the directory is created.
        model: the fine-tuned :class:`~dclip_cli.models.DiffusionModel` (its ``unet`` state dict is saved).
        metadata: provenance (see the module docstring); ``arch`` and ``arch_config`` default to the model's
            ``arch`` and ``config``; ``format``, ``dclip_version``, ``created`` and ``dtype`` are filled in.
        dtype: ``"fp32"``, ``"fp16"`` or ``"bf16"`` for the floating-point tensors.
        overwrite: replace an existing file.

    Returns:
        The path written.

    Raises:
        ConfigError: unknown dtype or a path that does not end in ``.safetensors``.
        OutputExistsError: the file exists and ``overwrite`` is false.
    """
    from safetensors.torch import save_file

    dest = Path(path)
    if dest.suffix != ".safetensors":
        raise ConfigError(
            f"A dclip artifact must be a .safetensors file, not {dest.name}.",
            hint="End the output name with .safetensors, or pass a directory.",
        )
    key = str(dtype).lower()
    if key not in SAVE_DTYPES:
        raise ConfigError(f"Unknown save dtype {dtype!r}.", hint="Use --save-dtype fp32, fp16 or bf16.")
    target = SAVE_DTYPES[key]

    meta: dict[str, Any] = {k: _json_safe(v) for k, v in metadata.items()}
    meta.setdefault("arch", getattr(model, "arch", None))
    meta.setdefault("arch_config", _json_safe(getattr(model, "config", None)))
    meta.update(
        {
            "format": ARTIFACT_FORMAT,
            "format_version": ARTIFACT_VERSION,
            "dclip_version": __version__,
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "dtype": key,
        }
    )
    tensors: dict[str, torch.Tensor] = {}
    for name, value in _unet(model).state_dict().items():
        value = value.detach().to("cpu")
        if value.is_floating_point():
            value = value.to(target)
        tensors[name] = value.contiguous().clone()  # clone: safetensors refuses shared storage
    header = {
        "format": ARTIFACT_FORMAT,
        "format_version": str(ARTIFACT_VERSION),
        METADATA_KEY: json.dumps(meta),
    }
    for flat in FLAT_KEYS:
        if meta.get(flat) is not None:
            header[flat] = str(meta[flat])
    if meta.get("arch_config") is not None:  # what load_diffusion_model reads to rebuild the network
        header["arch_config"] = json.dumps(meta["arch_config"], sort_keys=True)
    with atomic_path(dest, overwrite=overwrite) as tmp:
        save_file(tensors, str(tmp), metadata=header)
    return dest


# --------------------------------------------------------------------------------------------------- reading


def _require_file(path: Path) -> None:
    if not path.is_file():
        raise CheckpointError(
            f"The fine-tuned model {path} does not exist.",
            hint="Check the path, or list the saved edits with 'dclip models list'.",
        )


def read_artifact(path: str | os.PathLike[str]) -> ArtifactInfo:
    """Read what a fine-tuned model file says about itself, without loading its tensors.

    Raises:
        CheckpointError: the file is missing or is not a readable safetensors file.
    """
    p = Path(path)
    _require_file(p)
    if p.suffix != ".safetensors":
        meta: dict[str, Any] = {"source": p.name, "t0": t0_from_name(p)}
        return ArtifactInfo(p, "official", meta)
    from safetensors import safe_open

    try:
        with safe_open(str(p), framework="pt") as f:
            header = f.metadata() or {}
    except Exception as exc:  # safetensors raises its own error types
        raise CheckpointError(
            f"{p} is not a readable .safetensors file: {exc}.",
            hint="The file may be truncated; fine-tune again or copy it anew.",
        ) from exc
    if header.get("format") != ARTIFACT_FORMAT or METADATA_KEY not in header:
        return ArtifactInfo(p, "plain", {"source": p.name, "t0": t0_from_name(p)})
    try:
        meta = json.loads(header[METADATA_KEY])
    except ValueError as exc:
        raise CheckpointError(f"The metadata of {p} is not valid JSON: {exc}.") from exc
    return ArtifactInfo(p, "dclip", meta)


def _read_tensors(info: ArtifactInfo) -> dict[str, torch.Tensor]:
    from dclip_cli.models.io import load_state_dict_file

    return load_state_dict_file(info.path)


def base_sha256_of(base_model: nn.Module, explicit: str | None = None) -> str | None:
    """SHA-256 of the file a base model was loaded from: ``explicit``, its ``sha256`` attribute, or the hash of its
    ``source`` file (memoised per process), else ``None``."""
    if explicit:
        return explicit
    value = getattr(base_model, "sha256", None)
    if isinstance(value, str) and value:
        return value
    source = getattr(base_model, "source", None)
    if isinstance(source, (str, os.PathLike)) and Path(source).is_file():
        from dclip_cli.manifest import file_sha256

        return file_sha256(source)
    return None


def check_compatible(info: ArtifactInfo, base_model: nn.Module, *, base_sha256: str | None = None) -> None:
    """Refuse an artifact recorded for another base (SHA-256 when both are known, else architecture/config).

    Raises:
        IncompatibleModelError: the artifact was made for another base model or architecture.
    """
    meta = info.metadata
    name = info.path.name
    made_for = meta.get("base_checkpoint") or "another base model"
    art_sha = meta.get("base_sha256")
    base_sha = base_sha256_of(base_model, base_sha256) if art_sha else None
    if base_sha and art_sha and base_sha != art_sha:
        raise IncompatibleModelError(
            f"{name} was fine-tuned from {made_for} (sha256 {art_sha[:12]}…), but the base model loaded now has "
            f"sha256 {base_sha[:12]}….",
            hint=f"Use it with the preset or --checkpoint of {made_for}.",
        )
    base_arch = getattr(base_model, "arch", None)
    art_arch = meta.get("arch")
    if base_arch and art_arch and base_arch != art_arch:
        raise IncompatibleModelError(
            f"{name} was fine-tuned from a {art_arch.upper()} model ({made_for}), but the base model is "
            f"{base_arch.upper()}.",
            hint=f"Use it with the preset or --checkpoint of {made_for}.",
        )
    base_config = getattr(base_model, "config", None)
    art_config = meta.get("arch_config")
    if (
        base_config is not None
        and art_config is not None
        and _canonical(base_config) != _canonical(art_config)
    ):
        diff = sorted(
            k
            for k in set(_canonical(base_config)) | set(_canonical(art_config))
            if _canonical(base_config).get(k) != _canonical(art_config).get(k)
        )
        raise IncompatibleModelError(
            f"{name} was fine-tuned from a model with another architecture configuration ({made_for}; differs in "
            f"{', '.join(diff[:5])}).",
            hint=f"Use it with the preset or --checkpoint of {made_for}.",
        )


def _check_state_dict(
    info: ArtifactInfo, state: Mapping[str, torch.Tensor], reference: Mapping[str, Any]
) -> None:
    from dclip_cli.models.build import state_dict_mismatch

    problem = state_dict_mismatch(state, reference)
    if problem is None:
        return
    raise IncompatibleModelError(
        f"{info.path.name} does not fit the base model's architecture: {problem}.",
        hint="Load it on the base it was fine-tuned from (for official models: the preset of its domain).",
    )


def load_artifact(
    path: str | os.PathLike[str],
    base_model: nn.Module,
    *,
    base_sha256: str | None = None,
) -> nn.Module:
    """Load a fine-tuned model (dclip ``.safetensors`` or official ``.pth``) on top of ``base_model``.

    A copy of ``base_model`` receives the fine-tuned weights (cast to the base's dtypes, on its device); the base
    itself is not modified. The returned model has an ``artifact`` attribute (:class:`ArtifactInfo`) and a
    ``base_sha256`` attribute; its ``source`` and ``sha256`` attributes, if any, are cleared (they described the
    base file, not these weights).

    Args:
        path: the artifact.
        base_model: the base :class:`~dclip_cli.models.DiffusionModel` (``arch``, ``config``, ``unet``).
        base_sha256: SHA-256 of the base checkpoint file, when ``base_model`` does not carry it as ``sha256``.

    Returns:
        The fine-tuned model in eval mode.

    Raises:
        IncompatibleModelError: the artifact was made for another base (SHA-256) or architecture.
        CheckpointError: the file is missing or unreadable.
    """
    info = read_artifact(path)
    check_compatible(info, base_model, base_sha256=base_sha256)
    state = _read_tensors(info)
    tuned = copy.deepcopy(base_model)
    unet = _unet(tuned)
    reference = unet.state_dict()
    _check_state_dict(info, state, reference)
    converted = {k: v.to(device=reference[k].device, dtype=reference[k].dtype) for k, v in state.items()}
    unet.load_state_dict(converted, strict=True)
    # the copy no longer holds the weights of the base file
    for attr in ("sha256", "source"):
        if attr in tuned.__dict__:
            tuned.__dict__[attr] = None
    # plain attributes (not parameters), set the way nn.Module stores them
    tuned.__dict__["base_sha256"] = info.base_sha256 or base_sha256 or getattr(base_model, "sha256", None)
    tuned.__dict__["artifact"] = info
    tuned.eval()
    return tuned
