"""dclip's built-in dog-face preset (AFHQ-dog ADM from ILVR / P2-weighting), as an ordinary preset plugin.

Data only: the preset, its 10 named edits, the base checkpoint and the official fine-tuned models.
"""

from __future__ import annotations

from typing import Any

from dclip_cli.plugin import (
    ADM_AFHQ_CONFIG,
    DIFFUSIONCLIP_DRIVE_FOLDER,
    CheckpointSpec,
    Preset,
    drive_url,
    edits_from_table,
    hookimpl,
)

# Official file names from the original Replicate demo; no direct links were published for them.
EDITS, FINETUNED = edits_from_table(
    "dog",
    {
        "dog_nicolas": ("Dog", "Nicolas Cage", "dog_nicolas_t601.pth", None, 601),
        "dog_yorkshire": ("Dog", "Yorkshire Terrier", "dog_yorkshire_t601.pth", None, 601),
        "dog_smiling": ("Dog", "Smiling Dog", None, None, None),
        "dog_zombie": ("Dog", "Zombie", "dog_zombie_t601.pth", None, 601),
        "dog_super_saiyan": ("Dog", "Super saiyan", None, None, None),
        "dog_venom": ("Dog", "Venom", "dog_venome_t601.pth", None, 601),
        "dog_bear": ("Dog", "Bear", "dog_bear_t500.pth", None, 500),
        "dog_fox": ("Dog", "Fox", None, None, None),
        "dog_wolf": ("Dog", "Wolf", None, None, None),
        "dog_hamster": ("Dog", "Hamster", "dog_hamster_t601.pth", None, 601),
    },
    base="afhq_dog",
    arch="adm",
    arch_config=ADM_AFHQ_CONFIG,
    source_note="DiffusionCLIP release (Kim, Kwon and Ye, CVPR 2022), Google Drive.",
    manual_folder=DIFFUSIONCLIP_DRIVE_FOLDER,
    approx_size=374_000_000,  # fp32 state dicts of the base architecture (the AFHQ ADM: 93.56 M fp32 parameters)
)


@hookimpl
def register_presets(register: Any) -> None:
    register(
        Preset(
            name="dog",
            description="Dog faces (AFHQ-dog ADM, 256x256, learned variance).",
            image_size=256,
            checkpoint="afhq_dog",
            arch="adm",
            arch_config=ADM_AFHQ_CONFIG,
            source_text="Dog",
            domain_prompt="a photo of a dog's face",
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
    register(
        CheckpointSpec(
            name="afhq_dog",
            filename="afhq_dog_4m.pt",
            urls=(drive_url("14OG_o3aa8Hxmfu36IIRyOgRwEP6ngLdo"),),
            format="adm",
            arch="adm",
            arch_config=ADM_AFHQ_CONFIG,
            description="AFHQ-dog 256 ADM (ILVR / P2-weighting release), 93.6 M parameters.",
            approx_size=374_000_000,  # 93.56 M fp32 parameters
            license_note="ILVR (Choi et al., ICCV 2021) release via Google Drive.",
            manual=(
                "Download afhq_dog_4m.pt from the ILVR release "
                "(https://drive.google.com/file/d/14OG_o3aa8Hxmfu36IIRyOgRwEP6ngLdo) and run "
                "'dclip models import afhq_dog_4m.pt --as afhq_dog'."
            ),
        )
    )
    for spec in FINETUNED:
        register(spec)
