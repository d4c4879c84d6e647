"""The DDPM UNet of Ho et al. as ported by ermongroup/ddim and SDEdit (used by DiffusionCLIP).

Module names and the state-dict key layout are those of the original ``Model`` (``statedict-keys.txt`` section
A), so the official CelebA-HQ, LSUN church and LSUN bedroom checkpoints load strictly. Hyper-parameters use the
names of the ddim/SDEdit YAML ``model:`` block.

Differences from the ADM UNet that matter for parity (reference section 13.5): sin-first timestep embedding with a
``half - 1`` frequency denominator, GroupNorm eps 1e-6, additive timestep projection, single-head attention.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from dclip_cli.errors import ConfigError
from dclip_cli.models.configs import DDPM_256_CONFIG

_KNOWN_KEYS = set(DDPM_256_CONFIG) | {"type", "var_type", "ema_rate", "ema"}


def normalize_ddpm_config(config: Mapping[str, Any] | None) -> dict[str, Any]:
    """Merge ``config`` over :data:`DDPM_256_CONFIG` and validate it (ddim YAML names; unused YAML keys ignored).

    Raises:
        ConfigError: an unknown key or an inconsistent value.
    """
    cfg = dict(DDPM_256_CONFIG)
    for key, value in (config or {}).items():
        if key not in _KNOWN_KEYS:
            raise ConfigError(
                f"Unknown DDPM architecture setting {key!r}.",
                hint="Use the ddim YAML model: names: " + ", ".join(sorted(DDPM_256_CONFIG)) + ".",
            )
        if key in DDPM_256_CONFIG:
            cfg[key] = value
    try:
        cfg["ch_mult"] = [int(m) for m in cfg["ch_mult"]]
        cfg["attn_resolutions"] = [int(r) for r in cfg["attn_resolutions"]]
        for key in ("resolution", "in_channels", "out_ch", "ch", "num_res_blocks"):
            cfg[key] = int(cfg[key])
        cfg["dropout"] = float(cfg["dropout"])
        cfg["resamp_with_conv"] = bool(cfg["resamp_with_conv"])
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"Invalid DDPM architecture setting: {exc}.") from exc
    problems = []
    if cfg["ch"] <= 0 or cfg["ch"] % 32:
        problems.append(f"ch = {cfg['ch']} must be a positive multiple of 32 (GroupNorm uses 32 groups)")
    if not cfg["ch_mult"] or any(m <= 0 for m in cfg["ch_mult"]):
        problems.append(f"ch_mult = {cfg['ch_mult']} must be a non-empty list of positive integers")
    if cfg["num_res_blocks"] < 1:
        problems.append(f"num_res_blocks = {cfg['num_res_blocks']} must be at least 1")
    down = 2 ** (len(cfg["ch_mult"]) - 1)
    if cfg["resolution"] <= 0 or cfg["resolution"] % down:
        problems.append(f"resolution = {cfg['resolution']} must be a positive multiple of {down}")
    if problems:
        raise ConfigError("Invalid DDPM architecture: " + "; ".join(problems) + ".")
    return cfg


def timestep_embedding_ddpm(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal embedding of the DDPM UNet: [sin, cos] with frequencies exp(-k·ln(10⁴)/(half - 1)).

    Args:
        t: (B,) timesteps (any dtype, used as float32).
        dim: embedding width.

    Returns:
        (B, dim) float32.
    """
    half = dim // 2
    freqs = torch.exp(torch.arange(half, dtype=torch.float32) * -(math.log(10000) / (half - 1)))
    args = t.float()[:, None] * freqs.to(t.device)[None, :]
    emb = torch.cat([torch.sin(args), torch.cos(args)], dim=1)
    if dim % 2 == 1:
        emb = F.pad(emb, (0, 1, 0, 0))
    return emb


def _swish(x: torch.Tensor) -> torch.Tensor:
    # float32 keeps the original's x·σ(x) for bit-level parity (F.silu rounds differently in the last ulp);
    # low-precision activations (autocast) take the fused kernel, about 9% of a bf16 CPU forward.
    if x.dtype == torch.float32:
        return x * torch.sigmoid(x)
    return F.silu(x)


def _norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(num_groups=32, num_channels=channels, eps=1e-6, affine=True)


class Upsample(nn.Module):
    """Nearest ×2, then (optionally) a 3×3 convolution."""

    def __init__(self, channels: int, with_conv: bool) -> None:
        super().__init__()
        self.with_conv = with_conv
        if with_conv:
            self.conv = nn.Conv2d(channels, channels, 3, stride=1, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        return self.conv(x) if self.with_conv else x


class Downsample(nn.Module):
    """Asymmetric zero pad (right, bottom) + 3×3 stride-2 convolution, or 2×2 average pooling."""

    def __init__(self, channels: int, with_conv: bool) -> None:
        super().__init__()
        self.with_conv = with_conv
        if with_conv:
            self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.with_conv:
            return self.conv(F.pad(x, (0, 1, 0, 1), mode="constant", value=0.0))
        return F.avg_pool2d(x, kernel_size=2, stride=2)


class ResnetBlock(nn.Module):
    """conv(swish(norm(x))) + temb projection, then conv(dropout(swish(norm(h)))), plus a (1×1) shortcut."""

    def __init__(self, in_channels: int, out_channels: int, temb_channels: int, dropout: float) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.norm1 = _norm(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=1, padding=1)
        self.temb_proj = nn.Linear(temb_channels, out_channels)
        self.norm2 = _norm(out_channels)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, stride=1, padding=1)
        if in_channels != out_channels:
            self.nin_shortcut = nn.Conv2d(in_channels, out_channels, 1, stride=1, padding=0)

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(_swish(self.norm1(x)))
        h = h + self.temb_proj(_swish(temb))[:, :, None, None]
        h = self.conv2(self.dropout(_swish(self.norm2(h))))
        if self.in_channels != self.out_channels:
            x = self.nin_shortcut(x)
        return x + h


def ddpm_attention_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """The original's explicit single-head attention on (B, C, H, W) q, k, v: softmax_j(q_i·k_j/√C)·v_j."""
    b, c, h, w = q.shape
    q_ = q.reshape(b, c, h * w).permute(0, 2, 1)  # (B, HW, C)
    k_ = k.reshape(b, c, h * w)  # (B, C, HW)
    weights = torch.bmm(q_, k_) * (int(c) ** (-0.5))  # (B, HW_i, HW_j)
    weights = F.softmax(weights, dim=2)
    v_ = v.reshape(b, c, h * w)
    out = torch.bmm(v_, weights.permute(0, 2, 1))  # (B, C, HW_i)
    return out.reshape(b, c, h, w)


class AttnBlock(nn.Module):
    """Single-head spatial self-attention with 1×1 conv q, k, v and ``proj_out``, plus the residual."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.norm = _norm(channels)
        self.q = nn.Conv2d(channels, channels, 1)
        self.k = nn.Conv2d(channels, channels, 1)
        self.v = nn.Conv2d(channels, channels, 1)
        self.proj_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm(x)
        q, k, v = self.q(h), self.k(h), self.v(h)
        b, c, hh, ww = q.shape
        # (B, 1, HW, C) per tensor; SDPA's default scale 1/√C is the original's C^-½
        q_, k_, v_ = (z.reshape(b, 1, c, hh * ww).transpose(2, 3) for z in (q, k, v))
        out = F.scaled_dot_product_attention(q_, k_, v_)
        out = out.transpose(2, 3).reshape(b, c, hh, ww)
        return x + self.proj_out(out)


class _Level(nn.Module):
    """One resolution level: ``block`` and ``attn`` lists, plus ``downsample`` or ``upsample`` when present."""

    def __init__(self, block: nn.ModuleList, attn: nn.ModuleList) -> None:
        super().__init__()
        self.block = block
        self.attn = attn

    @property
    def resample(self) -> nn.Module | None:
        """The level's ``downsample`` or ``upsample`` module, if it has one."""
        return self._modules.get("downsample") or self._modules.get("upsample")


class _Temb(nn.Module):
    def __init__(self, ch: int, temb_ch: int) -> None:
        super().__init__()
        self.dense = nn.ModuleList([nn.Linear(ch, temb_ch), nn.Linear(temb_ch, temb_ch)])


class _Mid(nn.Module):
    def __init__(self, channels: int, temb_ch: int, dropout: float) -> None:
        super().__init__()
        self.block_1 = ResnetBlock(channels, channels, temb_ch, dropout)
        self.attn_1 = AttnBlock(channels)
        self.block_2 = ResnetBlock(channels, channels, temb_ch, dropout)


class DDPMUNet(nn.Module):
    """The ermongroup/SDEdit ``Model``: ``forward(x, t) -> eps`` with ``out_ch`` channels.

    Args:
        config: ddim YAML ``model:`` settings (merged over :data:`DDPM_256_CONFIG`).
    """

    def __init__(self, config: Mapping[str, Any] | None = None) -> None:
        super().__init__()
        cfg = normalize_ddpm_config(config)
        self.config = cfg
        ch, ch_mult = cfg["ch"], tuple(cfg["ch_mult"])
        num_res_blocks, dropout = cfg["num_res_blocks"], cfg["dropout"]
        resamp_with_conv, attn_resolutions = cfg["resamp_with_conv"], set(cfg["attn_resolutions"])
        self.ch = ch
        self.temb_ch = ch * 4
        self.num_resolutions = len(ch_mult)
        self.num_res_blocks = num_res_blocks
        self.resolution = cfg["resolution"]
        self.in_channels = cfg["in_channels"]
        self.gradient_checkpointing = False

        self.temb = _Temb(ch, self.temb_ch)

        self.conv_in = nn.Conv2d(cfg["in_channels"], ch, 3, stride=1, padding=1)
        curr_res = self.resolution
        in_ch_mult = (1, *ch_mult)
        self.down = nn.ModuleList()
        block_in = ch
        for i_level in range(self.num_resolutions):
            block, attn = nn.ModuleList(), nn.ModuleList()
            block_in = ch * in_ch_mult[i_level]
            block_out = ch * ch_mult[i_level]
            for _ in range(num_res_blocks):
                block.append(ResnetBlock(block_in, block_out, self.temb_ch, dropout))
                block_in = block_out
                if curr_res in attn_resolutions:
                    attn.append(AttnBlock(block_in))
            down = _Level(block, attn)
            if i_level != self.num_resolutions - 1:
                down.downsample = Downsample(block_in, resamp_with_conv)
                curr_res //= 2
            self.down.append(down)

        self.mid = _Mid(block_in, self.temb_ch, dropout)

        ups: list[_Level] = []
        for i_level in reversed(range(self.num_resolutions)):
            block, attn = nn.ModuleList(), nn.ModuleList()
            block_out = ch * ch_mult[i_level]
            skip_in = ch * ch_mult[i_level]
            for i_block in range(num_res_blocks + 1):
                if i_block == num_res_blocks:
                    skip_in = ch * in_ch_mult[i_level]
                block.append(ResnetBlock(block_in + skip_in, block_out, self.temb_ch, dropout))
                block_in = block_out
                if curr_res in attn_resolutions:
                    attn.append(AttnBlock(block_in))
            up = _Level(block, attn)
            if i_level != 0:
                up.upsample = Upsample(block_in, resamp_with_conv)
                curr_res *= 2
            ups.insert(0, up)  # up.0 is the highest resolution, as in the original
        self.up = nn.ModuleList(ups)
        self._downs: list[_Level] = [m for m in self.down if isinstance(m, _Level)]
        self._ups: list[_Level] = ups

        self.norm_out = _norm(block_in)
        self.conv_out = nn.Conv2d(block_in, cfg["out_ch"], 3, stride=1, padding=1)

    def set_gradient_checkpointing(self, enabled: bool = True) -> None:
        """Recompute residual and attention blocks in the backward pass to save activation memory."""
        self.gradient_checkpointing = bool(enabled)

    def _run(self, module: nn.Module, *args: torch.Tensor) -> torch.Tensor:
        if self.gradient_checkpointing and torch.is_grad_enabled():
            return checkpoint(module, *args, use_reentrant=False)  # type: ignore[no-any-return]
        return module(*args)  # type: ignore[no-any-return]

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Predict the noise.

        Args:
            x: (B, in_channels, H, W) with H = W divisible by 2**(len(ch_mult) - 1).
            t: (B,) timesteps.

        Returns:
            (B, out_ch, H, W).
        """
        down_factor = 2 ** (self.num_resolutions - 1)
        if x.ndim != 4 or x.shape[2] != x.shape[3] or x.shape[2] % down_factor:
            raise ConfigError(
                f"The DDPM UNet needs square (B, C, S, S) inputs with S divisible by {down_factor}, "
                f"got {tuple(x.shape)}.",
                hint=f"Resize images to {self.resolution}x{self.resolution}.",
            )
        temb = timestep_embedding_ddpm(t, self.ch)
        temb = self.temb.dense[1](_swish(self.temb.dense[0](temb)))

        hs = [self.conv_in(x)]
        for i_level in range(self.num_resolutions):
            level = self._downs[i_level]
            for i_block in range(self.num_res_blocks):
                h = self._run(level.block[i_block], hs[-1], temb)
                if len(level.attn) > 0:
                    h = self._run(level.attn[i_block], h)
                hs.append(h)
            if level.resample is not None:
                hs.append(level.resample(hs[-1]))

        h = hs[-1]
        h = self._run(self.mid.block_1, h, temb)
        h = self._run(self.mid.attn_1, h)
        h = self._run(self.mid.block_2, h, temb)

        for i_level in reversed(range(self.num_resolutions)):
            level = self._ups[i_level]
            for i_block in range(self.num_res_blocks + 1):
                h = self._run(level.block[i_block], torch.cat([h, hs.pop()], dim=1), temb)
                if len(level.attn) > 0:
                    h = self._run(level.attn[i_block], h)
            if level.resample is not None:
                h = level.resample(h)

        return self.conv_out(_swish(self.norm_out(h)))
