"""The identity (ID) loss for faces: 1 - cos of face embeddings (reference sections 10 and 21.4).

The original uses ArcFace IR-SE50; dclip uses facenet-pytorch's InceptionResnetV1 trained on VGGFace2 (reference
section 10.2), so the values differ from the original's by construction while the form is kept:

    L_id = mean_b(1 - cos(f(x_gen_b), f(x_src_b)))      f(x_src) detached

Preprocessing (section 21.4): from the aligned face at the model resolution take rows 35:223 and columns 32:220 of
a 256x256 image (scaled in proportion for other sizes), resize that window to 160x160 (bilinear, antialiased) and
multiply the [-1, 1] values by 127.5/128 (MTCNN's ``(x - 127.5) / 128`` standardisation).

The network is frozen (``requires_grad=False``, eval mode) and is only built when the identity weight is non-zero.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dclip_cli.errors import CheckpointError, ConfigError, StateDictMismatchError, UnsafeCheckpointError

__all__ = [
    "FACENET_INPUT_SIZE",
    "FacenetEmbedder",
    "IdentityLoss",
    "build_facenet",
    "identity_crop",
    "identity_window",
]

#: The face window of the original, in pixels of a 256x256 aligned face: rows 35:223, columns 32:220 (188x188).
_REF_SIZE = 256
_REF_TOP, _REF_LEFT, _REF_WINDOW = 35, 32, 188

#: InceptionResnetV1 was trained on 160x160 crops.
FACENET_INPUT_SIZE = 160


def _round_half_up(value: float) -> int:
    return int(value + 0.5)


def identity_window(height: int, width: int) -> tuple[int, int, int, int]:
    """The face window for an aligned image of ``height`` x ``width`` pixels.

    For 256x256 this is exactly rows 35:223 and columns 32:220; other sizes scale every number in proportion
    (rows by height/256, columns by width/256, rounded half up), keeping the window's size fixed relative to the
    image so it stays square on square images.

    Returns:
        ``(top, bottom, left, right)``: the window is ``x[..., top:bottom, left:right]``.
    """
    sy, sx = height / _REF_SIZE, width / _REF_SIZE
    top, left = _round_half_up(_REF_TOP * sy), _round_half_up(_REF_LEFT * sx)
    return (
        top,
        top + max(1, _round_half_up(_REF_WINDOW * sy)),
        left,
        left + max(1, _round_half_up(_REF_WINDOW * sx)),
    )


def identity_crop(x: Tensor, size: int = FACENET_INPUT_SIZE) -> Tensor:
    """Crop the face window, resize it to ``size`` (bilinear, antialiased) and scale by 127.5/128.

    Args:
        x: (B, 3, H, W) aligned faces in [-1, 1].
        size: output size (160 for InceptionResnetV1).

    Returns:
        (B, 3, size, size) float32, differentiable with respect to ``x``.
    """
    if x.dim() != 4 or x.shape[1] != 3:
        raise ConfigError(
            f"The identity loss expects images of shape (B, 3, H, W), got {tuple(x.shape)}.",
            hint="Pass a batch of RGB images in [-1, 1].",
        )
    top, bottom, left, right = identity_window(x.shape[-2], x.shape[-1])
    window = x[:, :, top:bottom, left:right].float()
    window = F.interpolate(window, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    return window * (127.5 / 128.0)


class FacenetEmbedder(nn.Module):
    """Aligned faces in [-1, 1] -> 512-d unit embeddings with facenet-pytorch's InceptionResnetV1.

    Args:
        net: an ``InceptionResnetV1(classify=False)`` (or any module mapping (B, 3, 160, 160) to (B, D)).
    """

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net
        self.net.requires_grad_(False)
        self.net.eval()

    def train(self, mode: bool = True) -> FacenetEmbedder:
        """Keep the network in eval mode (its BatchNorm and dropout must not change behaviour)."""
        super().train(mode)
        self.net.eval()
        return self

    def forward(self, x: Tensor) -> Tensor:
        """Embed faces.

        Args:
            x: (B, 3, H, W) aligned faces in [-1, 1].

        Returns:
            (B, 512) float32 L2-normalised embeddings.
        """
        dtype = next(self.net.parameters()).dtype
        embeddings = self.net(identity_crop(x).to(dtype))
        return F.normalize(embeddings.float(), dim=-1)


def build_facenet(weights_path: str | os.PathLike[str], device: Any = None) -> FacenetEmbedder:
    """Build the frozen VGGFace2 InceptionResnetV1 identity network from a local weights file.

    Args:
        weights_path: facenet-pytorch's ``20180402-114759-vggface2.pt`` (a state dict; its 8631-class ``logits``
            layer is dropped, it is not used for embeddings), normally fetched by the checkpoint store.
        device: ``"auto"``, ``"cpu"``, ``"cuda"``, ... or a ``torch.device`` (default ``"auto"``).

    Returns:
        A :class:`FacenetEmbedder` in eval mode with ``requires_grad=False``.

    Raises:
        CheckpointError: the file is missing or unreadable; ``UnsafeCheckpointError`` if it needs arbitrary
            pickled objects; ``StateDictMismatchError`` if its keys or shapes do not fit InceptionResnetV1.
    """
    from facenet_pytorch import InceptionResnetV1

    from dclip_cli.device import resolve_device

    dev = device if isinstance(device, torch.device) else resolve_device(device)
    path = Path(weights_path).expanduser()
    if not path.is_file():
        raise CheckpointError(
            f"The identity-network weights {str(path)!r} do not exist.",
            hint="Run `dclip models fetch facenet-vggface2`, or set the identity weight to 0.",
        )
    try:
        loaded: Any = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise UnsafeCheckpointError(
            f"The identity-network file {str(path)!r} contains pickled Python objects other than tensors and was "
            "not loaded.",
            hint="Use facenet-pytorch's 20180402-114759-vggface2.pt state dict.",
        ) from exc
    except (RuntimeError, OSError, KeyError, ValueError, EOFError) as exc:
        raise CheckpointError(
            f"The identity-network file {str(path)!r} could not be read ({type(exc).__name__}: {exc}).",
            hint="Delete it and download it again with `dclip models fetch facenet-vggface2`.",
        ) from exc
    if isinstance(loaded, dict) and isinstance(loaded.get("state_dict"), dict):
        loaded = loaded["state_dict"]
    if not isinstance(loaded, dict):
        raise StateDictMismatchError(
            f"The identity-network file {str(path)!r} holds a {type(loaded).__name__}, not a state dict.",
            hint="Use facenet-pytorch's 20180402-114759-vggface2.pt state dict.",
        )
    state = {
        (k[len("module.") :] if k.startswith("module.") else k): v
        for k, v in loaded.items()
        if not k.startswith(("logits.", "module.logits."))
    }
    net = InceptionResnetV1(pretrained=None, classify=False)
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise StateDictMismatchError(
            f"The identity-network file {str(path)!r} does not fit InceptionResnetV1: {exc}",
            hint="Use facenet-pytorch's VGGFace2 weights (20180402-114759-vggface2.pt).",
        ) from exc
    return FacenetEmbedder(net).to(dev)


class IdentityLoss(nn.Module):
    """L_id = 1 - cos(f(x_gen), f(x_src)), with f frozen and the source embedding detached.

    Call as ``loss(x_src, x_gen)`` (the original's order: source first) for the batch mean, or
    :meth:`per_sample` for one value per image.

    Args:
        net: maps (B, 3, S, S) aligned faces in [-1, 1] to (B, D) embeddings, for example :func:`build_facenet`'s
            result (which does the section 21.4 preprocessing itself). It is frozen here.
    """

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net
        self.net.requires_grad_(False)
        self.net.eval()

    def train(self, mode: bool = True) -> IdentityLoss:
        """Keep the identity network in eval mode."""
        super().train(mode)
        self.net.eval()
        return self

    def per_sample(self, x_src: Tensor, x_gen: Tensor) -> Tensor:
        """1 - cos per image.

        Args:
            x_src: (B, 3, S, S) source faces in [-1, 1] (no gradient is taken through them).
            x_gen: (B, 3, S, S) generated faces in [-1, 1].

        Returns:
            (B,) float32 in [0, 2].
        """
        if x_src.shape != x_gen.shape:
            raise ConfigError(
                f"x_src has shape {tuple(x_src.shape)} but x_gen has {tuple(x_gen.shape)}.",
                hint="Pass one source face per generated face, at the same size.",
            )
        with torch.no_grad():
            src = self.net(x_src).float()
        gen = self.net(x_gen).float()
        return 1.0 - F.cosine_similarity(gen, src.detach(), dim=1, eps=1e-8)

    def forward(self, x_src: Tensor, x_gen: Tensor) -> Tensor:
        """The batch mean of :meth:`per_sample`: a float32 scalar."""
        return self.per_sample(x_src, x_gen).mean()
