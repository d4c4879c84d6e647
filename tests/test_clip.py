"""CLIP loading and the directional CLIP loss (reference sections 9 and 21), on a tiny seeded OpenAI-style CLIP."""

from __future__ import annotations

import copy
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from dclip_cli.errors import (
    CheckpointError,
    CheckpointNotCachedError,
    ConfigError,
    StateDictMismatchError,
    UnknownCheckpointError,
    UnsafeCheckpointError,
)
from dclip_cli.losses.clip import (
    CLIP_MEAN,
    CLIP_STD,
    ClipModel,
    DirectionalCLIPLoss,
    clip_registry_name,
    clip_term,
    directional_similarity,
    text_direction,
    text_similarity,
    zero_shot,
)
from dclip_cli.losses.templates import IMAGENET_TEMPLATES, format_templates
from dclip_cli.store import load_clip
from tests.support.tiny_clip import (
    TINY_CLIP_EMBED_DIM,
    TINY_CLIP_IMAGE_SIZE,
    make_tiny_open_clip,
    save_tiny_clip,
    tiny_clip_state_dict,
)

#: A short template list for tests about caching, batching and gradients (the 79-template text direction is
#: checked once, in test_l_dir_matches_hand_computation; on this shared CPU every 79-prompt encode costs ~0.5 s).
SHORT = ("a photo of a {}.", "a sketch of the {}.", "a {} in a video game.")


@pytest.fixture(scope="module")
def clip_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tiny-clip")
    return {
        "state_dict": save_tiny_clip(root / "tiny-sd.pt", fmt="state_dict"),
        "torchscript": save_tiny_clip(root / "tiny-ts.pt", fmt="torchscript"),
    }


@pytest.fixture(scope="module")
def clip(clip_files: dict[str, Path]) -> ClipModel:
    return load_clip(clip_files["state_dict"], device="cpu")


@pytest.fixture(scope="module")
def reference() -> torch.nn.Module:
    """The same network built directly with open-clip (fp32, QuickGELU): the hand-computation oracle."""
    return make_tiny_open_clip()


def _images(seed: int, batch: int = 2, size: int = 48) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(batch, 3, size, size, generator=g) * 2 - 1


def _hand_preprocess(x: torch.Tensor, n: int) -> torch.Tensor:
    """Section 9.2 written out with torchvision's tensor transforms, as the original applies them."""
    import torchvision.transforms.functional as TF
    from torchvision.transforms import InterpolationMode

    x01 = TF.normalize(x, [-1.0] * 3, [2.0] * 3)
    x01 = TF.resize(x01, [n], interpolation=InterpolationMode.BICUBIC, antialias=True)
    x01 = TF.center_crop(x01, [n])
    return TF.normalize(x01, list(CLIP_MEAN), list(CLIP_STD))


# --- templates ------------------------------------------------------------------------------------------------


def test_templates_are_the_79_of_the_reference_in_order() -> None:
    assert len(IMAGENET_TEMPLATES) == 79
    assert len(set(IMAGENET_TEMPLATES)) == 79
    assert IMAGENET_TEMPLATES[0] == "a bad photo of a {}."
    assert IMAGENET_TEMPLATES[34] == "a {} in a video game."
    assert IMAGENET_TEMPLATES[43] == "a origami {}."  # grammar slips kept verbatim
    assert IMAGENET_TEMPLATES[56] == "a embroidered {}."
    assert IMAGENET_TEMPLATES[-1] == "a tattoo of the {}."
    assert all(t.count("{}") == 1 for t in IMAGENET_TEMPLATES)
    assert format_templates("face")[16] == "a photo of my face."


# --- loading --------------------------------------------------------------------------------------------------


def test_loaded_model_is_frozen_eval_fp32_on_cpu(clip: ClipModel) -> None:
    assert clip.image_size == TINY_CLIP_IMAGE_SIZE
    assert clip.context_length == 77
    assert clip.precision == "fp32" and clip.dtype == torch.float32
    assert all(not p.requires_grad for p in clip.parameters())
    assert not clip.model.training
    clip.train()
    assert not clip.model.training, "CLIP must stay in eval mode"
    clip.eval()


def test_loader_uses_quickgelu_like_openai(clip: ClipModel, reference: torch.nn.Module) -> None:
    from open_clip.transformer import QuickGELU

    acts = [m for m in clip.model.modules() if isinstance(m, (QuickGELU, torch.nn.GELU))]
    assert len(acts) == 4 and all(isinstance(m, QuickGELU) for m in acts)  # 2 vision + 2 text blocks

    # The same weights in a GELU network give different features: the activation matters.
    gelu_model = copy.deepcopy(reference)
    for module in list(gelu_model.modules()):
        for name, child in module.named_children():
            if isinstance(child, QuickGELU):
                setattr(module, name, torch.nn.GELU())
    x = _images(0)
    pixels = clip.preprocess(x)
    with torch.no_grad():
        quick = F.normalize(reference.encode_image(pixels), dim=-1)
        plain = F.normalize(gelu_model.encode_image(pixels), dim=-1)
    ours = clip.encode_image(x)
    torch.testing.assert_close(ours, quick, rtol=0, atol=1e-6)
    assert (ours - plain).abs().max() > 1e-4


def test_torchscript_archive_and_state_dict_give_identical_features(clip_files: dict[str, Path]) -> None:
    a = load_clip(clip_files["state_dict"], device="cpu")
    b = load_clip(str(clip_files["torchscript"]), device="cpu")
    x = _images(1, batch=3)
    assert torch.equal(a.encode_image(x), b.encode_image(x))
    prompts = ["a photo of a face.", "an angry face", ""]
    assert torch.equal(a.encode_text(prompts), b.encode_text(prompts))
    assert a.name == str(clip_files["state_dict"])


def test_plain_fp32_state_dict_with_wrapper_and_prefix_loads(tmp_path: Path, clip: ClipModel) -> None:
    state = {"module." + k: v.float() for k, v in tiny_clip_state_dict().items()}
    path = tmp_path / "wrapped.pth"
    torch.save({"state_dict": state, "epoch": 3}, path)
    other = load_clip(path, device="cpu")
    x = _images(2)
    assert torch.equal(other.encode_image(x), clip.encode_image(x))


def test_explicit_fp16_precision_keeps_openai_mixed_layout(clip_files: dict[str, Path]) -> None:
    from open_clip.transformer import LayerNormFp32

    half = load_clip(clip_files["state_dict"], device="cpu", precision="fp16")
    assert half.precision == "fp16" and half.dtype == torch.float16
    assert half.model.visual.conv1.weight.dtype == torch.float16
    assert any(isinstance(m, LayerNormFp32) for m in half.model.modules())


@pytest.mark.parametrize(
    ("content", "error", "words"),
    [
        (b"not a checkpoint at all", CheckpointError, "could not be read"),
        ("dict-without-clip", StateDictMismatchError, "not an OpenAI CLIP checkpoint"),
        ("pickle", UnsafeCheckpointError, "pickled Python objects"),
    ],
)
def test_bad_files_raise_clear_errors(tmp_path: Path, content: object, error: type, words: str) -> None:
    path = tmp_path / "bad.pt"
    if content == "dict-without-clip":
        torch.save({"conv.weight": torch.zeros(2, 2)}, path)
    elif content == "pickle":
        torch.save({"weights": torch.zeros(2), "config": Path("x")}, path)
    else:
        path.write_bytes(content)  # type: ignore[arg-type]
    with pytest.raises(error) as info:
        load_clip(path, device="cpu")
    assert words in str(info.value)
    assert info.value.hint


def test_missing_file_and_bad_precision(tmp_path: Path, clip_files: dict[str, Path]) -> None:
    with pytest.raises(CheckpointError, match="does not exist"):
        load_clip(tmp_path / "nope.pt", device="cpu")
    with pytest.raises(CheckpointError, match="does not exist"):
        load_clip("./missing-clip.pt", device="cpu")
    with pytest.raises(ConfigError, match="precision"):
        load_clip(clip_files["state_dict"], device="cpu", precision="fp8")


def test_registry_names() -> None:
    assert clip_registry_name("ViT-B/16") == "clip-vit-b-16"
    assert clip_registry_name("ViT-B-16") == "clip-vit-b-16"
    assert clip_registry_name("clip-vit-b-32") == "clip-vit-b-32"
    assert clip_registry_name("ViT-B/32") == "clip-vit-b-32"
    assert clip_registry_name("ViT-L/14@336px") == "clip-vit-l-14-336px"


def test_load_by_name_goes_through_the_checkpoint_store(
    tmp_path: Path, clip_files: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    from dclip_cli.checkpoints.registry import CheckpointSpec
    from dclip_cli.fileio import sha256_file
    from dclip_cli.presets import manager
    from dclip_cli.presets.hookspecs import hookimpl

    mirror = tmp_path / "mirror"
    mirror.mkdir()
    (mirror / "ViT-T-8.pt").write_bytes(clip_files["torchscript"].read_bytes())
    digest = sha256_file(mirror / "ViT-T-8.pt")

    class TinyClipPlugin:
        @hookimpl
        def register_checkpoints(self, register):  # type: ignore[no-untyped-def]
            register(
                CheckpointSpec(
                    name="clip-vit-t-8", filename="ViT-T-8.pt", sha256=digest, format="openai-clip"
                )
            )

    manager.register_plugin("tiny-clip", TinyClipPlugin())
    monkeypatch.setenv("DCLIP_MIRROR", str(mirror))
    by_name = load_clip("ViT-T/8", device="cpu")
    assert by_name.name == "clip-vit-t-8"
    x = _images(3)
    assert torch.equal(
        by_name.encode_image(x), load_clip(clip_files["state_dict"], device="cpu").encode_image(x)
    )

    with pytest.raises(UnknownCheckpointError, match="neither a CLIP file nor a known CLIP model"):
        load_clip("ViT-Q/99", device="cpu")
    monkeypatch.delenv("DCLIP_MIRROR")
    monkeypatch.setenv("DCLIP_OFFLINE", "1")
    with pytest.raises(CheckpointNotCachedError):
        load_clip("ViT-B/16", device="cpu")


# --- preprocessing and encoders --------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(2, 3, 48, 48), (1, 3, 40, 56), (1, 3, 64, 44), (2, 3, 32, 32)])
def test_preprocess_matches_torchvision_pipeline(clip: ClipModel, shape: tuple[int, ...]) -> None:
    x = torch.rand(*shape, generator=torch.Generator().manual_seed(4)) * 2 - 1
    ours = clip.preprocess(x)
    assert ours.shape == (shape[0], 3, clip.image_size, clip.image_size)
    torch.testing.assert_close(ours, _hand_preprocess(x, clip.image_size), rtol=0, atol=1e-6)


def test_encoders_return_unit_rows_for_any_batch(clip: ClipModel) -> None:
    for batch in (1, 3):
        feats = clip.encode_image(_images(5, batch=batch))
        assert feats.shape == (batch, TINY_CLIP_EMBED_DIM) and feats.dtype == torch.float32
        torch.testing.assert_close(feats.norm(dim=-1), torch.ones(batch))
    text = clip.encode_text(["a face", "a cat", "a church"])
    assert text.shape == (3, TINY_CLIP_EMBED_DIM)
    torch.testing.assert_close(text.norm(dim=-1), torch.ones(3))
    assert clip.encode_text("a face").shape == (1, TINY_CLIP_EMBED_DIM)
    with pytest.raises(ConfigError, match=r"\(B, 3, H, W\)"):
        clip.encode_image(torch.zeros(3, 32, 32))


# --- directional loss -------------------------------------------------------------------------------------------


def _hand_text_direction(reference: torch.nn.Module, src: str, trg: str) -> torch.Tensor:
    from open_clip.tokenizer import tokenize

    def feats(text: str) -> torch.Tensor:
        prompts = [t.replace("{}", text) for t in IMAGENET_TEMPLATES]
        with torch.no_grad():
            f = reference.encode_text(tokenize(prompts, context_length=77))
        return f / f.norm(dim=-1, keepdim=True)

    per_template = feats(trg) - feats(src)  # (79, D)
    mean = per_template.mean(dim=0, keepdim=True)
    return mean / mean.norm(dim=-1, keepdim=True)


def test_l_dir_matches_hand_computation(clip: ClipModel, reference: torch.nn.Module) -> None:
    x_src, x_gen = _images(6), _images(7)
    src, trg = "face", "angry face"

    delta_t = _hand_text_direction(reference, src, trg)
    with torch.no_grad():
        e_src = reference.encode_image(_hand_preprocess(x_src, TINY_CLIP_IMAGE_SIZE))
        e_gen = reference.encode_image(_hand_preprocess(x_gen, TINY_CLIP_IMAGE_SIZE))
    e_src = e_src / e_src.norm(dim=-1, keepdim=True)
    e_gen = e_gen / e_gen.norm(dim=-1, keepdim=True)
    delta_i = e_gen - e_src
    delta_i = delta_i / (delta_i.norm(dim=-1, keepdim=True) + 1e-7)
    cos = (delta_i * delta_t).sum(-1) / (delta_i.norm(dim=-1) * delta_t.norm(dim=-1))
    expected = (1 - cos).mean()

    loss = DirectionalCLIPLoss(clip)
    value = loss(x_src, src, x_gen, trg)
    assert value.shape == () and value.dtype == torch.float32
    torch.testing.assert_close(value, expected, rtol=0, atol=2e-6)
    torch.testing.assert_close(loss.text_direction(src, trg), delta_t, rtol=0, atol=2e-6)
    assert 0.0 <= value.item() <= 2.0
    torch.testing.assert_close(loss.per_sample(x_src, src, x_gen, trg), 1 - cos, rtol=0, atol=2e-6)


def test_text_direction_function_and_directional_similarity(clip: ClipModel) -> None:
    x_src, x_edit = _images(13), _images(14)
    loss = DirectionalCLIPLoss(clip, templates=SHORT)
    direction = text_direction(clip, "church", "gothic church", SHORT)
    torch.testing.assert_close(direction, loss.text_direction("church", "gothic church"))
    sims = directional_similarity(clip, x_src, x_edit, "church", "gothic church", templates=SHORT)
    assert sims.shape == (2,)
    torch.testing.assert_close(sims, 1 - loss.per_sample(x_src, "church", x_edit, "gothic church"))


def test_text_direction_is_cached_per_pair(clip: ClipModel) -> None:
    loss = DirectionalCLIPLoss(clip, templates=SHORT)
    first = loss.text_direction("face", "smiling face")
    assert loss.text_direction("face", "smiling face") is first
    other = loss.text_direction("face", "sad face")
    assert other is not first and not torch.allclose(other, first)
    assert set(loss._directions) == {("face", "smiling face"), ("face", "sad face")}
    assert first.shape == (1, TINY_CLIP_EMBED_DIM)
    torch.testing.assert_close(first.norm(), torch.tensor(1.0))
    loss.clear_cache()
    assert not loss._directions


def test_batch_loss_is_the_mean_of_single_losses(clip: ClipModel) -> None:
    loss = DirectionalCLIPLoss(clip, templates=SHORT)
    x_src, x_gen = _images(8, batch=3), _images(9, batch=3)
    batch = loss(x_src, "face", x_gen, "old face")
    singles = torch.stack([loss(x_src[i : i + 1], "face", x_gen[i : i + 1], "old face") for i in range(3)])
    torch.testing.assert_close(batch, singles.mean(), rtol=0, atol=1e-6)
    # one source for the whole batch broadcasts
    one = loss(x_src[:1], "face", x_gen, "old face")
    torch.testing.assert_close(one, loss(x_src[:1].expand(3, -1, -1, -1), "face", x_gen, "old face"))
    with pytest.raises(ConfigError, match="batch size"):
        loss(x_src[:2], "face", x_gen, "old face")


@pytest.mark.parametrize(("cos", "expected"), [(1.0, 0.0), (0.0, math.log(2)), (0.5, -math.log(0.75))])
def test_clip_term_worked_values(cos: float, expected: float) -> None:
    l_dir = torch.tensor(1.0 - cos)
    assert clip_term(l_dir).item() == pytest.approx(expected, abs=1e-7)
    assert clip_term(1.0 - cos).item() == pytest.approx(expected, abs=1e-7)


def test_clip_term_goes_to_infinity_at_cos_minus_one() -> None:
    assert math.isinf(clip_term(torch.tensor(2.0)).item())


def test_loss_decreases_along_the_gradient_and_clip_gets_no_gradient(clip: ClipModel) -> None:
    loss = DirectionalCLIPLoss(clip, templates=SHORT)
    x_src = _images(10, batch=2).requires_grad_(True)
    x_gen = (x_src.detach() + 0.1 * _images(11, batch=2)).requires_grad_(True)
    values = []
    for _ in range(6):
        term = clip_term(loss(x_src, "face", x_gen, "zombie face"))
        values.append(term.item())
        (grad,) = torch.autograd.grad(term, x_gen)
        with torch.no_grad():
            x_gen -= 0.5 * grad / grad.abs().max()
    assert values[-1] < values[0] - 1e-3, values

    term = clip_term(loss(x_src, "face", x_gen, "zombie face"))
    term.backward()
    assert x_gen.grad is not None and x_gen.grad.abs().sum() > 0
    assert x_src.grad is None, "the source image must carry no gradient"
    assert all(p.grad is None for p in clip.parameters())


# --- metrics ----------------------------------------------------------------------------------------------------


def test_text_similarity_and_zero_shot(clip: ClipModel) -> None:
    x = _images(12, batch=2)
    sims = text_similarity(clip, x, "a photo of a face")
    expected = (clip.encode_image(x) @ clip.encode_text(["a photo of a face"]).T)[:, 0]
    assert sims.shape == (2,)
    torch.testing.assert_close(sims, expected)

    prompts = ["a photo of a face", "a photo of a church", "a photo of a dog"]
    probs = zero_shot(clip, x, prompts)
    assert probs.shape == (2, 3)
    torch.testing.assert_close(probs.sum(-1), torch.ones(2))
    logits = 100 * clip.encode_image(x) @ clip.encode_text(prompts).T
    torch.testing.assert_close(probs, torch.softmax(logits, -1))
    with pytest.raises(ConfigError):
        zero_shot(clip, x, [])


def test_public_names_are_exported() -> None:
    import dclip_cli

    assert dclip_cli.load_clip is load_clip
    assert dclip_cli.DirectionalCLIPLoss is DirectionalCLIPLoss
