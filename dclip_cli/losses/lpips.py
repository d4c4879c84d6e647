"""An optional LPIPS perceptual term (the ``lpips`` package) for fine-tuning.

LPIPS has two parts:

* the linear calibration layers, shipped inside the ``lpips`` package (``lpips/weights/v0.1/<net>.pth``), always
  available offline;
* the ImageNet trunk (AlexNet by default, or VGG16 / SqueezeNet 1.1), which ``lpips`` would fetch through
  torchvision on first use. dclip loads it itself: from torch hub's cache (``$TORCH_HOME/hub/checkpoints``) when
  torchvision already downloaded it there, else through dclip's checkpoint store (registry names ``lpips-alex``,
  ``lpips-vgg``, ``lpips-squeeze``), which honours ``DCLIP_OFFLINE``, ``DCLIP_MIRROR`` and the cache directory.

Inputs are images in [-1, 1], as everywhere in dclip. The module is frozen and stays in eval mode.
"""

from __future__ import annotations

import os
import pickle
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from dclip_cli.errors import CheckpointError, ConfigError

__all__ = ["LPIPS_NETS", "LPIPSLoss", "trunk_weights_path", "trunk_weights_url"]

#: LPIPS trunk name -> (torchvision weights enum, member).
_TRUNKS: dict[str, tuple[str, str]] = {
    "alex": ("AlexNet_Weights", "IMAGENET1K_V1"),
    "vgg": ("VGG16_Weights", "IMAGENET1K_V1"),
    "squeeze": ("SqueezeNet1_1_Weights", "IMAGENET1K_V1"),
}
LPIPS_NETS: tuple[str, ...] = tuple(_TRUNKS)


def _canonical_net(net: str) -> str:
    key = {"vgg16": "vgg", "alexnet": "alex", "squeezenet": "squeeze"}.get(net.lower(), net.lower())
    if key not in _TRUNKS:
        raise ConfigError(f"Unknown LPIPS network {net!r}.", hint=f"Use one of {', '.join(LPIPS_NETS)}.")
    return key


def trunk_weights_url(net: str = "alex") -> str:
    """The URL torchvision publishes the ImageNet weights of the LPIPS trunk at."""
    import torchvision.models as tvm

    enum_name, member = _TRUNKS[_canonical_net(net)]
    return str(getattr(getattr(tvm, enum_name), member).url)


def trunk_weights_path(net: str = "alex") -> Path:
    """Where the trunk weights live in torch hub's cache (``torch.hub.get_dir()/checkpoints/<file>``)."""
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(trunk_weights_url(net))


def _load_trunk_state_dict(
    net: str, offline: bool | None, on_progress: Any = None, path: Path | None = None
) -> tuple[dict[str, Tensor], Path]:
    """The trunk's ImageNet weights: from torch hub's cache when torchvision already put them there, else from
    dclip's checkpoint store (``lpips-<net>``: locked, resumable, verified download; offline-aware)."""
    path = path or trunk_weights_path(net)
    if not path.is_file():
        from dclip_cli.checkpoints.download import fetch

        path = fetch(f"lpips-{net}", on_progress=on_progress, offline=offline)
    try:
        state: Any = torch.load(str(path), map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, OSError, EOFError) as exc:
        raise CheckpointError(
            f"The LPIPS trunk weights {str(path)!r} could not be read ({exc}).",
            hint=f"Delete the file (dclip models rm lpips-{net}); it is downloaded again on the next run.",
        ) from exc
    return dict(state), path


class LPIPSLoss(nn.Module):
    """LPIPS distance between images in [-1, 1] (lower is more similar).

    Args:
        net: trunk, ``"alex"`` (default, as LPIPS recommends for a loss), ``"vgg"`` or ``"squeeze"``.
        pretrained: load the calibrated linear layers shipped with the ``lpips`` package (else random).
        pnet_rand: leave the trunk randomly initialised instead of loading its ImageNet weights (tests only).
        offline: forbid downloading the trunk weights; default from ``DCLIP_OFFLINE``.
        on_progress: ``on_progress(done_bytes, total_or_None)`` while the trunk weights download.
        trunk_path: a local file with the trunk's torchvision weights (skips the lookup and download).

    Raises:
        CheckpointNotCachedError: the trunk weights are not cached and downloads are forbidden.
        DownloadError: the trunk weights could not be downloaded.
    """

    def __init__(
        self,
        net: str = "alex",
        pretrained: bool = True,
        *,
        pnet_rand: bool = False,
        offline: bool | None = None,
        on_progress: Any = None,
        trunk_path: str | os.PathLike[str] | None = None,
    ) -> None:
        super().__init__()
        import lpips

        self.net_name = _canonical_net(net)
        with warnings.catch_warnings():
            # lpips calls torchvision's deprecated ``pretrained=`` argument; the trunk is never downloaded here.
            warnings.simplefilter("ignore", UserWarning)
            self.lpips = lpips.LPIPS(net=self.net_name, pretrained=pretrained, pnet_rand=True, verbose=False)
        if not pnet_rand:
            self._load_trunk(offline, on_progress, Path(trunk_path) if trunk_path else None)
        self.lpips.requires_grad_(False)
        self.lpips.eval()

    def _load_trunk(self, offline: bool | None, on_progress: Any, path: Path | None) -> None:
        state, path = _load_trunk_state_dict(self.net_name, offline, on_progress, path)
        self.trunk_path = path
        # lpips slices torchvision's ``features`` into ``slice1..sliceN`` whose children keep their index in
        # ``features``: ``features.<i>.<rest>`` of the torchvision file goes to that child (the classifier is unused).
        layers = {
            int(name): layer for part in self.lpips.net.children() for name, layer in part.named_children()
        }
        grouped: dict[int, dict[str, Tensor]] = {i: {} for i in layers}
        for key, value in state.items():
            if not key.startswith("features."):
                continue
            number, rest = key[len("features.") :].split(".", 1)
            if int(number) not in grouped:
                raise CheckpointError(
                    f"The LPIPS trunk weights {str(path)!r} have a layer features.{number} that LPIPS' {self.net_name} "
                    "trunk does not have.",
                    hint="Delete the file; it is downloaded again on the next run.",
                )
            grouped[int(number)][rest] = value
        try:
            for index, layer in layers.items():
                layer.load_state_dict(grouped[index], strict=True)
        except RuntimeError as exc:
            raise CheckpointError(
                f"The LPIPS trunk weights {str(path)!r} do not fit LPIPS' {self.net_name} trunk: {exc}",
                hint="Delete the file; it is downloaded again on the next run.",
            ) from exc

    def train(self, mode: bool = True) -> LPIPSLoss:
        """Keep LPIPS in eval mode (its dropout layers must stay off)."""
        super().train(mode)
        self.lpips.eval()
        return self

    def per_sample(self, x: Tensor, y: Tensor) -> Tensor:
        """LPIPS per image.

        Args:
            x: (B, 3, H, W) in [-1, 1].
            y: (B, 3, H, W) in [-1, 1].

        Returns:
            (B,) float32, >= 0.
        """
        if x.shape != y.shape or x.dim() != 4 or x.shape[1] != 3:
            raise ConfigError(
                f"LPIPS compares two batches of the same shape (B, 3, H, W), got {tuple(x.shape)} and "
                f"{tuple(y.shape)}.",
                hint="Pass images of the same size in [-1, 1].",
            )
        return self.lpips(x.float(), y.float()).reshape(x.shape[0])

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        """The batch mean of :meth:`per_sample`: a float32 scalar."""
        return self.per_sample(x, y).mean()
