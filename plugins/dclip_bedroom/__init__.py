"""dclip's built-in LSUN bedroom preset (DDPM from the SDEdit release), as an ordinary preset plugin.

Data only: the preset, its 6 named edits, the base checkpoint and the official fine-tuned models.
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
    "bedroom",
    {
        "bedroom_blue": (
            "Bedroom",
            "Blue tone Bedroom",
            "blue_t500.pth",
            drive_url("1qAC4ORH5sk3YfXDQ-3QUiXDxMsmJB0g8"),
            500,
        ),
        "bedroom_green": (
            "Bedroom",
            "Green tone Bedroom",
            "green_t601.pth",
            drive_url("1ClX_LUgpG5igDq0rWTsD7xIzyzGRvge_"),
            601,
        ),
        "bedroom_golden": ("Bedroom", "Golden Bedroom", None, None, None),
        "bedroom_princess": (
            "Bedroom",
            "Princess Bedroom",
            "princess_t500.pth",
            drive_url("1gBbyWCDLfBQpoPuNkpc9Ioqu4wJW8o3b"),
            500,
        ),
        "bedroom_palace": ("Bedroom", "Palace Bedroom", None, None, None),
        "bedroom_wooden": (
            "Bedroom",
            "Wooden Bedroom",
            "wooden_t500.pth",
            drive_url("1ATF3o7RCSrgi0icwi9HaaZxf2C-DwwTp"),
            500,
        ),
    },
    base="lsun_bedroom",
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
            name="bedroom",
            description="Bedrooms (LSUN bedroom DDPM, 256x256).",
            image_size=256,
            checkpoint="lsun_bedroom",
            arch="ddpm",
            arch_config=DDPM_256_CONFIG,
            source_text="Bedroom",
            domain_prompt="a photo of a bedroom",
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
    diffusers = "https://huggingface.co/google/ddpm-ema-bedroom-256/resolve/main"
    note = "diffusers google/ddpm-ema-bedroom-256 (UNet2DModel; converted to the DDPM key layout on load)"
    register(
        CheckpointSpec(
            name="lsun_bedroom",
            filename="bedroom.ckpt",
            urls=(
                "https://huggingface.co/gwang-kim/DiffusionCLIP-LSUN_Bedroom/resolve/main/bedroom.ckpt",
                Mirror(
                    "https://heibox.uni-heidelberg.de/f/b95206528f384185889b/?dl=1",
                    format="ddpm",
                    md5="1921fa46b66a3665e450e42f36c2720f",
                    note="ermongroup/ddim EMA conversion (not verified to be the same bytes as the SDEdit file)",
                ),
                Mirror(
                    f"{diffusers}/diffusion_pytorch_model.safetensors", format="diffusers-ddpm", note=note
                ),
                Mirror(f"{diffusers}/diffusion_pytorch_model.bin", format="diffusers-ddpm", note=note),
                "https://image-editing-test-12345.s3-us-west-2.amazonaws.com/checkpoints/bedroom.ckpt",
            ),
            format="ddpm",
            arch="ddpm",
            arch_config=DDPM_256_CONFIG,
            description="LSUN bedroom 256 DDPM (SDEdit release, used by DiffusionCLIP).",
            approx_size=455_000_000,  # 455 MB on Hugging Face: 113.67 M fp32 parameters
            license_note="SDEdit / DiffusionCLIP release; Hugging Face mirror gwang-kim/DiffusionCLIP-LSUN_Bedroom.",
        )
    )
    for spec in FINETUNED:
        register(spec)
