"""Fine-tuned model files: dclip .safetensors artifacts and official DiffusionCLIP .pth files (reference 15.4)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from dclip_cli import __version__
from dclip_cli.artifacts import (
    ARTIFACT_FORMAT,
    load_artifact,
    read_artifact,
    save_artifact,
    t0_from_name,
)
from dclip_cli.errors import CheckpointError, ConfigError, IncompatibleModelError, OutputExistsError
from dclip_cli.models import build_model, load_diffusion_model
from tests.support.tiny import make_tiny_model, save_tiny_checkpoint, tiny_ddpm_config

SHA_A, SHA_B = "a" * 64, "b" * 64


def _tuned(seed: int = 7) -> torch.nn.Module:
    """A stand-in for a fine-tuned model: the tiny DDPM architecture with other weights."""
    return make_tiny_model("ddpm", seed=seed)


def _meta(**kw) -> dict:
    return {"base_checkpoint": "tiny_base", "base_sha256": SHA_A, "src_text": "cat", "trg_text": "tiger",
            "t0": 301, "mode": "original", "loss_weights": {"clip": 3.0, "l1": 0.0}, **kw}  # fmt: skip


def _assert_weights(model: torch.nn.Module, reference: torch.nn.Module, **tol) -> None:
    ref = reference.unet.state_dict()
    for k, v in model.unet.state_dict().items():
        torch.testing.assert_close(v, ref[k], **tol)


def test_round_trip_fp32_with_metadata(tmp_path: Path) -> None:
    base, tuned = make_tiny_model("ddpm", seed=0), _tuned()
    path = save_artifact(tmp_path / "face" / "tiger.safetensors", tuned, _meta())
    assert path.is_file() and not list(tmp_path.rglob("*.incomplete"))
    with safe_open(str(path), framework="pt") as f:
        header = f.metadata()
        assert set(f.keys()) == set(base.unet.state_dict())  # the official key names
    assert header["format"] == ARTIFACT_FORMAT and header["base_sha256"] == SHA_A and header["t0"] == "301"
    info = read_artifact(path)
    assert info.kind == "dclip" and info.t0 == 301 and (info.src_text, info.trg_text) == ("cat", "tiger")
    assert info.metadata["dclip_version"] == __version__ and info.metadata["dtype"] == "fp32"
    assert info.metadata["arch"] == "ddpm" and info.metadata["arch_config"] == tuned.config
    assert info.metadata["loss_weights"] == {"clip": 3.0, "l1": 0.0}

    base_before = {k: v.clone() for k, v in base.state_dict().items()}
    loaded = load_artifact(path, base, base_sha256=SHA_A)
    _assert_weights(loaded, tuned, rtol=0, atol=0)
    assert all(torch.equal(v, base_before[k]) for k, v in base.state_dict().items())  # base untouched
    assert loaded.artifact.t0 == 301 and loaded.base_sha256 == SHA_A and not loaded.training
    x, t = torch.randn(2, 3, 16, 16), torch.full((2,), 100.0)
    torch.testing.assert_close(loaded(x, t), tuned(x, t))
    # the header also makes it loadable as a plain diffusion checkpoint
    _assert_weights(load_diffusion_model(path), tuned, rtol=0, atol=0)


@pytest.mark.parametrize(
    ("dtype", "torch_dtype", "tol"), [("fp16", torch.float16, 1e-3), ("bf16", torch.bfloat16, 1e-2)]
)
def test_half_precision_save(tmp_path: Path, dtype: str, torch_dtype: torch.dtype, tol: float) -> None:
    base, tuned = make_tiny_model("ddpm", seed=0), _tuned()
    full = save_artifact(tmp_path / "full.safetensors", tuned, _meta())
    half = save_artifact(tmp_path / "half.safetensors", tuned, _meta(), dtype=dtype)
    with safe_open(str(half), framework="pt") as f:
        assert {f.get_tensor(k).dtype for k in f.keys()} == {torch_dtype}
    assert half.stat().st_size < 0.6 * full.stat().st_size
    loaded = load_artifact(half, base)
    assert {p.dtype for p in loaded.parameters()} == {torch.float32}
    _assert_weights(loaded, tuned, rtol=tol, atol=tol)
    assert read_artifact(half).metadata["dtype"] == dtype


def test_refuses_another_base(tmp_path: Path) -> None:
    path = save_artifact(tmp_path / "a.safetensors", _tuned(), _meta())
    base = make_tiny_model("ddpm", seed=0)
    # different base sha256 (same architecture: the case only the hash can catch)
    with pytest.raises(IncompatibleModelError, match="fine-tuned from tiny_base") as info:
        load_artifact(path, base, base_sha256=SHA_B)
    assert "tiny_base" in info.value.hint
    # the base model's own file is hashed when it was loaded from one
    other = load_diffusion_model(save_tiny_checkpoint(tmp_path / "other.safetensors", "ddpm", seed=0))
    with pytest.raises(IncompatibleModelError, match="sha256 aaaaaaaaaaaa"):
        load_artifact(path, other)
    # another architecture
    with pytest.raises(IncompatibleModelError, match="DDPM model"):
        load_artifact(path, make_tiny_model("adm"))
    # the same architecture with another configuration
    wider = build_model("ddpm", {**tiny_ddpm_config(), "ch_mult": [1, 1]})
    with pytest.raises(IncompatibleModelError, match="ch_mult"):
        load_artifact(path, wider)


def test_official_pth_is_accepted_with_t0_from_the_name(tmp_path: Path) -> None:
    base, tuned = make_tiny_model("ddpm", seed=0), _tuned()
    path = tmp_path / "human_pixar_t601.pth"
    # DataParallel-style keys, as some official files have
    torch.save({f"module.{k}": v for k, v in tuned.unet.state_dict().items()}, path)
    info = read_artifact(path)
    assert info.kind == "official" and info.t0 == 601 and info.base_sha256 is None
    loaded = load_artifact(path, base, base_sha256=SHA_A)
    _assert_weights(loaded, tuned, rtol=0, atol=0)
    assert loaded.artifact.t0 == 601 and loaded.base_sha256 == SHA_A
    # an official file of another architecture is refused by its keys
    adm = tmp_path / "dog_bear_t500.pth"
    torch.save(make_tiny_model("adm").unet.state_dict(), adm)
    with pytest.raises(IncompatibleModelError, match="does not fit the base model"):
        load_artifact(adm, base)


@pytest.mark.parametrize(
    ("name", "t0"),
    [("human_pixar_t601.pth", 601), ("with_makeuap_t401.pth", 401), ("tanned_t301", 301), ("dog_t500.pt", 500),
     ("face_smiling_t0.safetensors", None), ("neanderthal.pth", None), ("t601.pth", None), ("x_t1200.pth", None)],
)  # fmt: skip
def test_t0_from_name(name: str, t0: int | None) -> None:
    assert t0_from_name(name) == t0


def test_plain_safetensors_and_errors(tmp_path: Path) -> None:
    base = make_tiny_model("ddpm", seed=0)
    plain = save_tiny_checkpoint(tmp_path / "plain_t400.safetensors", "ddpm", seed=3)
    info = read_artifact(plain)
    assert info.kind == "plain" and info.t0 == 400
    _assert_weights(load_artifact(plain, base), make_tiny_model("ddpm", seed=3), rtol=0, atol=0)

    with pytest.raises(CheckpointError, match="does not exist"):
        load_artifact(tmp_path / "missing.safetensors", base)
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    with pytest.raises(CheckpointError, match="not a readable"):
        read_artifact(broken)
    path = save_artifact(tmp_path / "x.safetensors", base, _meta())
    with pytest.raises(OutputExistsError):
        save_artifact(path, base, _meta())
    save_artifact(path, base, _meta(t0=500), overwrite=True)
    assert read_artifact(path).t0 == 500
    with pytest.raises(ConfigError, match="save dtype"):
        save_artifact(tmp_path / "y.safetensors", base, _meta(), dtype="int8")
    with pytest.raises(ConfigError, match=r"\.safetensors file"):
        save_artifact(tmp_path / "y.pth", base, _meta())
    assert json.loads(json.dumps(read_artifact(path).metadata))  # JSON-clean
