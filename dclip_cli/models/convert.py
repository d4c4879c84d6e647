"""Key conversion from diffusers ``UNet2DModel`` DDPM weights to the ermongroup/SDEdit DDPM layout.

The diffusers ports of the Ho et al. models (``google/ddpm-ema-celebahq-256``, ``google/ddpm-ema-church-256``,
``google/ddpm-ema-bedroom-256``) are the same network under other names: ``DownBlock2D``/``AttnDownBlock2D``
levels, ``freq_shift = 1`` and ``flip_sin_to_cos = False`` (the DDPM sin-first embedding), GroupNorm eps 1e-6 and
single-head attention whose q/k/v/out are ``Linear`` layers instead of 1×1 convolutions. The conversion is a pure
renaming plus a reshape of the attention weights; the outputs are identical.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from pathlib import Path

import torch

from dclip_cli.errors import StateDictMismatchError

_RESNET = {
    "norm1": "norm1",
    "conv1": "conv1",
    "time_emb_proj": "temb_proj",
    "norm2": "norm2",
    "conv2": "conv2",
    "conv_shortcut": "nin_shortcut",
}
_ATTN = {
    "group_norm": "norm",
    "to_q": "q",
    "to_k": "k",
    "to_v": "v",
    "to_out.0": "proj_out",
    # diffusers < 0.15 attention names
    "query": "q",
    "key": "k",
    "value": "v",
    "proj_attn": "proj_out",
}
_TOP = {
    "conv_in": "conv_in",
    "time_embedding.linear_1": "temb.dense.0",
    "time_embedding.linear_2": "temb.dense.1",
    "conv_norm_out": "norm_out",
    "conv_out": "conv_out",
}

_BLOCK_RE = re.compile(
    r"^(down_blocks|up_blocks)\.(\d+)\.(resnets|attentions|downsamplers|upsamplers)\.(\d+)\.(.+)$"
)
_MID_RE = re.compile(r"^mid_block\.(resnets|attentions)\.(\d+)\.(.+)$")


def _split_param(rest: str) -> tuple[str, str]:
    module, _, param = rest.rpartition(".")
    return module, param


def _rename_inner(kind: str, rest: str, key: str) -> tuple[str, bool]:
    """Map the part after ``resnets.j.`` / ``attentions.j.``; return (new suffix, is_attention_linear)."""
    module, param = _split_param(rest)
    table = _RESNET if kind == "resnets" else _ATTN
    if module not in table:
        raise StateDictMismatchError(
            f"The diffusers key {key!r} has no DDPM counterpart.",
            hint="Only DDPM-style UNet2DModel checkpoints (no cross-attention) can be converted.",
        )
    is_linear = kind == "attentions" and module != "group_norm" and param == "weight"
    return f"{table[module]}.{param}", is_linear


def diffusers_to_ddpm(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Convert a diffusers ``UNet2DModel`` state dict to the DDPM (``statedict-keys.txt`` section A) layout.

    Args:
        state_dict: keys such as ``down_blocks.0.resnets.0.conv1.weight``.

    Returns:
        A new dict with keys such as ``down.0.block.0.conv1.weight``; attention ``Linear`` weights (C, C) become
        1×1 convolution weights (C, C, 1, 1).

    Raises:
        StateDictMismatchError: a key has no DDPM counterpart.
    """
    n_up = 1 + max((int(k.split(".")[1]) for k in state_dict if k.startswith("up_blocks.")), default=-1)
    out: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        linear = False
        module, param = _split_param(key)
        if module in _TOP:
            new = f"{_TOP[module]}.{param}"
        elif m := _BLOCK_RE.match(key):
            group, idx, kind, j, rest = m.groups()
            if group == "down_blocks":
                prefix = f"down.{idx}"
            else:  # up_blocks are stored low resolution first; the DDPM's up.0 is the highest resolution
                prefix = f"up.{n_up - 1 - int(idx)}"
            if kind == "downsamplers":
                new = f"{prefix}.downsample.{rest}"
            elif kind == "upsamplers":
                new = f"{prefix}.upsample.{rest}"
            else:
                suffix, linear = _rename_inner(kind, rest, key)
                new = f"{prefix}.{'block' if kind == 'resnets' else 'attn'}.{j}.{suffix}"
        elif m := _MID_RE.match(key):
            kind, j, rest = m.groups()
            suffix, linear = _rename_inner(kind, rest, key)
            name = "attn_1" if kind == "attentions" else f"block_{int(j) + 1}"
            new = f"mid.{name}.{suffix}"
        else:
            raise StateDictMismatchError(
                f"The diffusers key {key!r} has no DDPM counterpart.",
                hint="Only DDPM-style UNet2DModel checkpoints (no cross-attention) can be converted.",
            )
        out[new] = value.reshape(*value.shape, 1, 1) if linear and value.ndim == 2 else value
    return out


def diffusers_sample_size(weights_path: str | os.PathLike[str]) -> int | None:
    """Return ``sample_size`` from the ``config.json`` beside a diffusers weight file, if there is one."""
    config = Path(weights_path).with_name("config.json")
    try:
        data = json.loads(config.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    size = data.get("sample_size") if isinstance(data, dict) else None
    return int(size) if isinstance(size, int) else None
