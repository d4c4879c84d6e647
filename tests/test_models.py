"""DDPM and ADM UNets: exact official key layouts, parameter counts, attention math, safe loading, errors."""

from __future__ import annotations

import hashlib
import math
import pickle
import re
from pathlib import Path

import pytest
import torch

from dclip_cli.errors import CheckpointError, ConfigError, StateDictMismatchError, UnsafeCheckpointError
from dclip_cli.models import (
    ADM_AFHQ_CONFIG,
    ADM_IMAGENET512_CONFIG,
    DDPM_256_CONFIG,
    build_model,
    detect_arch,
    infer_config,
    load_checkpoint,
    load_diffusion_model,
    load_state_dict_file,
    normalize_config,
)
from dclip_cli.models.adm_unet import (
    AttentionBlock,
    GroupNorm32,
    adm_attention_reference,
    timestep_embedding_adm,
)
from dclip_cli.models.ddpm_unet import AttnBlock, ddpm_attention_reference, timestep_embedding_ddpm
from tests.support.tiny import make_tiny_model, save_tiny_checkpoint, tiny_config, torch_single_thread  # noqa: F401

KEYS_DOC = Path("/work/shared/docs/statedict-keys.txt")

# sha256 of "key (shape)" lines of statedict-keys.txt sections A, B, C (in file order)
OFFICIAL = {
    "A": ("ddpm", DDPM_256_CONFIG, 450, 113_673_219, "b0d40818e02bb1579b8607e602bf9feaf542b538325a5bc92d9aa2646b7f50d3"),
    "B": ("adm", ADM_AFHQ_CONFIG, 362, 93_563_910, "e047b3461e64590e6bde3376923cd352b5736f821b280008e99905c79c2644b0"),
    "C": ("adm", ADM_IMAGENET512_CONFIG, 645, 558_997_638, "74099b42b3463e6292df54f446755a17af94b3cf277fb466119bcc7d892262dc"),
}  # fmt: skip


def _listing(state_dict) -> list[str]:
    return [f"{k} {tuple(v.shape)}" for k, v in state_dict.items()]


def _doc_section(section: str) -> list[str]:
    text = KEYS_DOC.read_text()
    for part in re.split(r"^## ", text, flags=re.M):
        if part.startswith(section + "."):
            lines = []
            for line in part.splitlines()[1:]:
                line = line.strip()
                if line and not line.startswith("#"):
                    key, shape = line.split(" ", 1)
                    lines.append(f"{key} {tuple(int(v) for v in re.findall(r'[0-9]+', shape))}")
            return lines
    raise AssertionError(f"section {section} not found")


@pytest.mark.parametrize("section", ["A", "B", "C"])
def test_official_layouts_exact(section: str) -> None:
    arch, config, n_tensors, n_params, digest = OFFICIAL[section]
    with torch.device("meta"):
        model = build_model(arch, config)
    sd = model.unet.state_dict()
    assert len(sd) == n_tensors
    assert sum(p.numel() for p in model.unet.parameters()) == n_params
    listing = _listing(sd)
    if KEYS_DOC.exists():  # readable diff against the reference file when it is at hand
        doc = _doc_section(section)
        assert [x for x in doc if x not in listing] == []
        assert [x for x in listing if x not in doc] == []
        assert listing == doc
    assert hashlib.sha256("\n".join(listing).encode()).hexdigest() == digest


def test_official_layout_spot_keys() -> None:
    with torch.device("meta"):
        ddpm = build_model("ddpm").unet.state_dict()
        adm = build_model("adm", ADM_IMAGENET512_CONFIG).unet.state_dict()
    assert tuple(ddpm["temb.dense.0.weight"].shape) == (512, 128)
    assert tuple(ddpm["up.4.attn.2.proj_out.weight"].shape) == (512, 512, 1, 1)
    assert tuple(ddpm["up.0.block.2.nin_shortcut.weight"].shape) == (128, 256, 1, 1)
    assert tuple(adm["label_emb.weight"].shape) == (1000, 1024)
    assert tuple(adm["out.2.weight"].shape) == (6, 128, 3, 3)
    assert tuple(adm["middle_block.1.qkv.weight"].shape) == (3072, 1024, 1)


@pytest.mark.parametrize(
    ("arch", "config"), [("ddpm", DDPM_256_CONFIG), ("adm", ADM_AFHQ_CONFIG), ("adm", ADM_IMAGENET512_CONFIG)]
)
def test_config_inferred_from_official_shapes(arch, config) -> None:
    with torch.device("meta"):
        sd = build_model(arch, config).unet.state_dict()
    assert detect_arch(sd) == arch
    assert infer_config(arch, sd) == normalize_config(arch, config)


def test_attention_sdpa_matches_reference_math() -> None:
    gen = torch.Generator().manual_seed(0)
    # DDPM: single head, 1x1 conv q/k/v
    block = AttnBlock(64)
    for p in block.parameters():
        p.data = torch.randn(p.shape, generator=gen) * 0.2
    x = torch.randn(2, 64, 8, 8, generator=gen)
    h = block.norm(x)
    expected = x + block.proj_out(ddpm_attention_reference(block.q(h), block.k(h), block.v(h)))
    torch.testing.assert_close(block(x), expected, atol=1e-5, rtol=1e-5)
    # ADM: 64 channels per head, legacy and new qkv orders
    for new_order in (False, True):
        attn = AttentionBlock(128, num_head_channels=64, use_new_attention_order=new_order)
        for p in attn.parameters():
            p.data = torch.randn(p.shape, generator=gen) * 0.2
        x = torch.randn(3, 128, 4, 4, generator=gen)
        flat = x.reshape(3, 128, -1)
        ref = adm_attention_reference(attn.qkv(attn.norm(flat)), attn.num_heads, legacy=not new_order)
        expected = (flat + attn.proj_out(ref)).reshape(x.shape)
        assert attn.num_heads == 2
        torch.testing.assert_close(attn(x), expected, atol=1e-5, rtol=1e-5)
    legacy = AttentionBlock(128, num_head_channels=64, use_new_attention_order=False)
    legacy.load_state_dict(attn.state_dict())
    assert not torch.allclose(legacy(x), attn(x), atol=1e-3)


def test_timestep_embeddings_and_norms() -> None:
    t = torch.tensor([0.0, 10.0])
    ddpm = timestep_embedding_ddpm(t, 8)  # half = 4, f_k = exp(-k·ln(1e4)/3), [sin | cos]
    f = [math.exp(-k * math.log(10000) / 3) for k in range(4)]
    assert ddpm[1].tolist() == pytest.approx(
        [math.sin(10 * v) for v in f] + [math.cos(10 * v) for v in f], abs=1e-6
    )
    adm = timestep_embedding_adm(t, 8)  # half = 4, f_k = exp(-ln(1e4)·k/4), [cos | sin]
    f = [math.exp(-math.log(10000) * k / 4) for k in range(4)]
    assert adm[1].tolist() == pytest.approx(
        [math.cos(10 * v) for v in f] + [math.sin(10 * v) for v in f], abs=1e-6
    )
    assert ddpm[0].tolist() == [0.0] * 4 + [1.0] * 4
    ddpm_model = make_tiny_model("ddpm")
    assert ddpm_model.unet.norm_out.eps == 1e-6 and ddpm_model.unet.norm_out.num_groups == 32
    gn = GroupNorm32(32)
    assert gn.eps == 1e-5
    assert gn(torch.randn(1, 32, 4, 4).half()).dtype == torch.float16


@pytest.mark.parametrize("arch", ["ddpm", "adm"])
def test_tiny_model_forward_shapes_and_sigma_split(arch: str) -> None:
    model = make_tiny_model(arch)
    x = torch.randn(3, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([0.0, 250.0, 999.0])
    with torch.no_grad():
        eps = model(x, t)
        raw = model.predict(x, t)
    assert eps.shape == (3, 3, 16, 16)
    assert model.arch == arch and model.image_size == 16
    assert model.learn_sigma is (arch == "adm")
    if arch == "adm":
        assert raw.shape == (3, 6, 16, 16)
        torch.testing.assert_close(eps, raw[:, :3])
    else:
        assert torch.equal(eps, raw)
    # different timesteps and inputs give different predictions (the network is not degenerate)
    assert not torch.allclose(eps[0], eps[1])
    with pytest.raises(ConfigError, match="square"):
        model(torch.zeros(1, 3, 16, 12), torch.zeros(1))


@pytest.mark.parametrize("arch", ["ddpm", "adm"])
def test_safetensors_round_trip_is_self_describing(arch: str, tmp_path: Path) -> None:
    path = save_tiny_checkpoint(tmp_path / "tiny.safetensors", arch, seed=3)
    loaded = load_diffusion_model(path)
    reference = make_tiny_model(arch, seed=3)
    assert loaded.arch == arch and loaded.config == reference.config
    assert loaded.source == str(path)
    _, meta = load_checkpoint(path)
    assert meta["arch"] == arch and '"num_res_blocks": 1' in meta["arch_config"]
    assert not loaded.training
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    t = torch.tensor([5.0, 700.0])
    with torch.no_grad():
        assert torch.equal(loaded(x, t), reference(x, t))


@pytest.mark.parametrize("arch", ["ddpm", "adm"])
def test_plain_pickle_checkpoint_with_inferred_config(arch: str, tmp_path: Path) -> None:
    path = save_tiny_checkpoint(tmp_path / "tiny.pt", arch, seed=4)
    size_key = "resolution" if arch == "ddpm" else "image_size"
    override = {size_key: 16} if arch == "ddpm" else {size_key: 16, "num_head_channels": 32}
    loaded = load_diffusion_model(path, config=override)
    assert loaded.config == normalize_config(arch, tiny_config(arch))
    x = torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert torch.equal(
            loaded(x, torch.tensor([42.0])), make_tiny_model(arch, seed=4)(x, torch.tensor([42.0]))
        )
    # explicit full config and explicit arch work too
    again = load_diffusion_model(path, arch=arch, config=tiny_config(arch))
    assert again.config == loaded.config


def test_container_formats_and_module_prefix(tmp_path: Path) -> None:
    sd = make_tiny_model("ddpm", seed=5).unet.state_dict()
    torch.save({"module." + k: v for k, v in sd.items()}, tmp_path / "dp.pth")
    torch.save({"state_dict": sd, "epoch": 3}, tmp_path / "wrapped.ckpt")
    torch.save([sd, {"opt": 1}, 10, 20], tmp_path / "ddim_runner.pth")
    for name in ("dp.pth", "wrapped.ckpt", "ddim_runner.pth"):
        loaded = load_state_dict_file(tmp_path / name)
        assert list(loaded) == list(sd)
        assert all(torch.equal(loaded[k], sd[k]) for k in sd)


def test_unsafe_pickle_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "evil.pt"
    torch.save({"weights": torch.zeros(2), "payload": pickle.PickleError("code")}, path)
    with pytest.raises(UnsafeCheckpointError, match="arbitrary code") as info:
        load_diffusion_model(path)
    assert "state_dict" in info.value.hint


def test_unreadable_and_missing_files(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="does not exist"):
        load_diffusion_model(tmp_path / "nope.pt")
    bad = tmp_path / "truncated.pt"
    good = save_tiny_checkpoint(tmp_path / "ok.pt", "ddpm")
    bad.write_bytes(good.read_bytes()[:2000])
    with pytest.raises(CheckpointError, match="not a readable PyTorch checkpoint"):
        load_diffusion_model(bad)
    st = save_tiny_checkpoint(tmp_path / "ok.safetensors", "ddpm")
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(st.read_bytes()[:5000])
    with pytest.raises(CheckpointError, match="safetensors"):
        load_diffusion_model(cut)
    png = tmp_path / "photo.png"
    png.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(64))
    with pytest.raises(CheckpointError, match="is not a PyTorch or safetensors checkpoint") as info:
        load_diffusion_model(png)
    assert not isinstance(info.value, UnsafeCheckpointError)
    not_model = tmp_path / "other.pt"
    torch.save({"fc.weight": torch.zeros(2, 2)}, not_model)
    with pytest.raises(StateDictMismatchError, match="neither a DDPM nor an ADM"):
        load_diffusion_model(not_model)


def test_mismatch_error_lists_keys_and_shapes(tmp_path: Path) -> None:
    path = save_tiny_checkpoint(tmp_path / "tiny.pt", "ddpm")
    # wrong width: every shape differs, listed with checkpoint vs model shapes
    with pytest.raises(StateDictMismatchError) as info:
        load_diffusion_model(path, config={**tiny_config("ddpm"), "ch": 64})
    msg = str(info.value)
    assert (
        "wrong shape(s)" in msg and "conv_in.weight (checkpoint (32, 3, 3, 3) vs model (64, 3, 3, 3))" in msg
    )
    assert "more" in msg  # long lists are cut
    # attention in the wrong place: missing and unexpected keys
    with pytest.raises(StateDictMismatchError) as info:
        load_diffusion_model(path, config={**tiny_config("ddpm"), "attn_resolutions": [16]})
    msg = str(info.value)
    assert "missing key(s): down.0.attn.0.norm.weight" in msg
    assert "unexpected key(s): down.1.attn.0.norm.weight" in msg
    assert info.value.hint
    # arch mismatch
    with pytest.raises(StateDictMismatchError, match="holds a DDPM model, not the requested ADM"):
        load_diffusion_model(path, arch="adm")


def test_bad_configs() -> None:
    with pytest.raises(ConfigError, match="Unknown DDPM architecture setting 'chanels'"):
        build_model("ddpm", {"chanels": 3})
    with pytest.raises(ConfigError, match="multiple of 32"):
        build_model("ddpm", {**tiny_config("ddpm"), "ch": 48})
    with pytest.raises(ConfigError, match="Unknown architecture 'unet'"):
        build_model("unet", {})
    with pytest.raises(ConfigError, match="not divisible by num_head_channels"):
        build_model("adm", {**tiny_config("adm"), "num_head_channels": 48})
    # ddim YAML extras are accepted and ignored; guided-diffusion string forms are parsed
    cfg = normalize_config(
        "ddpm", {"type": "simple", "var_type": "fixedsmall", "ema_rate": 0.999, "ema": True}
    )
    assert cfg == DDPM_256_CONFIG
    adm = normalize_config("adm", {"channel_mult": "", "attention_resolutions": "32,16,8", "image_size": 512})
    assert adm["channel_mult"] == [0.5, 1, 1, 2, 2, 4, 4] and adm["attention_resolutions"] == [32, 16, 8]


def test_label_embedding_loaded_but_unused() -> None:
    cfg = {**tiny_config("adm"), "class_cond": True, "num_classes": 10}
    torch.manual_seed(0)
    model = build_model("adm", cfg)
    assert tuple(model.unet.label_emb.weight.shape) == (10, 128)
    x, t = torch.randn(1, 3, 16, 16), torch.tensor([100.0])
    with torch.no_grad():
        before = model(x, t)
        model.unet.label_emb.weight.mul_(100.0)
        assert torch.equal(model(x, t), before)


@pytest.mark.parametrize("arch", ["ddpm", "adm"])
def test_gradient_checkpointing_same_values_and_grads(arch: str) -> None:
    model = make_tiny_model(arch, seed=2).train()
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([10.0, 500.0])
    out_a = model(x, t)
    out_a.square().mean().backward()
    grads_a = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    model.set_gradient_checkpointing(True)
    assert model.unet.gradient_checkpointing
    out_b = model(x, t)
    out_b.square().mean().backward()
    torch.testing.assert_close(out_b, out_a)
    for ga, p in zip(grads_a, model.parameters(), strict=True):
        torch.testing.assert_close(p.grad, ga, atol=1e-6, rtol=1e-4)


@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_torchscript_archive_gives_its_state_dict(tmp_path: Path) -> None:
    lin = torch.nn.Linear(3, 2)
    torch.jit.save(torch.jit.trace(lin, torch.zeros(1, 3)), str(tmp_path / "ts.pt"))
    sd = load_state_dict_file(tmp_path / "ts.pt")
    assert set(sd) == {"weight", "bias"} and torch.equal(sd["weight"], lin.weight.detach())


def test_diffusers_unet2d_conversion_identical_outputs(tmp_path: Path) -> None:
    diffusers = pytest.importorskip("diffusers")
    from safetensors.torch import save_file

    from dclip_cli.models.convert import diffusers_to_ddpm

    torch.manual_seed(0)
    ref = diffusers.UNet2DModel(
        sample_size=16,
        block_out_channels=(32, 64),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=None,
        norm_eps=1e-6,
        downsample_padding=0,
        freq_shift=1,
        flip_sin_to_cos=False,
    ).eval()
    with torch.no_grad():
        for p in ref.parameters():  # randomise the zero-initialised layers too
            p.add_(torch.randn(p.shape) * 0.05)
    converted = diffusers_to_ddpm(ref.state_dict())
    assert "down.1.attn.0.q.weight" in converted and converted["down.1.attn.0.q.weight"].shape == (
        64,
        64,
        1,
        1,
    )
    assert "up.1.attn.1.proj_out.bias" in converted and "up.1.upsample.conv.weight" in converted
    folder = tmp_path / "unet"
    folder.mkdir()
    save_file(
        {k: v.contiguous() for k, v in ref.state_dict().items()},
        str(folder / "diffusion_pytorch_model.safetensors"),
    )
    (folder / "config.json").write_text('{"sample_size": 16}')
    model = load_diffusion_model(folder / "diffusion_pytorch_model.safetensors")
    assert model.arch == "ddpm" and model.image_size == 16
    assert model.config["attn_resolutions"] == [8] and model.config["ch_mult"] == [1, 2]
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    t = torch.tensor([3.0, 640.0])
    with torch.no_grad():
        expected = ref(x, t).sample
        torch.testing.assert_close(model(x, t), expected, atol=1e-5, rtol=1e-5)
    bad = dict(ref.state_dict())
    bad["down_blocks.0.resnets.0.weird.weight"] = torch.zeros(1)
    with pytest.raises(StateDictMismatchError, match="no DDPM counterpart"):
        diffusers_to_ddpm(bad)
