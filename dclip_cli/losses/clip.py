"""CLIP for DiffusionCLIP: loading OpenAI weights, the directional loss and CLIP-based metrics.

Reference: ``diffusionclip-reference.md`` sections 9 (CLIP directional loss) and 21 (parity policy).

Notation::

    x_src  -> x₀, the source image (B, 3, S, S) in [-1, 1], no gradient
    x_gen  -> the generated (edited) image, same shape, carries the gradient
    E_I    -> CLIP image encoder after the differentiable preprocessing of section 9.2, L2-normalised
    E_T    -> CLIP text encoder, L2-normalised
    ΔT     -> normalise(mean_i(E_T(template_i(trg)) - E_T(template_i(src))))   over the 79 templates
    ΔI     -> (E_I(x_gen) - E_I(x_src)) / (‖·‖ + 1e-7)
    L_dir  -> mean_b(1 - cos(ΔI_b, ΔT))        in [0, 2]
    L_clip -> -log((2 - L_dir) / 2)            the training term (weighted by clip_weight, default 3)

CLIP is OpenAI's own archive (``ViT-B-16.pt`` and friends) built by open-clip-torch's OpenAI loader, which reads the
architecture from the weights and uses QuickGELU as OpenAI trained it (never ``create_model('ViT-B-16',
pretrained='openai')``, which builds GELU). It is frozen, runs in fp16 on CUDA as the original does and in fp32
elsewhere; features leave the encoders as float32, so every loss term is computed and summed in fp32.
"""

from __future__ import annotations

import os
import pickle
import warnings
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from torch import Tensor, nn

from dclip_cli.errors import (
    CheckpointError,
    ConfigError,
    StateDictMismatchError,
    UnsafeCheckpointError,
)
from dclip_cli.losses.templates import IMAGENET_TEMPLATES, format_templates

__all__ = [
    "CLIP_MEAN",
    "CLIP_STD",
    "ClipModel",
    "DirectionalCLIPLoss",
    "Precision",
    "clip_registry_name",
    "clip_term",
    "directional_similarity",
    "image_direction",
    "is_path_like",
    "known_names",
    "load_clip_file",
    "text_direction",
    "text_similarity",
    "zero_shot",
]

#: OpenAI CLIP's image normalisation constants (reference section 9.2).
CLIP_MEAN: tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD: tuple[float, float, float] = (0.26862954, 0.26130258, 0.27577711)

Precision = Literal["fp32", "fp16", "bf16"]
_PRECISIONS: tuple[str, ...] = ("fp32", "fp16", "bf16")

#: Suffixes that mark an argument of :func:`load_clip` as a file path rather than a model name.
_FILE_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt", ".safetensors", ".tar")

#: Keys of OpenAI archives that are not weights: scalars saved next to the weights, and the causal mask a traced
#: model keeps as a buffer. open-clip rebuilds all of them from the architecture.
_NON_WEIGHT_KEYS = ("input_resolution", "context_length", "vocab_size")

_KNOWN_NAMES = "ViT-B/16 (the default), ViT-B/32"


# ----------------------------------------------------------------------------------------------------------------
# Loading
# ----------------------------------------------------------------------------------------------------------------


class ClipModel(nn.Module):
    """A frozen OpenAI CLIP model that takes dclip images directly.

    Attributes:
        model: the open-clip ``CLIP`` network (frozen, always in eval mode).
        name: the registry name (``clip-vit-b-16``) or the file path it was loaded from.
        precision: ``"fp32"``, ``"fp16"`` or ``"bf16"``: the dtype the encoders run in.
        image_size: the CLIP input size n_px (224 for ViT-B/16).
        context_length: the text context length (77 for OpenAI models).
    """

    mean: Tensor
    std: Tensor

    def __init__(self, model: nn.Module, *, name: str, precision: str = "fp32") -> None:
        super().__init__()
        self.model = model
        self.name = name
        self.precision = precision
        net: Any = model
        size = net.visual.image_size
        self.image_size = int(size[0] if isinstance(size, (tuple, list)) else size)
        self.context_length = int(net.context_length)
        self.register_buffer("mean", torch.tensor(CLIP_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(CLIP_STD).view(1, 3, 1, 1), persistent=False)
        self.model.requires_grad_(False)
        self.model.eval()

    def train(self, mode: bool = True) -> ClipModel:
        """Keep CLIP in eval mode whatever a containing module asks for (it is never trained)."""
        super().train(mode)
        self.model.eval()
        return self

    @property
    def device(self) -> torch.device:
        """The device the weights live on."""
        return self.mean.device

    @property
    def dtype(self) -> torch.dtype:
        """The dtype the encoders compute in (float16 for fp16 precision)."""
        return self._input_dtype()

    def _input_dtype(self) -> torch.dtype:
        visual: Any = self.model.visual
        conv1 = getattr(visual, "conv1", None)
        weight = conv1.weight if conv1 is not None else next(visual.parameters())
        return weight.dtype

    def preprocess(self, x: Tensor) -> Tensor:
        """The differentiable CLIP preprocessing of reference section 9.2.

        [-1, 1] -> [0, 1]; bicubic antialiased resize of the shorter side to ``image_size``; centre crop
        ``image_size``; CLIP mean/std.

        Args:
            x: (B, 3, H, W) images in [-1, 1].

        Returns:
            (B, 3, n, n) float32 CLIP input with n = ``image_size``.
        """
        if x.dim() != 4 or x.shape[1] != 3:
            raise ConfigError(
                f"CLIP expects images of shape (B, 3, H, W), got {tuple(x.shape)}.",
                hint="Pass a batch of RGB images in [-1, 1].",
            )
        n = self.image_size
        x = (x.float() + 1.0) / 2.0  # Normalize(mean=-1, std=2)
        h, w = x.shape[-2:]
        if (h, w) != (n, n):
            # torchvision's Resize(n): the shorter side becomes n, the longer one int(n * long / short).
            if h <= w:
                size = (n, int(n * w / h))
            else:
                size = (int(n * h / w), n)
            x = F.interpolate(x, size=size, mode="bicubic", align_corners=False, antialias=True)
            top = int(round((size[0] - n) / 2.0))
            left = int(round((size[1] - n) / 2.0))
            x = x[:, :, top : top + n, left : left + n]
        return (x - self.mean.to(x.device)) / self.std.to(x.device)

    def encode_image(self, x: Tensor) -> Tensor:
        """Encode images with the CLIP image encoder.

        Args:
            x: (B, 3, H, W) in [-1, 1]; gradients flow back to ``x``.

        Returns:
            (B, D) float32 L2-normalised image features.
        """
        pixels = self.preprocess(x).to(device=self.device, dtype=self._input_dtype())
        features = self.model.encode_image(pixels)  # type: ignore[operator]
        return F.normalize(features.float(), dim=-1)

    def tokenize(self, texts: Sequence[str]) -> Tensor:
        """Tokenize with open-clip's OpenAI BPE tokenizer (context 77, truncated).

        Returns:
            (K, context_length) int64 token ids on the model's device.
        """
        from open_clip.tokenizer import tokenize

        if isinstance(texts, str):
            texts = [texts]
        return tokenize(list(texts), context_length=self.context_length).to(self.device)

    def encode_text(self, texts: Sequence[str]) -> Tensor:
        """Encode prompts with the CLIP text encoder.

        Args:
            texts: K prompts (a single string counts as one prompt).

        Returns:
            (K, D) float32 L2-normalised text features.
        """
        tokens = self.tokenize(texts)
        features = self.model.encode_text(tokens)  # type: ignore[operator]
        return F.normalize(features.float(), dim=-1)

    def forward(self, x: Tensor) -> Tensor:
        """Same as :meth:`encode_image`."""
        return self.encode_image(x)


def clip_registry_name(name: str) -> str:
    """Map a CLIP model name to its checkpoint-registry name.

    ``"ViT-B/16"``, ``"ViT-B-16"``, ``"vit-b-16"`` and ``"clip-vit-b-16"`` all give ``"clip-vit-b-16"``;
    ``"ViT-L/14@336px"`` gives ``"clip-vit-l-14-336px"``.
    """
    key = name.strip().lower().replace("/", "-").replace("@", "-").replace("_", "-")
    if key.startswith("clip-"):
        key = key[len("clip-") :]
    return "clip-" + key


def _is_torchscript_archive(path: Path) -> bool:
    """A TorchScript archive is a zip holding ``constants.pkl`` or compiled ``code/``; ``torch.save`` zips hold
    neither."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
    return any(n.endswith("/constants.pkl") or "/code/" in n for n in names)


def _is_torch_file(path: Path) -> bool:
    """``torch.save`` writes a zip archive (or, in the legacy format, a pickle starting with the PROTO opcode)."""
    if zipfile.is_zipfile(path):
        return True
    with path.open("rb") as f:
        return f.read(1) == b"\x80"


def _read_state_dict(path: Path) -> dict[str, Tensor]:
    """Read an OpenAI CLIP file: a TorchScript archive, a ``torch.save`` state dict or a safetensors file."""
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return dict(load_file(str(path), device="cpu"))
        if _is_torchscript_archive(path):
            # The archive's code is never run: only its tensors are read, as open-clip's OpenAI loader does.
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                module = torch.jit.load(str(path), map_location="cpu")
            return {k: v for k, v in module.state_dict().items()}
        if not _is_torch_file(path):
            raise ValueError("neither a zip archive nor a pickle")
        loaded: Any = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise UnsafeCheckpointError(
            f"The CLIP file {str(path)!r} contains pickled Python objects other than tensors and was not loaded.",
            hint="Use OpenAI's TorchScript archive or a plain state dict saved with torch.save(model.state_dict()).",
        ) from exc
    except (RuntimeError, OSError, KeyError, ValueError, EOFError, SafetensorError) as exc:
        raise CheckpointError(
            f"The CLIP file {str(path)!r} could not be read ({type(exc).__name__}: {exc}).",
            hint="Check that it is an OpenAI CLIP .pt file; delete and re-download it if it is truncated.",
        ) from exc
    if isinstance(loaded, Mapping) and "state_dict" in loaded and isinstance(loaded["state_dict"], Mapping):
        loaded = loaded["state_dict"]
    if not isinstance(loaded, Mapping):
        raise StateDictMismatchError(
            f"The CLIP file {str(path)!r} holds a {type(loaded).__name__}, not a state dict.",
            hint="Use OpenAI's TorchScript archive or a plain state dict.",
        )
    state = {}
    for key, value in loaded.items():
        if isinstance(value, Tensor):
            state[key[len("module.") :] if key.startswith("module.") else key] = value
    return state


def _build_open_clip(state: dict[str, Tensor], precision: str, source: str) -> nn.Module:
    from open_clip.model import build_model_from_openai_state_dict, convert_weights_to_lp, get_cast_dtype

    weights = {
        k: v
        for k, v in state.items()
        if k not in _NON_WEIGHT_KEYS and not k.rsplit(".", 1)[-1] == "attn_mask"
    }
    required = ("text_projection", "token_embedding.weight", "positional_embedding", "ln_final.weight")
    missing = [k for k in required if k not in weights]
    if missing or not ("visual.proj" in weights or "visual.attnpool.positional_embedding" in weights):
        raise StateDictMismatchError(
            f"{source} is not an OpenAI CLIP checkpoint (missing keys: {', '.join(missing) or 'visual.*'}).",
            hint="Pass OpenAI's CLIP archive (for example ViT-B-16.pt) or a model name such as ViT-B/16.",
        )
    try:
        # Same steps as open_clip.openai.load_openai_model: build from the weights' shapes with QuickGELU in
        # OpenAI's mixed fp16 layout, then convert for the requested precision.
        model = build_model_from_openai_state_dict(
            weights, quick_gelu=True, cast_dtype=get_cast_dtype(precision)
        )
    except (KeyError, RuntimeError, ValueError, AssertionError) as exc:
        raise StateDictMismatchError(
            f"{source} does not fit the CLIP architecture read from its own weights ({exc}).",
            hint="The file is probably not an unmodified OpenAI CLIP checkpoint.",
        ) from exc
    if precision != "fp16":
        model.float()
        if precision == "bf16":
            convert_weights_to_lp(model, dtype=torch.bfloat16)
    return model


def is_path_like(name_or_path: str | os.PathLike[str]) -> bool:
    """Whether a ``--clip-model`` value names a file (an existing path, a path-like value, a CLIP file suffix or a
    path prefix) rather than a model name such as ``ViT-B/16``."""
    text = os.fspath(name_or_path)
    return (
        isinstance(name_or_path, os.PathLike)
        or Path(text).expanduser().exists()
        or text.lower().endswith(_FILE_SUFFIXES)
        or text.startswith(("./", "../", "~", "/"))
    )


def known_names() -> str:
    """The CLIP model names to suggest in messages."""
    return _KNOWN_NAMES


def load_clip_file(
    path: str | os.PathLike[str],
    *,
    device: str | torch.device | None = None,
    precision: str | None = None,
    name: str | None = None,
) -> ClipModel:
    """Load a frozen OpenAI CLIP model from a file (this function never downloads; ``dclip_cli.load_clip`` also
    takes model names and fetches them through the checkpoint store).

    Args:
        path: an OpenAI CLIP file: the TorchScript archive OpenAI publishes, or a plain state dict. The
            architecture is read from the weights.
        device: ``"auto"`` (default), ``"cpu"``, ``"cuda"``, ... or a ``torch.device``.
        precision: ``"fp16"``, ``"fp32"`` or ``"bf16"``; default fp16 on CUDA (as the original) and fp32 elsewhere.
        name: what :attr:`ClipModel.name` records (default: the path).

    Returns:
        A :class:`ClipModel` in eval mode with ``requires_grad=False`` everywhere.

    Raises:
        CheckpointError: the file is missing, a directory or unreadable (``StateDictMismatchError``,
            ``UnsafeCheckpointError`` for the specific cases).
        ConfigError: unknown precision.
    """
    from dclip_cli.device import resolve_device

    dev = device if isinstance(device, torch.device) else resolve_device(device)
    if precision is None:
        precision = "fp16" if dev.type == "cuda" else "fp32"
    precision = precision.lower()
    if precision not in _PRECISIONS:
        raise ConfigError(
            f"Unknown CLIP precision {precision!r}.", hint=f"Use one of {', '.join(_PRECISIONS)}."
        )
    text = os.fspath(path)
    file = Path(text).expanduser()
    if file.is_dir():
        raise CheckpointError(
            f"The CLIP path {text!r} is a directory, not a file.",
            hint="Pass the .pt file itself, or a model name such as ViT-B/16.",
        )
    if not file.is_file():
        raise CheckpointError(
            f"The CLIP file {text!r} does not exist.",
            hint=f"Check the path, or pass a model name ({_KNOWN_NAMES}).",
        )
    state = _read_state_dict(file)
    model = _build_open_clip(state, precision, f"The CLIP file {str(file)!r}")
    return ClipModel(model, name=name or str(file), precision=precision).to(dev)


# ----------------------------------------------------------------------------------------------------------------
# Directional loss
# ----------------------------------------------------------------------------------------------------------------


def clip_term(l_dir: Tensor | float) -> Tensor:
    """The training term L_clip = -log((2 - L_dir) / 2) = -log((1 + cos) / 2) (reference section 9.5).

    cos = 1 (L_dir = 0) gives 0; cos = 0 (L_dir = 1) gives log 2; cos -> -1 gives +inf.
    """
    l_dir = torch.as_tensor(l_dir, dtype=torch.float32) if not isinstance(l_dir, Tensor) else l_dir
    return -torch.log((2.0 - l_dir) / 2.0)


@torch.no_grad()
def template_features(clip: ClipModel, text: str, templates: Sequence[str] = IMAGENET_TEMPLATES) -> Tensor:
    """Encode ``text`` in every template.

    Returns:
        (len(templates), D) float32, each row L2-normalised.
    """
    return clip.encode_text(format_templates(text, tuple(templates))).detach()


@torch.no_grad()
def text_direction(
    clip: ClipModel, src_text: str, trg_text: str, templates: Sequence[str] = IMAGENET_TEMPLATES
) -> Tensor:
    """ΔT: per-template differences of normalised text features, averaged, then normalised (section 9.4).

    Returns:
        (1, D) float32 unit vector, without gradient.
    """
    src = template_features(clip, src_text, templates)
    trg = template_features(clip, trg_text, templates)
    direction = (trg - src).mean(dim=0, keepdim=True)
    return direction / direction.norm(dim=-1, keepdim=True)


def image_direction(clip: ClipModel, x_src: Tensor, x_gen: Tensor) -> Tensor:
    """ΔI = (E_I(x_gen) - E_I(x_src)) / (‖·‖ + 1e-7), E_I L2-normalised; x_src carries no gradient (section 9.5).

    Args:
        x_src: (B, 3, S, S) or (1, 3, S, S) source images in [-1, 1].
        x_gen: (B, 3, S, S) generated images in [-1, 1].

    Returns:
        (B, D) float32.
    """
    if x_src.shape[0] not in (1, x_gen.shape[0]):
        raise ConfigError(
            f"x_src has batch size {x_src.shape[0]} but x_gen has {x_gen.shape[0]}.",
            hint="Pass one source image per generated image (or a single source for all).",
        )
    with torch.no_grad():
        src = clip.encode_image(x_src)
    gen = clip.encode_image(x_gen)
    delta = gen - src
    return delta / (delta.norm(dim=-1, keepdim=True) + 1e-7)


class DirectionalCLIPLoss(nn.Module):
    """The directional CLIP loss L_dir = mean_b(1 - cos(ΔI_b, ΔT)) of DiffusionCLIP (section 9).

    The 79-template text direction is computed once per (source, target) pair and cached. Call the module as
    ``loss(x_src, src_text, x_gen, trg_text)``; apply :func:`clip_term` to get the training term.

    Args:
        clip: a :class:`ClipModel` from :func:`load_clip`.
        templates: prompt templates (default: the 79 ImageNet templates).
    """

    def __init__(self, clip: ClipModel, *, templates: Sequence[str] = IMAGENET_TEMPLATES) -> None:
        super().__init__()
        self.clip = clip
        self.templates = tuple(templates)
        self._directions: dict[tuple[str, str], Tensor] = {}

    def text_direction(self, src_text: str, trg_text: str) -> Tensor:
        """ΔT for the pair, (1, D), from the cache after the first call."""
        key = (src_text, trg_text)
        direction = self._directions.get(key)
        if direction is None or direction.device != self.clip.device:
            direction = text_direction(self.clip, src_text, trg_text, self.templates)
            self._directions[key] = direction
        return direction

    def clear_cache(self) -> None:
        """Forget every cached text direction."""
        self._directions.clear()

    def per_sample(self, x_src: Tensor, src_text: str, x_gen: Tensor, trg_text: str) -> Tensor:
        """1 - cos(ΔI_b, ΔT) for each image: (B,) float32 in [0, 2]."""
        delta_t = self.text_direction(src_text, trg_text)
        delta_i = image_direction(self.clip, x_src, x_gen)
        return 1.0 - F.cosine_similarity(delta_i, delta_t, dim=1, eps=1e-8)

    def forward(self, x_src: Tensor, src_text: str, x_gen: Tensor, trg_text: str) -> Tensor:
        """L_dir, a float32 scalar in [0, 2] (before the -log transform).

        Args:
            x_src: (B, 3, S, S) source images in [-1, 1] (no gradient is taken through them).
            src_text: the source text, for example ``"face"``.
            x_gen: (B, 3, S, S) generated images in [-1, 1].
            trg_text: the target text, for example ``"angry face"``.
        """
        return self.per_sample(x_src, src_text, x_gen, trg_text).mean()


# ----------------------------------------------------------------------------------------------------------------
# Metrics
# ----------------------------------------------------------------------------------------------------------------


@torch.no_grad()
def directional_similarity(
    clip: ClipModel,
    x_src: Tensor,
    x_edit: Tensor,
    src_text: str,
    trg_text: str,
    *,
    templates: Sequence[str] = IMAGENET_TEMPLATES,
) -> Tensor:
    """cos(ΔI, ΔT) per image: how well each edit follows the text direction (1 - the per-sample L_dir).

    Args:
        x_src: (B, 3, S, S) (or (1, 3, S, S)) source images in [-1, 1].
        x_edit: (B, 3, S, S) edited images in [-1, 1].
        src_text: source text; trg_text: target text.
        templates: prompt templates for ΔT (default: the 79 ImageNet templates, as the loss).

    Returns:
        (B,) float32 in [-1, 1].
    """
    delta_t = text_direction(clip, src_text, trg_text, templates)
    delta_i = image_direction(clip, x_src, x_edit)
    return F.cosine_similarity(delta_i, delta_t, dim=1, eps=1e-8)


@torch.no_grad()
def text_similarity(clip: ClipModel, x: Tensor, text: str) -> Tensor:
    """Cosine similarity between each image and one prompt (the "CLIP score" without scaling).

    Args:
        x: (B, 3, S, S) in [-1, 1].
        text: the prompt, used as given (no templates).

    Returns:
        (B,) float32 in [-1, 1].
    """
    return (clip.encode_image(x) @ clip.encode_text([text]).T)[:, 0]


@torch.no_grad()
def zero_shot(clip: ClipModel, x: Tensor, prompts: Sequence[str]) -> Tensor:
    """Zero-shot classification: softmax over prompts of 100 · cos(image, prompt).

    Args:
        x: (B, 3, S, S) in [-1, 1].
        prompts: K prompts.

    Returns:
        (B, K) float32 probabilities; rows sum to 1.
    """
    if len(prompts) == 0:
        raise ConfigError("zero_shot needs at least one prompt.", hint="Pass a non-empty list of prompts.")
    logits = 100.0 * clip.encode_image(x) @ clip.encode_text(list(prompts)).T
    return logits.softmax(dim=-1)
