"""The core's own checkpoint specs: files every domain uses (CLIP, the identity network, the LPIPS trunks).

Diffusion checkpoints and fine-tuned models are domain knowledge: preset plugins register them through the
``register_checkpoints`` hook. Sources are in ``diffusionclip-reference.md`` sections 9.1, 10.2 and 15.3.
"""

from __future__ import annotations

from dclip_cli.checkpoints.registry import CheckpointSpec, Mirror

_OPENAI = "https://openaipublic.azureedge.net/clip/models"
_CLIP_LICENSE = "OpenAI CLIP weights (github.com/openai/CLIP), released under the MIT licence."
_CLIP_NOTE = "The OpenAI URL contains the file's SHA-256, which dclip checks."

CLIP_VIT_B_16 = CheckpointSpec(
    name="clip-vit-b-16",
    filename="ViT-B-16.pt",
    urls=(
        f"{_OPENAI}/5806e77cd80f8b59890b7e101eabd078d9fb84e6937f9e85e4ecb61988df416f/ViT-B-16.pt",
        # open_clip's preferred copy: a plain state dict in the same key layout, not the TorchScript archive.
        Mirror(
            "https://huggingface.co/timm/vit_base_patch16_clip_224.openai/resolve/main/open_clip_pytorch_model.bin",
            format="openai-clip",
            note="Hugging Face copy used by open-clip-torch (plain state dict)",
        ),
    ),
    sha256="5806e77cd80f8b59890b7e101eabd078d9fb84e6937f9e85e4ecb61988df416f",
    format="openai-clip",
    description="CLIP ViT-B/16 (OpenAI), the CLIP model of the directional loss",
    license_note=_CLIP_LICENSE + " " + _CLIP_NOTE,
    aliases=("ViT-B/16", "ViT-B-16"),
    approx_size=351_000_000,  # ViT-B-16.pt, the OpenAI TorchScript archive, is 351 MB
)

CLIP_VIT_B_32 = CheckpointSpec(
    name="clip-vit-b-32",
    filename="ViT-B-32.pt",
    urls=(
        f"{_OPENAI}/40d365715913c9da98579312b702a82c18be219cc2a73407c4526f58eba950af/ViT-B-32.pt",
        Mirror(
            "https://huggingface.co/timm/vit_base_patch32_clip_224.openai/resolve/main/open_clip_pytorch_model.bin",
            format="openai-clip",
            note="Hugging Face copy used by open-clip-torch (plain state dict)",
        ),
    ),
    sha256="40d365715913c9da98579312b702a82c18be219cc2a73407c4526f58eba950af",
    format="openai-clip",
    description="CLIP ViT-B/32 (OpenAI), a smaller, faster CLIP",
    license_note=_CLIP_LICENSE + " " + _CLIP_NOTE,
    aliases=("ViT-B/32", "ViT-B-32"),
)

FACENET_VGGFACE2 = CheckpointSpec(
    name="facenet-vggface2",
    filename="20180402-114759-vggface2.pt",
    urls=(
        "https://github.com/timesler/facenet-pytorch/releases/download/v2.2.9/20180402-114759-vggface2.pt",
    ),
    format="facenet",
    description="facenet-pytorch InceptionResnetV1 trained on VGGFace2 (identity loss)",
    license_note=(
        "facenet-pytorch release v2.2.9 (MIT licence), weights ported from davidsandberg/facenet and trained on "
        "VGGFace2; no checksum is published, so dclip records the SHA-256 of the first download."
    ),
    aliases=("vggface2",),
    approx_size=107_000_000,  # 107 MB per the facenet-pytorch README (diffusionclip-reference.md, 15.3)
)

_TORCHVISION = "https://download.pytorch.org/models"


def _lpips_trunk(net: str, filename: str, what: str, params: int) -> CheckpointSpec:
    return CheckpointSpec(
        name=f"lpips-{net}",
        filename=filename,
        urls=(f"{_TORCHVISION}/{filename}",),
        format="torchvision",
        description=f"torchvision ImageNet {what} weights, the trunk of the LPIPS metric and loss",
        license_note=(
            "torchvision model zoo (BSD-3-Clause code; ImageNet-trained weights). The hash prefix in the file "
            "name is all torchvision publishes, so dclip records the SHA-256 of the first download."
        ),
        approx_size=4 * params,  # a plain fp32 state dict: 4 bytes per parameter (+ a few kB of pickle)
    )


# parameter counts as torchvision's model documentation lists them (num_params of the IMAGENET1K_V1 weights)
LPIPS_ALEX = _lpips_trunk("alex", "alexnet-owt-7be5be79.pth", "AlexNet", 61_100_840)  # 244 MB
LPIPS_VGG = _lpips_trunk("vgg", "vgg16-397923af.pth", "VGG16", 138_357_544)  # 553 MB
LPIPS_SQUEEZE = _lpips_trunk("squeeze", "squeezenet1_1-b8a52dc0.pth", "SqueezeNet 1.1", 1_235_496)  # 4.9 MB

#: Specs the core always provides, by name.
CORE_SPECS: dict[str, CheckpointSpec] = {
    spec.name: spec
    for spec in (CLIP_VIT_B_16, CLIP_VIT_B_32, FACENET_VGGFACE2, LPIPS_ALEX, LPIPS_VGG, LPIPS_SQUEEZE)
}
