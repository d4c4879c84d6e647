"""dclip's built-in human-face preset (CelebA-HQ DDPM), written as an ordinary preset plugin.

It registers the ``face`` preset with the 28 face edits of DiffusionCLIP, the CelebA-HQ base checkpoint and the
official fine-tuned models, the MTCNN + FFHQ face aligner and the facenet-pytorch identity network.
"""

from __future__ import annotations

from typing import Any

from dclip_cli.plugin import (
    DDPM_256_CONFIG,
    DIFFUSIONCLIP_DRIVE_FOLDER,
    Aligner,
    CheckpointSpec,
    IdentityModel,
    Preset,
    build_facenet,
    drive_url,
    edits_from_table,
    hookimpl,
)

# key: (source, target, official file, Drive id, t0 from the official name)
_EDITS: dict[str, tuple[str, str, str | None, str | None, int | None]] = {
    "tanned": ("face", "tanned face", "tanned_t301.pth", "15Twto21spGLwiby7_yGO_xquFXtfJIAo", 301),
    "pale": ("face", "pale face", None, None, None),
    "makeup": (
        "person",
        "person with makeup",
        "with_makeuap_t401.pth",
        "1RusgHSK-XAX15k2T68c2C_f01e3TBrLf",
        401,
    ),
    "no_makeup": (
        "person",
        "person without makeup",
        "without_makeup_t301.pth",
        "157pTJBkXPoziGQdjy3SwdyeSpAjQiGRp",
        301,
    ),
    "old": ("person", "old person", None, None, None),
    "young": ("person", "young person", None, None, None),
    "beards": ("person", "person with beards", None, None, None),
    "angry": ("face", "angry face", None, None, None),
    "surprised": ("face", "surprised face", None, None, None),
    "smiling": ("face", "smiling face", None, None, None),
    "blond_hair": ("person", "person with blond hair", None, None, None),
    "red_hair": ("person", "person with red hair", None, None, None),
    # FIX: the original copied "person with red hair" here (reference section 14).
    "grey_hair": ("person", "person with grey hair", None, None, None),
    "curly_hair": ("person", "person with curly hair", None, None, None),
    "nicolas": ("Person", "Nicolas Cage", None, None, None),
    "zuckerberg": ("Person", "Mark Zuckerberg", None, None, None),
    "benedict": ("Person", "Benedict Cumberbatch", None, None, None),
    "gogh": ("photo", "painting by Gogh", "gogh_t601.pth", "1UDL2auElNsVwU8BGUI7SFG5JrYebc1zw", 601),
    "frida": ("photo", "self-portrait by Frida Kahlo", None, None, None),
    "modigliani": ("photo", "Painting in Modigliani style", None, None, None),
    "sketch": ("photo", "sketch", "sketch_t601.pth", "11m93QBToohZUhdyIsOnNK7XAextj2-fW", 601),
    "watercolor": ("photo", "Watercolor Art with Thick Brushstrokes", None, None, None),
    "elf": ("Human", "Tolkien elf", None, None, None),
    "super_saiyan": ("Human", "Super saiyan", None, None, None),
    "pixar": (
        "Human",
        "3D render in the style of Pixar",
        "pixar_t601.pth",
        "1IoT7kZhtaoKf1uvhYhvyqzyG2MOJsqLe",
        601,
    ),
    "neanderthal": ("Human", "Neanderthal", "neanderthal_t601.pth", "1Uo0VI5kbATrQtckhEBKUPyRFNOcgwwne", 601),
    "zombie": ("Human", "Zombie", None, None, None),
    "jocker": ("Human", "The Jocker", None, None, None),
}


EDITS, FINETUNED = edits_from_table(
    "face",
    {k: (src, trg, file, drive_url(i) if i else None, t0) for k, (src, trg, file, i, t0) in _EDITS.items()},
    base="celeba_hq",
    arch="ddpm",
    arch_config=DDPM_256_CONFIG,
    source_note="DiffusionCLIP release (Kim, Kwon and Ye, CVPR 2022), Google Drive; ids from the original Colab.",
    manual_folder=DIFFUSIONCLIP_DRIVE_FOLDER,
    approx_size=455_000_000,  # fp32 state dicts of the base architecture, as big as celeba_hq.ckpt
)


@hookimpl
def register_presets(register: Any) -> None:
    register(
        Preset(
            name="face",
            description="Human faces (CelebA-HQ DDPM, 256x256), aligned with MTCNN + the FFHQ recipe.",
            image_size=256,
            checkpoint="celeba_hq",
            arch="ddpm",
            arch_config=DDPM_256_CONFIG,
            source_text="face",
            domain_prompt="a photo of a human face",
            t0=401,
            n_inv_steps=40,
            n_gen_steps=40,
            n_train_steps=6,
            lr=8e-6,
            clip_weight=3.0,
            l1_weight=0.0,
            id_weight=0.3,
            finetune_mode="original",
            epochs=1,
            n_train_images=50,
            preprocess="align",
            aligner="mtcnn-ffhq",
            identity_model="facenet-vggface2",
            edits=EDITS,
        )
    )


@hookimpl
def register_checkpoints(register: Any) -> None:
    register(
        CheckpointSpec(
            name="celeba_hq",
            filename="celeba_hq.ckpt",
            urls=(
                "https://huggingface.co/gwang-kim/DiffusionCLIP-CelebA_HQ/resolve/main/celeba_hq.ckpt",
                "https://image-editing-test-12345.s3-us-west-2.amazonaws.com/checkpoints/celeba_hq.ckpt",
            ),
            format="ddpm",
            arch="ddpm",
            arch_config=DDPM_256_CONFIG,
            description="CelebA-HQ 256 DDPM (SDEdit release, used by DiffusionCLIP).",
            approx_size=455_000_000,  # 455 MB on Hugging Face: 113.67 M fp32 parameters
            license_note="SDEdit / DiffusionCLIP release; Hugging Face mirror gwang-kim/DiffusionCLIP-CelebA_HQ.",
        )
    )
    for spec in FINETUNED:
        register(spec)


def _align(img: Any, size: int) -> Any:
    from dclip_face.align import align_face

    return align_face(img, size)


@hookimpl
def register_aligners(register: Any) -> None:
    register(
        Aligner(
            name="mtcnn-ffhq",
            align=_align,
            description="MTCNN five-point landmarks (facenet-pytorch) with the FFHQ alignment recipe.",
        )
    )


@hookimpl
def register_identity_models(register: Any) -> None:
    register(
        IdentityModel(
            name="facenet-vggface2",
            build=build_facenet,
            checkpoint="facenet-vggface2",
            description="facenet-pytorch InceptionResnetV1 trained on VGGFace2 (512-d embeddings).",
        )
    )
