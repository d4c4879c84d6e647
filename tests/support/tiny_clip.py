"""A tiny, seeded OpenAI-style CLIP for tests.

The network is open-clip's ``CLIP`` class with QuickGELU (what the OpenAI loader builds), shrunk to a ViT of width
64, 2 layers, patch 8 on 32x32 images and a text transformer of width 64, 2 layers, with the real vocabulary (49408)
and context (77) so open-clip's tokenizer works unchanged; embedding dimension 32. Every weight is rounded through
float16 once, so the OpenAI layout (conv/linear/attention/projection weights stored as fp16) loses nothing and all
files written here give bit-identical features.

Files:
    * ``save_tiny_clip(path, fmt="state_dict")``: ``torch.save`` of the state dict in the OpenAI layout and dtypes.
    * ``save_tiny_clip(path, fmt="torchscript")``: a traced TorchScript archive, like OpenAI's ``ViT-B-16.pt``.
"""

from __future__ import annotations

import copy
import functools
import warnings
from pathlib import Path
from typing import Literal

import torch
from torch import nn

TINY_CLIP_IMAGE_SIZE = 32
TINY_CLIP_EMBED_DIM = 32
TINY_CLIP_WIDTH = 64
TINY_CLIP_CONTEXT = 77
TINY_CLIP_VOCAB = 49408


def make_tiny_open_clip(seed: int = 0) -> nn.Module:
    """Build the tiny open-clip ``CLIP`` (fp32, eval mode) with weights drawn from ``seed`` (a fresh copy)."""
    return copy.deepcopy(_tiny_open_clip(seed))


@functools.lru_cache(maxsize=4)
def _tiny_open_clip(seed: int) -> nn.Module:
    from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg

    vision = CLIPVisionCfg(layers=2, width=TINY_CLIP_WIDTH, patch_size=8, image_size=TINY_CLIP_IMAGE_SIZE)
    text = CLIPTextCfg(
        context_length=TINY_CLIP_CONTEXT, vocab_size=TINY_CLIP_VOCAB, width=TINY_CLIP_WIDTH, heads=1, layers=2
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = CLIP(TINY_CLIP_EMBED_DIM, vision_cfg=vision, text_cfg=text, quick_gelu=True)
        with torch.no_grad():
            # open-clip initialises some tensors to zero or to constants (projections of the class token, the
            # positional embeddings are small); spread them so the features depend on every input pixel/token.
            for name, param in model.named_parameters():
                if name == "logit_scale":
                    continue
                if param.dim() >= 2 or "embedding" in name:
                    param.add_(0.02 * torch.randn_like(param))
            # Round through float16 so the OpenAI mixed-fp16 layout stores these values exactly.
            for param in model.parameters():
                param.copy_(param.half().float())
    return model.eval()


def tiny_clip_state_dict(seed: int = 0) -> dict[str, torch.Tensor]:
    """The state dict in the OpenAI layout: conv/linear/attention/projection weights fp16, the rest fp32."""
    from open_clip.model import convert_weights_to_lp

    model = make_tiny_open_clip(seed)
    convert_weights_to_lp(model, dtype=torch.float16)
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def save_tiny_clip(
    path: str | Path, *, seed: int = 0, fmt: Literal["state_dict", "torchscript"] = "state_dict"
) -> Path:
    """Write the tiny CLIP to ``path`` as a plain state dict or as a traced TorchScript archive."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "state_dict":
        torch.save(tiny_clip_state_dict(seed), path)
    elif fmt == "torchscript":
        model = make_tiny_open_clip(seed)
        size = TINY_CLIP_IMAGE_SIZE
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            traced = torch.jit.trace_module(
                model,
                inputs={
                    "encode_image": (torch.zeros(1, 3, size, size),),
                    "encode_text": (torch.zeros(1, TINY_CLIP_CONTEXT, dtype=torch.long),),
                },
            )
            torch.jit.save(traced, str(path))
    else:
        raise ValueError(f"fmt must be 'state_dict' or 'torchscript', got {fmt!r}")
    return path
