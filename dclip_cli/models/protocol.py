"""The eps-model protocol and the :class:`DiffusionModel` adapter shared by both UNet families.

Like k-diffusion's ``OpenAIDenoiser``, the adapter makes the DDPM UNet (ε only) and the ADM UNet (ε plus
learned-variance channels) look the same to the sampler and the mixer: ``model(x, t) -> eps``.
"""

from __future__ import annotations

from typing import Any, Literal, Protocol, runtime_checkable

import torch
from torch import nn

Arch = Literal["ddpm", "adm"]


@runtime_checkable
class EpsModel(Protocol):
    """Anything called as ``model(x, t) -> eps``: ``x`` (B, C, H, W), ``t`` float32 (B,), ``eps`` like ``x``."""

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor: ...


class DiffusionModel(nn.Module):
    """A diffusion UNet behind the eps-model interface.

    Attributes:
        arch: ``"ddpm"`` or ``"adm"``.
        config: the full, normalised architecture configuration (ddim YAML names for DDPM,
            ``create_model`` names for ADM).
        image_size: the resolution S the model was trained at.
        learn_sigma: whether the network also outputs variance channels (dropped by :meth:`forward`).
        unet: the raw network; ``unet.state_dict()`` has exactly the official checkpoint keys.
        source: the file the weights were loaded from, or ``None``.
        sha256: SHA-256 of that file when known (set by callers), or ``None``.
    """

    def __init__(
        self, unet: nn.Module, *, arch: Arch, config: dict[str, Any], image_size: int, learn_sigma: bool
    ):
        super().__init__()
        self.unet = unet
        self.arch: Arch = arch
        self.config = dict(config)
        self.image_size = int(image_size)
        self.learn_sigma = bool(learn_sigma)
        #: the file the weights came from, when loaded with ``load_diffusion_model``
        self.source: str | None = None
        #: SHA-256 of that file, when a caller has computed it
        self.sha256: str | None = None

    @property
    def in_channels(self) -> int:
        """Number of image channels the model takes (3 for RGB)."""
        return int(self.unet.in_channels)  # type: ignore[arg-type]

    @property
    def device(self) -> torch.device:
        """Device of the model's parameters."""
        return next(self.unet.parameters()).device

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Predict ε.

        Args:
            x: (B, C, H, W) noisy images.
            t: (B,) float32 timesteps.

        Returns:
            eps: (B, C, H, W); learned-sigma channels are dropped.
        """
        out = self.predict(x, t)
        if self.learn_sigma:
            eps, _ = torch.chunk(out, 2, dim=1)
            return eps
        return out

    def predict(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Return the raw network output, (B, 2C, H, W) for learned-sigma models (ε then variance)."""
        return self.unet(x, t)  # type: ignore[no-any-return]

    def set_gradient_checkpointing(self, enabled: bool = True) -> None:
        """Trade compute for memory in backward passes (see the UNets' ``set_gradient_checkpointing``)."""
        self.unet.set_gradient_checkpointing(enabled)  # type: ignore[operator]

    def extra_repr(self) -> str:
        return f"arch={self.arch!r}, image_size={self.image_size}, learn_sigma={self.learn_sigma}"
