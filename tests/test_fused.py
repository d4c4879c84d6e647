"""The fused bf16 CPU inference path (issue 13): same results as autocast within bf16 rounding, clean fallbacks."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from dclip_cli.models import build_model, fused
from dclip_cli.models.adm_unet import adm_attention_reference
from dclip_cli.models.ddpm_unet import ddpm_attention_reference
from dclip_cli.precision import OptimizedEpsModel, optimize_model
from tests.support.tiny import TINY_SIZE, make_tiny_model, tiny_config

ARCHES = ("ddpm", "adm")

needs_fusion = pytest.mark.skipif(
    not fused.cpu_fusion_supported(torch.bfloat16), reason="this PyTorch/CPU has no oneDNN bf16 kernels"
)


def _inputs(batch: int = 2, seed: int = 1, t: list[float] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 3, TINY_SIZE, TINY_SIZE, generator=gen)
    return x, torch.tensor(t if t is not None else [500.0, 20.0, 999.0, 0.0][:batch])


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm())


# ------------------------------------------------------------------------------------------ exact pieces (fp64)


def test_upsample_conv_phases_equal_upsample_then_conv() -> None:
    """The four 2x2 phase kernels reproduce nearest x2 + 3x3 conv exactly (checked in float64)."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 8, 5, 5, generator=gen, dtype=torch.float64).contiguous(
        memory_format=torch.channels_last
    )
    w = torch.randn(6, 8, 3, 3, generator=gen, dtype=torch.float64)
    b = torch.randn(6, generator=gen, dtype=torch.float64)
    ref = F.conv2d(F.interpolate(x, scale_factor=2, mode="nearest"), w, b, padding=1)
    phases = F.conv2d(x, fused.upsample_conv_weight(w), b.repeat(4), padding=1)
    out = fused.interleave_phases(phases.contiguous(memory_format=torch.channels_last))
    assert out.shape == ref.shape and out.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-12)


@pytest.mark.parametrize(("heads", "legacy"), [(1, None), (4, True), (4, False)])
def test_attention_views_match_the_reference_attention(heads: int, legacy: bool | None) -> None:
    """q, k, v as strided views of one channels_last qkv tensor give the models' attention (float32)."""
    gen = torch.Generator().manual_seed(0)
    c, h = 64, 4
    qkv = torch.randn(2, 3 * c, h, h, generator=gen).contiguous(memory_format=torch.channels_last)
    order = "qkv" if legacy is None or not legacy else "legacy"
    out = fused._attention(qkv, heads, order)
    assert out.shape == (2, c, h, h) and out.is_contiguous(memory_format=torch.channels_last)
    if legacy is None:  # the DDPM block: separate q, k, v convolutions, one head
        q, k, v = qkv.contiguous().chunk(3, dim=1)
        ref = ddpm_attention_reference(q, k, v)
    else:
        ref = adm_attention_reference(qkv.contiguous().reshape(2, 3 * c, h * h), heads, legacy=legacy)
        ref = ref.reshape(2, c, h, h)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------------------------------ the fused network


@needs_fusion
@pytest.mark.parametrize("arch", ARCHES)
@pytest.mark.parametrize("t", [[500.0, 20.0], [300.0, 300.0]], ids=["mixed-t", "same-t"])
def test_fused_equals_autocast_within_bf16_rounding(arch: str, t: list[float]) -> None:
    """Fused vs the autocast path: the difference is bf16 rounding, and both are as close to fp32 (<= 6 %).

    With one timestep for the whole batch the ADM scale-shift is folded into the GroupNorm; with several it is not.
    """
    x, tt = _inputs(t=t)
    model = make_tiny_model(arch)
    with torch.no_grad():
        ref = model(x, tt)
        auto = optimize_model(copy.deepcopy(model), precision="bf16", fuse=False)
        fast = optimize_model(copy.deepcopy(model), precision="bf16")
        eps_auto = auto(x, tt)
        eps = fast(x, tt)
    assert fast.execution_path == "fused" and auto.execution_path == "autocast"
    assert eps.dtype == torch.float32 and eps.shape == x.shape and eps.is_contiguous()
    err, err_auto = _rel(eps, ref), _rel(eps_auto, ref)
    assert 0 < err <= 0.06 and err_auto <= 0.06, (err, err_auto)
    assert err <= 1.5 * err_auto + 0.005, (err, err_auto)  # not worse than autocast
    assert _rel(eps, eps_auto) <= 0.04


@needs_fusion
def test_fused_raw_unet_returns_all_channels() -> None:
    model = make_tiny_model("adm")
    runner = fused.build_fused(model.unet, torch.bfloat16)
    assert runner is not None
    x, t = _inputs()
    with torch.no_grad():
        out = runner(x, t)
        ref = model.unet(x, t)
    assert out.shape == ref.shape == (2, 6, TINY_SIZE, TINY_SIZE)
    assert out.dtype == torch.bfloat16
    assert _rel(out, ref) <= 0.06


@needs_fusion
def test_fused_weights_follow_updates_and_gradients_use_autocast() -> None:
    x, t = _inputs()
    model = make_tiny_model("ddpm")
    fast = optimize_model(model, precision="bf16")
    with torch.no_grad():
        first = fast(x, t)
        runner = fast.__dict__["_twin"][1]
        assert isinstance(runner, fused.FusedUNet)
        assert fast(x, t) is not first and fast.__dict__["_twin"][1] is runner  # reused
        model.unet.conv_out.bias.add_(0.5)  # an in-place update (optimizer step, load_state_dict)
        changed = fast(x, t)
    assert fast.__dict__["_twin"][1] is not runner
    torch.testing.assert_close(changed - first, torch.full_like(first, 0.5), rtol=0, atol=0.02)
    eps = fast(x, t)  # with gradients: the fp32 weights under autocast
    assert eps.requires_grad
    assert all(p.dtype == torch.float32 for p in fast.parameters())


def test_fallbacks_where_the_fused_path_does_not_apply(monkeypatch: pytest.MonkeyPatch) -> None:
    """fp16, other callables, dropout in training mode, non-CPU weights and CPUs without the kernels: autocast."""
    model = make_tiny_model("ddpm")
    assert not fused.fused_path_applies(model, torch.float16)
    assert not fused.fused_path_applies(model, None)
    assert not fused.fused_path_applies(lambda x, t: x, torch.bfloat16)
    with torch.device("meta"):  # weights that are not on the CPU
        assert not fused.fused_path_applies(build_model("ddpm", tiny_config("ddpm")), torch.bfloat16)
    dropout = make_tiny_model("ddpm", config={**tiny_config("ddpm"), "dropout": 0.1}).train()
    assert not fused.fused_path_applies(dropout, torch.bfloat16)
    assert fused.fused_path_applies(dropout.eval(), torch.bfloat16) == fused.cpu_fusion_supported(
        torch.bfloat16
    )

    monkeypatch.setattr(fused, "cpu_fusion_supported", lambda dtype=torch.bfloat16: False)
    fast = optimize_model(make_tiny_model("adm"), precision="bf16")
    x, t = _inputs()
    with torch.no_grad():
        eps = fast(x, t)
        ref = make_tiny_model("adm")(x, t)
    assert fast.execution_path == "autocast"
    assert not isinstance(fast.__dict__["_twin"][1], fused.FusedUNet)
    assert _rel(eps, ref) <= 0.06


def test_probe_failure_means_unsupported(monkeypatch: pytest.MonkeyPatch) -> None:
    """A build whose private oneDNN operators are missing or refuse the arguments answers False, not an error."""

    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("no such operator")

    monkeypatch.setattr(fused, "PackedConv", broken)
    assert fused.cpu_fusion_supported.__wrapped__(torch.bfloat16) is False
    assert fused.cpu_fusion_supported.__wrapped__(torch.float16) is False


def test_fp32_wrapper_is_untouched_by_fusion() -> None:
    """--precision fp32 never takes the fused path: bit-identical to the plain model."""
    x, t = _inputs()
    model = make_tiny_model("adm")
    with torch.no_grad():
        plain = optimize_model(make_tiny_model("adm"), precision="fp32", channels_last=False)
        assert torch.equal(plain(x, t), model(x, t))
    assert plain.execution_path == "plain"
    assert isinstance(plain, OptimizedEpsModel) and plain.fuse


def test_fusion_switch_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DCLIP_CPU_FUSION", "0")
    assert not optimize_model(make_tiny_model("ddpm"), precision="bf16").fuse
    monkeypatch.delenv("DCLIP_CPU_FUSION")
    assert optimize_model(make_tiny_model("ddpm"), precision="bf16").fuse
    assert not optimize_model(make_tiny_model("ddpm"), precision="bf16", training=True).fuse


def test_describe_precision_names_the_fused_path(monkeypatch: pytest.MonkeyPatch) -> None:
    from dclip_cli import precision

    monkeypatch.setattr(fused, "cpu_fusion_supported", lambda dtype=torch.bfloat16: True)
    assert "fused oneDNN kernels" in precision.describe_precision(torch.bfloat16, "cpu")
    monkeypatch.setattr(fused, "cpu_fusion_supported", lambda dtype=torch.bfloat16: False)
    assert precision.describe_precision(torch.bfloat16, "cpu").startswith("bf16 autocast on cpu")
    assert precision.describe_precision(torch.float16, "cpu").startswith("fp16 autocast on cpu")
