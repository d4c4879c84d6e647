"""An optional LPIPS perceptual term (the ``lpips`` package) for fine-tuning.

LPIPS has two parts:

* the linear calibration layers, shipped inside the ``lpips`` package (``lpips/weights/v0.1/<net>.pth``), always
  available offline;
* the ImageNet trunk (AlexNet by default, or VGG16 / SqueezeNet 1.1), which ``lpips`` would fetch through
  torchvision on first use. :class:`LPIPSLoss` takes the trunk's weights as a file instead and never downloads:
  ``dclip_cli.store.load_lpips`` finds them in torch hub's cache (``$TORCH_HOME/hub/checkpoints``) when torchvision
  already downloaded them there, else fetches them through dclip's checkpoint store (registry names ``lpips-alex``,
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

__all__ = ["LPIPS_NETS", "LPIPSLoss", "canonical_net", "trunk_weights_path", "trunk_weights_url"]

#: LPIPS trunk name -> (torchvision weights enum, member).
_TRUNKS: dict[str, tuple[str, str]] = {
    "alex": ("AlexNet_Weights", "IMAGENET1K_V1"),
    "vgg": ("VGG16_Weights", "IMAGENET1K_V1"),
    "squeeze": ("SqueezeNet1_1_Weights", "IMAGENET1K_V1"),
}
LPIPS_NETS: tuple[str, ...] = tuple(_TRUNKS)


def canonical_net(net: str) -> str:
    key = {"vgg16": "vgg", "alexnet": "alex", "squeezenet": "squeeze"}.get(net.lower(), net.lower())
    if key not in _TRUNKS:
        raise ConfigError(f"Unknown LPIPS network {net!r}.", hint=f"Use one of {', '.join(LPIPS_NETS)}.")
    return key


def trunk_weights_url(net: str = "alex") -> str:
    """The URL torchvision publishes the ImageNet weights of the LPIPS trunk at."""
    import torchvision.models as tvm

    enum_name, member = _TRUNKS[canonical_net(net)]
    return str(getattr(getattr(tvm, enum_name), member).url)


def trunk_weights_path(net: str = "alex") -> Path:
    """Where the trunk weights live in torch hub's cache (``torch.hub.get_dir()/checkpoints/<file>``)."""
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(trunk_weights_url(net))


def _load_trunk_state_dict(net: str, path: Path) -> dict[str, Tensor]:
    """The trunk's ImageNet weights from a torchvision file."""
    try:
        state: Any = torch.load(str(path), map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, OSError, EOFError) as exc:
        raise CheckpointError(
            f"The LPIPS trunk weights {str(path)!r} could not be read ({exc}).",
            hint=f"Delete the file (dclip models rm lpips-{net}); it is downloaded again on the next run.",
        ) from exc
    return dict(state)


class LPIPSLoss(nn.Module):
    """LPIPS distance between images in [-1, 1] (lower is more similar).

    Args:
        net: trunk, ``"alex"`` (default, as LPIPS recommends for a loss), ``"vgg"`` or ``"squeeze"``.
        pretrained: load the calibrated linear layers shipped with the ``lpips`` package (else random).
        pnet_rand: leave the trunk randomly initialised instead of loading its ImageNet weights (tests only).
        trunk_path: the file with the trunk's torchvision ImageNet weights; required unless ``pnet_rand``
            (``dclip_cli.store.lpips_trunk`` finds or fetches it).

    Raises:
        ConfigError: no ``trunk_path`` without ``pnet_rand``, or an unknown network.
        CheckpointError: the trunk weights are unreadable or do not fit.
    """

    def __init__(
        self,
        net: str = "alex",
        pretrained: bool = True,
        *,
        pnet_rand: bool = False,
        trunk_path: str | os.PathLike[str] | None = None,
    ) -> None:
        super().__init__()
        import lpips

        self.net_name = canonical_net(net)
        with warnings.catch_warnings():
            # lpips calls torchvision's deprecated ``pretrained=`` argument; the trunk is never downloaded here.
            warnings.simplefilter("ignore", UserWarning)
            self.lpips = lpips.LPIPS(net=self.net_name, pretrained=pretrained, pnet_rand=True, verbose=False)
        if not pnet_rand:
            if trunk_path is None:
                raise ConfigError(
                    "LPIPS needs the file of its trunk's ImageNet weights (trunk_path).",
                    hint="Use dclip_cli.store.load_lpips(), which finds or downloads it, or pass pnet_rand=True.",
                )
            self._load_trunk(Path(trunk_path))
        self.lpips.requires_grad_(False)
        self.lpips.eval()

    def _load_trunk(self, path: Path) -> None:
        state = _load_trunk_state_dict(self.net_name, path)
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
