"""A fused bfloat16 inference path for both UNets on x86 CPUs (oneDNN post-ops, prepacked weights; issue 13).

:class:`FusedUNet` runs the same network as :class:`~dclip_cli.models.ddpm_unet.DDPMUNet` or
:class:`~dclip_cli.models.adm_unet.ADMUNet` under bfloat16 autocast, with fewer passes over the activations:

* every convolution runs through ``torch.ops.mkldnn._convolution_pointwise`` with its bfloat16 weight reordered
  once into oneDNN's blocked layout (autocast casts and reorders every weight at every call);
* the residual additions (``x + conv2(h)``, ``x + proj_out(attention)``) and the DDPM timestep projection
  (``conv1(h) + temb_proj(temb)``, a broadcast add) are binary post-ops of the convolution that produces them;
* the ADM scale-shift norm ``GN(h)·(1 + scale) + shift`` is folded into the GroupNorm's affine parameters, and its
  float32 round trip (``GroupNorm32``) is replaced by the mixed-precision kernel, which rounds the same way;
* SiLU runs in place on the GroupNorm output;
* the attention's q, k and v (1x1 convolutions) are one convolution, viewed as strided q, k, v without copies,
  and run in the fused ``scaled_dot_product_attention`` kernel;
* a nearest x2 upsampling followed by a 3x3 convolution is one 2x2 convolution with four output phases
  (:class:`UpsampleConv`): 2.25x fewer multiply-adds, and the upsampled tensor is never written;
* the timestep projections of all residual blocks are one matrix product.

The results are those of the autocast path within bfloat16 rounding (the tests compare both). The fused path is used
only for calls without gradient on a CPU whose oneDNN build has bfloat16 kernels (:func:`cpu_fusion_supported`);
:func:`build_fused` returns ``None`` for anything else, and the caller keeps the autocast path.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from dclip_cli.models import adm_unet as adm
from dclip_cli.models.ddpm_unet import AttnBlock, DDPMUNet, ResnetBlock, timestep_embedding_ddpm
from dclip_cli.models.protocol import DiffusionModel

__all__ = [
    "FusedUNet",
    "PackedConv",
    "UpsampleConv",
    "build_fused",
    "cpu_fusion_supported",
    "fused_path_applies",
    "interleave_phases",
    "upsample_conv_weight",
]


# --------------------------------------------------------------------------------------------- availability


def _conv_op() -> Any:
    return torch.ops.mkldnn._convolution_pointwise


@functools.lru_cache(maxsize=4)
def cpu_fusion_supported(dtype: torch.dtype = torch.bfloat16) -> bool:
    """Whether this PyTorch build and CPU run the fused path in ``dtype`` (only bfloat16 is supported).

    Checks that oneDNN is built in and enabled and has bfloat16 kernels for this CPU (AVX512-BF16, AMX, or
    AVX512-BW/VL/DQ where oneDNN converts), then runs a tiny fused convolution as a probe: a build without these
    private operators, or one that rejects their arguments, answers ``False`` instead of failing later.
    """
    if dtype is not torch.bfloat16:
        return False
    try:
        if not (torch.backends.mkldnn.is_available() and torch.backends.mkldnn.enabled):
            return False
        if not torch.ops.mkldnn._is_mkldnn_bf16_supported():
            return False
        gen = torch.Generator().manual_seed(
            0
        )  # not the global generator: the probe must not change user draws
        weight = torch.randn(32, 32, 3, 3, generator=gen) / 17
        bias = torch.randn(32, generator=gen)
        x = (
            torch.randn(1, 32, 4, 4, generator=gen)
            .to(torch.bfloat16)
            .contiguous(memory_format=torch.channels_last)
        )
        packed = PackedConv(None, torch.bfloat16, weight=weight, bias=bias, padding=1)
        with torch.no_grad():
            y = packed(x, add=x)
            z = packed(x)
            ref = F.conv2d(x.float(), weight, bias, padding=1)
        close = (y.float() - ref - x.float()).abs().max() < 0.1 * ref.abs().max()
        return bool(close and (z.float() - ref).abs().max() < 0.1 * ref.abs().max())
    except Exception:  # any failure means: use the autocast path
        return False


# ------------------------------------------------------------------------------------------------ kernels


def _pair(v: Any) -> list[int]:
    return [int(v), int(v)] if isinstance(v, int) else [int(e) for e in v] * (2 if len(v) == 1 else 1)


class PackedConv:
    """A convolution with its low-precision weight cast once and reordered once per input shape.

    Calls ``torch.ops.mkldnn._convolution_pointwise``: ``conv(x)``, or ``conv(x) + add`` with the addition as a
    oneDNN binary post-op (``add`` of the output's shape, or (B, C_out, 1, 1) broadcast over the pixels). Only the
    reordered weight is kept in low precision; it is derived from the float32 ``weight`` (kept by reference) when a
    new input shape needs it.

    Args:
        conv: an ``nn.Conv1d`` (kernel 1) or ``nn.Conv2d`` to take the settings from, or ``None``.
        dtype: the compute dtype (bfloat16).
        weight: (C_out, C_in, kh, kw) float32, instead of the module's (a Conv1d's (C_out, C_in, 1) is 1x1).
        bias: (C_out,) or ``None``, instead of the module's.
        padding, stride: as in ``nn.Conv2d`` (symmetric), instead of the module's.
    """

    def __init__(
        self,
        conv: Any,
        dtype: torch.dtype,
        *,
        weight: torch.Tensor | None = None,
        bias: torch.Tensor | None = None,
        padding: Any = None,
        stride: Any = None,
    ) -> None:
        if conv is not None:
            weight = conv.weight if weight is None else weight
            bias = conv.bias if bias is None else bias
            padding = conv.padding if padding is None else padding
            stride = conv.stride if stride is None else stride
        assert weight is not None
        w = weight.detach()
        self.weight = w.unsqueeze(-1) if w.ndim == 3 else w  # float32, the module's storage (no copy)
        self.dtype = dtype
        b = None if bias is None else bias.detach().float()
        self.bias = b
        self.bias_lp = None if b is None else b.to(dtype)
        self.padding = _pair(padding if padding is not None else 0)
        self.stride = _pair(stride if stride is not None else 1)
        self.dilation = [1, 1]
        self._packed: dict[tuple[int, ...], torch.Tensor] = {}

    def packed_weight(self, shape: torch.Size) -> torch.Tensor:
        """The weight in oneDNN's blocked layout for inputs of ``shape`` (reordered once per shape)."""
        key = tuple(shape)
        packed = self._packed.get(key)
        if packed is None:
            weight = self.weight.to(self.dtype).contiguous(memory_format=torch.channels_last)
            packed = torch.ops.mkldnn._reorder_convolution_weight(
                weight, self.padding, self.stride, self.dilation, 1, list(key)
            )
            self._packed[key] = packed
        return packed

    def __call__(self, x: torch.Tensor, *, add: torch.Tensor | None = None) -> torch.Tensor:
        """``conv(x)`` or ``conv(x) + add``, for ``x`` (B, C_in, H, W) in the compute dtype, channels_last."""
        w = self.packed_weight(x.shape)
        if add is None:
            return _conv_op()(  # type: ignore[no-any-return]
                x, w, self.bias, self.padding, self.stride, self.dilation, 1, "none", [], None
            )
        return _conv_op().binary(  # type: ignore[no-any-return]
            x, add, w, self.bias_lp, self.padding, self.stride, self.dilation, 1, "add", None, None, [], None
        )


def upsample_conv_weight(weight: torch.Tensor) -> torch.Tensor:
    """The 2x2 kernels of the four output phases of "nearest x2, then ``weight`` (3x3, padding 1)".

    Output pixel (2i + p, 2j + q) sees input rows {i - 1, i} (p = 0) or {i, i + 1} (p = 1), each with the 3x3
    taps that land on it summed (p = 0: W₀ | W₁ + W₂; p = 1: W₀ + W₁ | W₂), and the same for the columns.

    Args:
        weight: (C_out, C_in, 3, 3).

    Returns:
        (4·C_out, C_in, 2, 2): phase (p, q) in output channels [(2p + q)·C_out, (2p + q + 1)·C_out), summed in the
        weight's dtype (float32: the combined taps are rounded once when cast to bfloat16).
    """
    taps = ([0], [1, 2]), ([0, 1], [2])  # 3x3 taps per phase and 2x2 position
    phases = []
    for p in range(2):
        rows = [weight[:, :, taps[p][a], :].sum(dim=2) for a in range(2)]  # (Co, Ci, 3) per kernel row
        for q in range(2):
            kernel = [[r[:, :, taps[q][b]].sum(dim=2) for b in range(2)] for r in rows]
            phases.append(torch.stack([torch.stack(row, dim=-1) for row in kernel], dim=-2))
    return torch.cat(phases)


def interleave_phases(phases: torch.Tensor) -> torch.Tensor:
    """Assemble the (B, 2H, 2W) image from the output of the 2x2 phase convolution (padding 1).

    Args:
        phases: (B, 4·C, H + 1, W + 1), channels_last: phase (p, q) of output pixel (2i + p, 2j + q) is at row
            i + p, column j + q, channels [(2p + q)·C, (2p + q + 1)·C).

    Returns:
        (B, C, 2H, 2W), channels_last.
    """
    b, c4, h1, w1 = phases.shape
    c, h, w = c4 // 4, h1 - 1, w1 - 1
    out = torch.empty((b, c, 2 * h, 2 * w), dtype=phases.dtype, device=phases.device,
                      memory_format=torch.channels_last)  # fmt: skip
    # in NHWC storage the source offset of out[b, 2i + p, 2j + q, ch] is linear in (i, p, j, q, ch), so one strided
    # view covers the four phases and one copy interleaves them
    s_b, _, s_h, s_w = phases.stride()  # channels_last: s_w = 4C, s_h = (W + 1)·4C
    src = phases.as_strided((b, h, 2, w, 2, c), (s_b, s_h, s_h + 2 * c, s_w, s_w + c, 1))
    out.permute(0, 2, 3, 1).view(b, h, 2, w, 2, c).copy_(src)
    return out


class UpsampleConv:
    """Nearest x2 upsampling followed by a 3x3 convolution (padding 1), without the upsampled tensor.

    The four output phases are 2x2 kernels (:func:`upsample_conv_weight`), run as one 2x2 convolution with
    4·C_out channels and padding 1; one strided copy interleaves them (:func:`interleave_phases`). That is
    16/36 of the multiply-adds, and the 4x larger upsampled input is never written or read.
    """

    def __init__(self, conv: Any, dtype: torch.dtype) -> None:
        # the combined taps are summed in float32 and rounded once; kept in bfloat16 (as packed, 16/9 of the size)
        weight = upsample_conv_weight(conv.weight.detach().float()).to(dtype)
        bias = None if conv.bias is None else conv.bias.detach().float().repeat(4)
        self.conv = PackedConv(None, dtype, weight=weight, bias=bias, padding=1, stride=1)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return interleave_phases(self.conv(x))


def _group_norm(
    x: torch.Tensor,
    norm: Any,
    *,
    act: bool,
    weight: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    # bfloat16 input, float32 affine: statistics and normalisation in float32, one rounding (as GroupNorm32)
    y = F.group_norm(x, norm.num_groups, norm.weight if weight is None else weight,
                     norm.bias if bias is None else bias, norm.eps)  # fmt: skip
    return F.silu(y, inplace=True) if act else y


def _attention(qkv: torch.Tensor, heads: int, order: str) -> torch.Tensor:
    """Self-attention over the pixels of a channels_last ``qkv`` (B, 3C, H, W); returns (B, C, H, W) channels_last.

    ``order`` is how the 3C channels are laid out: ``"qkv"`` ([q | k | v], each split into heads) or ``"legacy"``
    (guided-diffusion's legacy order: heads outermost, [q | k | v] inside each head).
    """
    b, c3, h, w = qkv.shape
    c = c3 // 3
    ch = c // heads
    rows = qkv.permute(0, 2, 3, 1).reshape(b, h * w, c3)  # a view: channels_last storage is (B, HW, 3C)
    if order == "legacy":
        per_head = rows.view(b, h * w, heads, 3 * ch)
        q, k, v = (per_head[..., i * ch : (i + 1) * ch].transpose(1, 2) for i in range(3))
    else:
        q, k, v = (rows[..., i * c : (i + 1) * c].view(b, h * w, heads, ch).transpose(1, 2) for i in range(3))
    out = F.scaled_dot_product_attention(q, k, v)  # (B, heads, HW, ch); default scale 1/√ch
    return out.transpose(1, 2).reshape(b, h, w, c).permute(0, 3, 1, 2)


# ---------------------------------------------------------------------------------------------- the network


class _Linears:
    """Several linear layers on the same input as one matrix product; returns one (B, C_i, 1, 1) tensor each."""

    def __init__(self, layers: list[Any], dtype: torch.dtype) -> None:
        self.sizes = [int(layer.out_features) for layer in layers]
        self.weight = torch.cat([layer.weight.detach() for layer in layers]).to(dtype) if layers else None
        self.bias = torch.cat([layer.bias.detach() for layer in layers]).to(dtype) if layers else None

    def __call__(self, x: torch.Tensor) -> list[torch.Tensor]:
        if self.weight is None:
            return []
        out = F.linear(x, self.weight, self.bias)
        return [part[:, :, None, None].contiguous() for part in out.split(self.sizes, dim=1)]


class FusedUNet(nn.Module):
    """The fused bfloat16 inference forward of a DDPM or ADM UNet (see the module docstring).

    Built from a :class:`~dclip_cli.models.DiffusionModel` or a raw UNet, it holds its own low-precision copy of
    the weights (like autocast's casts, but once) and returns what the model returns: ε for a ``DiffusionModel``
    (learned-sigma channels dropped), the raw output for a UNet; in bfloat16, channels_last.
    """

    def __init__(self, model: nn.Module, dtype: torch.dtype = torch.bfloat16) -> None:
        super().__init__()
        unet = model.unet if isinstance(model, DiffusionModel) else model
        self.drop_sigma = isinstance(model, DiffusionModel) and model.learn_sigma
        self.dtype = dtype
        self.arch = "ddpm" if isinstance(unet, DDPMUNet) else "adm"
        # the network's configuration and float32 norms (not a submodule: parameters are not listed twice)
        self.__dict__["_unet"] = unet
        self._plans: dict[int, Any] = {}
        self._temb: Callable[[torch.Tensor], list[torch.Tensor]]
        if isinstance(unet, DDPMUNet):
            self._build_ddpm(unet)
        elif isinstance(unet, adm.ADMUNet):
            self._build_adm(unet)
        else:
            raise TypeError(f"No fused path for {type(unet).__name__}.")

    # -- building ------------------------------------------------------------------------------------------------

    def _conv(self, conv: Any) -> PackedConv:
        packed = PackedConv(conv, self.dtype)
        self._plans[id(conv)] = packed
        return packed

    def _up_conv(self, conv: Any) -> UpsampleConv:
        up = UpsampleConv(conv, self.dtype)
        self._plans[id(conv)] = up
        return up

    def _qkv(self, block: Any) -> PackedConv:
        weight = torch.cat([block.q.weight, block.k.weight, block.v.weight]).detach().to(self.dtype)
        bias = torch.cat([block.q.bias, block.k.bias, block.v.bias]).detach()
        packed = PackedConv(None, self.dtype, weight=weight, bias=bias)
        self._plans[id(block)] = packed
        return packed

    def _build_ddpm(self, unet: Any) -> None:
        blocks: list[Any] = []
        for module in unet.modules():
            if isinstance(module, nn.Conv2d):
                self._conv(module)
            elif isinstance(module, ResnetBlock):
                blocks.append(module)
            elif isinstance(module, AttnBlock):
                self._qkv(module)
        for level in unet._ups:
            up = level.resample
            if up is not None and getattr(up, "with_conv", False):
                self._up_conv(up.conv)
        self._temb_order = {id(block): i for i, block in enumerate(blocks)}
        self._temb = _Linears([block.temb_proj for block in blocks], self.dtype)
        dense = unet.temb.dense
        self._dense = [(d.weight.detach().to(self.dtype), d.bias.detach().to(self.dtype)) for d in dense]

    def _build_adm(self, unet: Any) -> None:
        blocks: list[Any] = []
        for module in unet.modules():
            if isinstance(module, (nn.Conv2d, nn.Conv1d)):
                self._conv(module)
            elif isinstance(module, adm.ResBlock):
                blocks.append(module)
        for module in unet.modules():
            if isinstance(module, adm.ResBlock) and isinstance(module.h_upd, adm.Upsample):
                self._up_conv(module.in_layers[-1])
            elif isinstance(module, adm.Upsample) and module.use_conv:
                self._up_conv(module.conv)
        self._temb_order = {id(block): i for i, block in enumerate(blocks)}
        self._temb = _Linears([block.emb_layers[1] for block in blocks], self.dtype)
        lin = [unet.time_embed[0], unet.time_embed[2]]
        self._dense = [(d.weight.detach().to(self.dtype), d.bias.detach().to(self.dtype)) for d in lin]
        if self.drop_sigma:  # the learned-variance channels would be dropped: do not compute them
            out = unet.out[2]
            half = out.out_channels // 2
            self._plans[id(out)] = PackedConv(out, self.dtype, weight=out.weight[:half], bias=out.bias[:half])

    # -- running ---------------------------------------------------------------------------------------------------

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Predict ε (or the raw output) for float32 ``x`` (B, C, H, W) and ``t`` (B,); bfloat16 channels_last."""
        unet = self.__dict__["_unet"]
        levels = unet.num_resolutions if self.arch == "ddpm" else unet.num_levels
        if x.ndim != 4 or x.shape[2] != x.shape[3] or x.shape[2] % 2 ** (levels - 1):
            return unet(x, t)  # type: ignore[no-any-return]  # the model raises its own error
        with torch.autocast(x.device.type, enabled=False):
            h = x.to(self.dtype).contiguous(memory_format=torch.channels_last)
            out = self._ddpm(unet, h, t) if self.arch == "ddpm" else self._adm(unet, h, t)
        return out

    def _mlp(self, emb: torch.Tensor) -> torch.Tensor:
        (w0, b0), (w1, b1) = self._dense
        return F.linear(F.silu(F.linear(emb.to(self.dtype), w0, b0)), w1, b1)

    # DDPM ----------------------------------------------------------------------------------------------------------

    def _ddpm(self, unet: Any, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        temb = self._mlp(timestep_embedding_ddpm(t, unet.ch))
        tembs = self._temb(F.silu(temb))
        plans = self._plans

        def resblock(block: Any, x: torch.Tensor) -> torch.Tensor:
            h = _group_norm(x, block.norm1, act=True)
            h = plans[id(block.conv1)](h, add=tembs[self._temb_order[id(block)]])
            h = _group_norm(h, block.norm2, act=True)  # dropout is inactive (see fused_path_applies)
            shortcut = plans[id(block.nin_shortcut)](x) if block.in_channels != block.out_channels else x
            return plans[id(block.conv2)](h, add=shortcut)  # type: ignore[no-any-return]

        def attn(block: Any, x: torch.Tensor) -> torch.Tensor:
            qkv = plans[id(block)](_group_norm(x, block.norm, act=False))
            return plans[id(block.proj_out)](_attention(qkv, 1, "qkv"), add=x)  # type: ignore[no-any-return]

        hs = [plans[id(unet.conv_in)](x)]
        for level in unet._downs:
            for i_block in range(unet.num_res_blocks):
                h = resblock(level.block[i_block], hs[-1])
                if len(level.attn) > 0:
                    h = attn(level.attn[i_block], h)
                hs.append(h)
            down = level.resample
            if down is not None:
                if down.with_conv:
                    hs.append(plans[id(down.conv)](F.pad(hs[-1], (0, 1, 0, 1), mode="constant", value=0.0)))
                else:
                    hs.append(F.avg_pool2d(hs[-1], kernel_size=2, stride=2))
        h = resblock(unet.mid.block_1, hs[-1])
        h = attn(unet.mid.attn_1, h)
        h = resblock(unet.mid.block_2, h)
        for i_level in reversed(range(unet.num_resolutions)):
            level = unet._ups[i_level]
            for i_block in range(unet.num_res_blocks + 1):
                h = resblock(level.block[i_block], torch.cat([h, hs.pop()], dim=1))
                if len(level.attn) > 0:
                    h = attn(level.attn[i_block], h)
            up = level.resample
            if up is not None and up.with_conv:
                h = plans[id(up.conv)](h)  # UpsampleConv: nearest x2 and the convolution in one
            elif up is not None:
                h = F.interpolate(h, scale_factor=2.0, mode="nearest")
        h = _group_norm(h, unet.norm_out, act=True)
        return plans[id(unet.conv_out)](h)  # type: ignore[no-any-return]

    # ADM -------------------------------------------------------------------------------------------------------------

    def _adm(self, unet: Any, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        emb = self._mlp(adm.timestep_embedding_adm(t, unet.model_channels))
        embs = self._temb(F.silu(emb))
        plans = self._plans

        def resblock(block: Any, x: torch.Tensor) -> torch.Tensor:
            norm_in, conv_in = block.in_layers[0], block.in_layers[-1]
            h = _group_norm(x, norm_in, act=True)
            if isinstance(block.h_upd, adm.Upsample):
                h = plans[id(conv_in)](h)  # UpsampleConv: nearest x2 + conv in one
                x = F.interpolate(x, scale_factor=2, mode="nearest")
            else:
                if isinstance(block.h_upd, adm.Downsample):
                    h, x = block.h_upd(h), block.x_upd(x)
                h = plans[id(conv_in)](h)
            emb_out = embs[self._temb_order[id(block)]]  # (B, C or 2C, 1, 1)
            norm_out, conv_out = block.out_layers[0], block.out_layers[3]
            if block.use_scale_shift_norm:
                scale, shift = emb_out.float().flatten(1).chunk(2, dim=1)  # (B, C) each
                if scale.shape[0] == 1 or bool((scale == scale[:1]).all() and (shift == shift[:1]).all()):
                    # GN(h)·(1 + s) + b = (h - μ)/σ · γ(1 + s) + β(1 + s) + b: one affine, one rounding
                    gain = norm_out.weight * (1 + scale[0])
                    offset = norm_out.bias * (1 + scale[0]) + shift[0]
                    h = _group_norm(h, norm_out, act=True, weight=gain, bias=offset)
                else:  # samples at different timesteps: the unfused form
                    h = _group_norm(h, norm_out, act=False)
                    scale, shift = (v[:, :, None, None].to(h.dtype) for v in (scale, shift))
                    h = F.silu(h * (1 + scale) + shift)
            else:
                h = _group_norm(h + emb_out, norm_out, act=True)
            identity = isinstance(block.skip_connection, nn.Identity)
            skip = x if identity else plans[id(block.skip_connection)](x)
            return plans[id(conv_out)](h, add=skip)  # type: ignore[no-any-return]

        def attn(block: Any, x: torch.Tensor) -> torch.Tensor:
            qkv = plans[id(block.qkv)](_group_norm(x, block.norm, act=False))
            out = _attention(qkv, block.num_heads, "legacy" if block.legacy else "qkv")
            return plans[id(block.proj_out)](out, add=x)  # type: ignore[no-any-return]

        def run(seq: Any, h: torch.Tensor) -> torch.Tensor:
            for layer in seq:
                if isinstance(layer, adm.ResBlock):
                    h = resblock(layer, h)
                elif isinstance(layer, adm.AttentionBlock):
                    h = attn(layer, h)
                elif isinstance(layer, nn.Conv2d):
                    h = plans[id(layer)](h)
                elif isinstance(layer, adm.Upsample) and layer.use_conv:
                    h = plans[id(layer.conv)](h)  # UpsampleConv
                elif isinstance(layer, adm.Upsample):
                    h = F.interpolate(h, scale_factor=2, mode="nearest")
                elif isinstance(layer, adm.Downsample):
                    h = plans[id(layer.op)](h) if layer.use_conv else layer.op(h)
                else:
                    raise TypeError(f"No fused path for {type(layer).__name__}.")
            return h

        hs = []
        h = x
        for module in unet.input_blocks:
            h = run(module, h)
            hs.append(h)
        h = run(unet.middle_block, h)
        for module in unet.output_blocks:
            h = run(module, torch.cat([h, hs.pop()], dim=1))
        h = _group_norm(h, unet.out[0], act=True)
        return plans[id(unet.out[2])](h)  # type: ignore[no-any-return]


def fused_path_applies(model: Any, dtype: torch.dtype | None) -> bool:
    """Whether :func:`build_fused` would build a fused path for ``model`` in ``dtype``.

    True for a :class:`~dclip_cli.models.DiffusionModel` (or a raw UNet) of either architecture with its weights on
    the CPU, in bfloat16, when :func:`cpu_fusion_supported`, and when dropout is inactive (eval mode or p = 0).
    """
    unet = model.unet if isinstance(model, DiffusionModel) else model
    if dtype is not torch.bfloat16 or not isinstance(unet, (DDPMUNet, adm.ADMUNet)):
        return False
    param = next(unet.parameters(), None)
    if param is None or param.device.type != "cpu" or param.dtype is not torch.float32:
        return False
    if unet.training and any(isinstance(m, nn.Dropout) and m.p > 0 for m in unet.modules()):
        return False
    return cpu_fusion_supported(dtype)


def build_fused(model: Any, dtype: torch.dtype | None) -> FusedUNet | None:
    """A :class:`FusedUNet` for ``model``, or ``None`` where the fused path does not apply (see
    :func:`fused_path_applies`)."""
    if not fused_path_applies(model, dtype):
        return None
    return FusedUNet(model, torch.bfloat16)
