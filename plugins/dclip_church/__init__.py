"""dclip's built-in LSUN church preset (DDPM from the SDEdit / DDIM releases), as an ordinary preset plugin.

Data only: the preset, its 10 named edits, the base checkpoint and the official fine-tuned models.
"""

from __future__ import annotations

from typing import Any

from dclip_cli.plugin import (
    DDPM_256_CONFIG,
    DIFFUSIONCLIP_DRIVE_FOLDER,
    CheckpointSpec,
    Mirror,
    Preset,
    drive_url,
    edits_from_table,
    hookimpl,
)

# Drive ids and file names from the original Colab notebook (they may be stale).
EDITS, FINETUNED = edits_from_table(
    "church",
    {
        "church_snow": (
            "Church",
            "Snow Coverd Church",
            "snow_t500.pth",
            drive_url("1-k_W15TY0TjZQnONXHah2x1jonVd8ePZ"),
            500,
        ),
        "church_night": ("Church", "Church at night", None, None, None),
        "church_red_brick": (
            "Church",
            "Red brick wall Church",
            "brick_t301.pth",
            drive_url("1_FWVnjR2nsW0SACZDuU-HT53hn5C1TsR"),
            301,
        ),
        "church_golden": (
            "Church",
            "Golden Church",
            "golden_t401.pth",
            drive_url("16T7N8LHPyM_-3TSCSggg683PjfJQaR15"),
            401,
        ),
        "church_wooden_house": (
            "Church",
            "Wooden House",
            "wooden_t500.pth",
            drive_url("1R0l-GQdXaOQJfcrb81vv9sgD9z8mBSPK"),
            500,
        ),
        "church_gothic": ("Church", "Gothic Church", None, None, None),
        "church_ancient_tower": (
            "Church",
            "Ancient traditional Asian tower",
            "ancient_tower_t500.pth",
            drive_url("12DC1lL6moUy1teKe7gxqL2NQhhmU44eB"),
            500,
        ),
        "church_temple": ("Church", "Temple", None, None, None),
        "church_factory": ("church", "factory with chimneys", None, None, None),
        "church_department_store": (
            "church",
            "department store",
            "department_t500.pth",
            drive_url("1XcL3IM85dG5nk9-3CiXAsdIZaguSZyMw"),
            500,
        ),
    },
    base="lsun_church",
    arch="ddpm",
    arch_config=DDPM_256_CONFIG,
    source_note="DiffusionCLIP release (Kim, Kwon and Ye, CVPR 2022), Google Drive; ids from the original Colab.",
    manual_folder=DIFFUSIONCLIP_DRIVE_FOLDER,
    approx_size=455_000_000,  # fp32 state dicts of the base architecture (same DDPM-256 architecture as CelebA-HQ: 113.67 M fp32 parameters)
)


@hookimpl
def register_presets(register: Any) -> None:
    register(
        Preset(
            name="church",
            description="Outdoor churches (LSUN church DDPM, 256x256).",
            image_size=256,
            checkpoint="lsun_church",
            arch="ddpm",
            arch_config=DDPM_256_CONFIG,
            source_text="Church",
            domain_prompt="a photo of a church",
            t0=500,
            n_inv_steps=40,
            n_gen_steps=40,
            n_train_steps=6,
            lr=8e-6,
            clip_weight=3.0,
            l1_weight=1.0,
            finetune_mode="original",
            epochs=1,
            n_train_images=50,
            preprocess="center_crop",
            edits=EDITS,
        )
    )


@hookimpl
def register_checkpoints(register: Any) -> None:
    diffusers = "https://huggingface.co/google/ddpm-ema-church-256/resolve/main"
    note = "diffusers google/ddpm-ema-church-256 (UNet2DModel; converted to the DDPM key layout on load)"
    register(
        CheckpointSpec(
            name="lsun_church",
            filename="church_outdoor.ckpt",
            urls=(
                # ermongroup/ddim "ema_lsun_church" (model-4432000.ckpt), DDPM key layout, MD5 published there
                Mirror(
                    "https://heibox.uni-heidelberg.de/f/44ccb50ef3c6436db52e/?dl=1",
                    format="ddpm",
                    md5="fdc68a23938c2397caba4a260bc2445f",
                    note="ermongroup/ddim EMA conversion of Ho et al.'s LSUN church model",
                ),
                Mirror(
                    f"{diffusers}/diffusion_pytorch_model.safetensors", format="diffusers-ddpm", note=note
                ),
                Mirror(f"{diffusers}/diffusion_pytorch_model.bin", format="diffusers-ddpm", note=note),
                # the SDEdit original (HTTP 403 since 2023), kept last
                "https://image-editing-test-12345.s3-us-west-2.amazonaws.com/checkpoints/church_outdoor.ckpt",
            ),
            format="ddpm",
            arch="ddpm",
            arch_config=DDPM_256_CONFIG,
            description="LSUN church-outdoor 256 DDPM (Ho et al.; ddim release, diffusers copy as fallback).",
            approx_size=455_000_000,  # 113.67 M fp32 parameters (the diffusers copies differ)
            license_note="Ho et al. DDPM LSUN church weights via ermongroup/ddim, or google/ddpm-ema-church-256.",
        )
    )
    for spec in FINETUNED:
        register(spec)
