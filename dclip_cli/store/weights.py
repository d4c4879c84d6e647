"""The weights the losses and metrics need, found or fetched: CLIP, the LPIPS trunk, the identity network.

The loss modules (:mod:`dclip_cli.losses`) take files or loaded networks and never download; these functions turn a
name into a file through the checkpoint store (locked, resumable, verified, offline-aware downloads) and build the
network from it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dclip_cli.errors import CheckpointError, ConfigError, UnknownCheckpointError
from dclip_cli.progress import ProgressCallback, Reporter
from dclip_cli.store.specs import fetch

if TYPE_CHECKING:
    import torch

    from dclip_cli.losses.clip import ClipModel
    from dclip_cli.losses.lpips import LPIPSLoss
    from dclip_cli.presets.preset import Preset


def clip_file(
    name_or_path: str | os.PathLike[str], *, progress: Reporter | ProgressCallback | None = None
) -> tuple[Path, str]:
    """The file of a CLIP model and the name to record for it.

    ``name_or_path`` is a path to an OpenAI CLIP file, or a model name (``"ViT-B/16"``, ``"ViT-B-16"``,
    ``"ViT-B/32"`` or a registry name such as ``"clip-vit-b-16"``) fetched through the checkpoint store.

    Raises:
        UnknownCheckpointError: the name is neither a file nor a known CLIP model.
        CheckpointError: a path that does not exist; and as :func:`fetch`.
    """
    from dclip_cli.losses.clip import clip_registry_name, is_path_like, known_names

    text = os.fspath(name_or_path)
    if is_path_like(name_or_path):
        path = Path(text).expanduser()
        if not path.exists():
            raise CheckpointError(
                f"The CLIP file {text!r} does not exist.",
                hint=f"Check the path, or pass a model name ({known_names()}).",
            )
        return path, str(path)
    name = clip_registry_name(text)
    try:
        return fetch(name, progress=progress), name
    except UnknownCheckpointError as exc:
        raise UnknownCheckpointError(
            f"{text!r} is neither a CLIP file nor a known CLIP model (looked for registry entry {name!r}).",
            hint=f"Use one of {known_names()}, or the path to an OpenAI CLIP .pt file.",
        ) from exc


def load_clip(
    name_or_path: str | os.PathLike[str],
    *,
    device: str | torch.device | None = None,
    precision: str | None = None,
    progress: Reporter | ProgressCallback | None = None,
) -> ClipModel:
    """Load a frozen OpenAI CLIP model by name (fetched through the checkpoint store) or from a file.

    Args:
        name_or_path: see :func:`clip_file`.
        device: ``"auto"`` (default), ``"cpu"``, ``"cuda"``, ... or a ``torch.device``.
        precision: ``"fp16"``, ``"fp32"`` or ``"bf16"``; default fp16 on CUDA (as the original) and fp32 elsewhere.
        progress: receives the download events when a name has to be fetched.
    """
    from dclip_cli.losses.clip import load_clip_file

    path, name = clip_file(name_or_path, progress=progress)
    return load_clip_file(path, device=device, precision=precision, name=name)


def lpips_trunk(
    net: str = "alex", *, offline: bool | None = None, progress: Reporter | ProgressCallback | None = None
) -> Path:
    """The file of the LPIPS trunk's ImageNet weights: torch hub's cached copy when torchvision already downloaded
    it, else dclip's checkpoint store (``lpips-<net>``)."""
    from dclip_cli.losses.lpips import canonical_net, trunk_weights_path

    path = trunk_weights_path(net)
    if path.is_file():
        return path
    return fetch(f"lpips-{canonical_net(net)}", offline=offline, progress=progress)


def load_lpips(
    net: str = "alex",
    *,
    offline: bool | None = None,
    progress: Reporter | ProgressCallback | None = None,
    device: str | torch.device | None = None,
) -> LPIPSLoss:
    """An :class:`~dclip_cli.losses.lpips.LPIPSLoss` with its trunk weights from :func:`lpips_trunk`."""
    from dclip_cli.losses.lpips import LPIPSLoss

    loss = LPIPSLoss(net, trunk_path=lpips_trunk(net, offline=offline, progress=progress))
    return loss.to(device) if device is not None else loss


def identity_network(
    preset: Preset, device: Any, *, progress: Reporter | ProgressCallback | None = None
) -> tuple[Any, str, Path]:
    """Build the preset's identity network from the weights its plugin registered.

    Returns:
        ``(network, checkpoint name, weights file)``.

    Raises:
        ConfigError: the preset has no identity model, or no installed plugin registers it.
    """
    from dclip_cli.presets.manager import get_registry

    if not preset.identity_model:
        raise ConfigError(
            f"The preset {preset.name!r} has no identity model, so the identity loss cannot be used.",
            hint="Pass --id-weight 0.",
        )
    ident = get_registry().identity_models.get(preset.identity_model)
    if ident is None:
        raise ConfigError(
            f"The identity model {preset.identity_model!r} of preset {preset.name!r} is not installed.",
            hint="Pass --id-weight 0, or install the plugin that provides it.",
        )
    weights = fetch(ident.checkpoint, progress=progress)
    return ident.build(weights, device), ident.checkpoint, weights
