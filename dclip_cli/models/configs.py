"""Architecture configurations of the official checkpoints, as plain data (no torch import).

Preset plugins name these instead of repeating them (``dclip_cli.plugin`` re-exports them); the model builders in
:mod:`dclip_cli.models.ddpm_unet` and :mod:`dclip_cli.models.adm_unet` merge a given configuration over them.
"""

from __future__ import annotations

from typing import Any

#: The ddim YAML ``model:`` block shared by the CelebA-HQ, LSUN church and LSUN bedroom checkpoints
#: (113,673,219 parameters).
DDPM_256_CONFIG: dict[str, Any] = {
    "resolution": 256,
    "in_channels": 3,
    "out_ch": 3,
    "ch": 128,
    "ch_mult": [1, 1, 2, 2, 4, 4],
    "num_res_blocks": 2,
    "attn_resolutions": [16],
    "dropout": 0.0,
    "resamp_with_conv": True,
}

#: ``create_model`` arguments of the AFHQ-dog / FFHQ checkpoints (93,563,910 parameters).
ADM_AFHQ_CONFIG: dict[str, Any] = {
    "image_size": 256,
    "num_channels": 128,
    "num_res_blocks": 1,
    "channel_mult": [1, 1, 2, 2, 4, 4],
    "attention_resolutions": [16],
    "num_heads": 4,
    "num_head_channels": 64,
    "num_heads_upsample": -1,
    "use_scale_shift_norm": True,
    "resblock_updown": True,
    "learn_sigma": True,
    "class_cond": False,
    "dropout": 0.0,
    "use_new_attention_order": False,
    "conv_resample": True,
    "in_channels": 3,
    "num_classes": 1000,
    "use_fp16": False,
    "use_checkpoint": False,
}

#: ``create_model`` arguments of guided-diffusion's ImageNet 512 checkpoint (558,997,638 parameters).
ADM_IMAGENET512_CONFIG: dict[str, Any] = {
    **ADM_AFHQ_CONFIG,
    "image_size": 512,
    "num_channels": 256,
    "num_res_blocks": 2,
    "channel_mult": [0.5, 1, 1, 2, 2, 4, 4],
    "attention_resolutions": [32, 16, 8],
    "class_cond": True,
}
