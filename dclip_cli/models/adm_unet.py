"""The guided-diffusion ADM UNet (``UNetModel``) as used by DiffusionCLIP for AFHQ-dog, FFHQ and ImageNet 512.

Module names and the state-dict key layout are guided-diffusion's (``statedict-keys.txt`` sections B and C), so
the official checkpoints load strictly. Hyper-parameters use the names of guided-diffusion's ``create_model``.

Kept from DiffusionCLIP (reference sections 13.2 and 21.1-14): the class-label embedding of class-conditional
checkpoints is created (so its weights load) but never used; the network runs unconditionally. The attention uses
the legacy QKV split unless ``use_new_attention_order`` is set. Differences from the DDPM UNet: cos-first timestep
embedding with a ``half`` frequency denominator, GroupNorm eps 1e-5 computed in float32, scale-shift conditioning,
multi-head attention with 64 channels per head, parameter-free resampling inside ResBlocks.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from dclip_cli.errors import ConfigError
from dclip_cli.models.configs import ADM_AFHQ_CONFIG

# guided-diffusion's create_model defaults for channel_mult="" by image size
_DEFAULT_CHANNEL_MULT = {
    512: [0.5, 1, 1, 2, 2, 4, 4],
    256: [1, 1, 2, 2, 4, 4],
    128: [1, 1, 2, 3, 4],
    64: [1, 2, 3, 4],
}


def _parse_int_list(value: Any, name: str) -> list[int]:
    if isinstance(value, str):
        return [int(v) for v in value.split(",") if v.strip()]
    if isinstance(value, int):
        return [value]
    return [int(v) for v in value]


def normalize_adm_config(config: Mapping[str, Any] | None) -> dict[str, Any]:
    """Merge ``config`` over :data:`ADM_AFHQ_CONFIG` and validate it.

    Accepts guided-diffusion's spellings: ``channel_mult`` as ``""`` (size default), ``"1,1,2,2,4,4"`` or a list,
    ``attention_resolutions`` as ``"32,16,8"`` or a list of resolutions. ``model_channels`` is accepted for
    ``num_channels`` and ``out_channels`` is derived from ``learn_sigma``.

    Raises:
        ConfigError: an unknown key or an inconsistent value.
    """
    cfg = dict(ADM_AFHQ_CONFIG)
    for key, value in (config or {}).items():
        if key == "model_channels":
            key = "num_channels"
        if key not in ADM_AFHQ_CONFIG:
            raise ConfigError(
                f"Unknown ADM architecture setting {key!r}.",
                hint="Use guided-diffusion's create_model names: " + ", ".join(sorted(ADM_AFHQ_CONFIG)) + ".",
            )
        cfg[key] = value
    try:
        cfg["image_size"] = int(cfg["image_size"])
        mult = cfg["channel_mult"]
        if mult in ("", None):
            if cfg["image_size"] not in _DEFAULT_CHANNEL_MULT:
                raise ConfigError(
                    f"No default channel_mult for image_size {cfg['image_size']}.",
                    hint="Give channel_mult explicitly, e.g. [1, 1, 2, 2, 4, 4].",
                )
            mult = _DEFAULT_CHANNEL_MULT[cfg["image_size"]]
        elif isinstance(mult, str):
            mult = [float(m) for m in mult.split(",")]
        cfg["channel_mult"] = [int(m) if float(m).is_integer() else float(m) for m in mult]
        cfg["attention_resolutions"] = _parse_int_list(cfg["attention_resolutions"], "attention_resolutions")
        for key in ("num_channels", "num_res_blocks", "num_heads", "num_head_channels", "num_heads_upsample"):
            cfg[key] = int(cfg[key])
        cfg["in_channels"] = int(cfg["in_channels"])
        cfg["num_classes"] = int(cfg["num_classes"])
        cfg["dropout"] = float(cfg["dropout"])
        for key in (
            "use_scale_shift_norm",
            "resblock_updown",
            "learn_sigma",
            "class_cond",
            "use_new_attention_order",
            "conv_resample",
            "use_fp16",
            "use_checkpoint",
        ):
            cfg[key] = bool(cfg[key])
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"Invalid ADM architecture setting: {exc}.") from exc
    problems = []
    mc = cfg["num_channels"]
    widths = [int(m * mc) for m in cfg["channel_mult"]]
    if mc <= 0 or any(w <= 0 or w % 32 for w in widths):
        problems.append(
            f"num_channels × channel_mult = {widths} must be positive multiples of 32 (GroupNorm uses 32 groups)"
        )
    if cfg["num_res_blocks"] < 1:
        problems.append(f"num_res_blocks = {cfg['num_res_blocks']} must be at least 1")
    down = 2 ** (len(cfg["channel_mult"]) - 1)
    if cfg["image_size"] <= 0 or cfg["image_size"] % down:
        problems.append(f"image_size = {cfg['image_size']} must be a positive multiple of {down}")
    for res in cfg["attention_resolutions"]:
        if res <= 0 or cfg["image_size"] % res:
            problems.append(f"attention resolution {res} does not divide image_size {cfg['image_size']}")
    hc = cfg["num_head_channels"]
    if hc != -1:
        attn_ds = {cfg["image_size"] // r for r in cfg["attention_resolutions"] if r > 0}
        for level, w in enumerate(widths):
            if 2**level in attn_ds and w % hc:
                problems.append(f"attention width {w} is not divisible by num_head_channels {hc}")
    if problems:
        raise ConfigError("Invalid ADM architecture: " + "; ".join(problems) + ".")
    return cfg


def timestep_embedding_adm(t: torch.Tensor, dim: int, max_period: int = 10000) -> torch.Tensor:
    """Sinusoidal embedding of the ADM UNet: [cos, sin] with frequencies exp(-ln(max_period)·k/half).

    Args:
        t: (B,) timesteps.
        dim: embedding width.

    Returns:
        (B, dim) float32.
    """
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(0, half, dtype=torch.float32) / half).to(t.device)
    args = t[:, None].float() * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb


def _zero(module: nn.Module) -> None:
    """Zero-initialise a layer (guided-diffusion's ``zero_module``)."""
    for p in module.parameters():
        nn.init.zeros_(p)


class GroupNorm32(nn.GroupNorm):
    """GroupNorm with 32 groups and eps 1e-5, computed in float32 and cast back."""

    def __init__(self, channels: int) -> None:
        super().__init__(32, channels, eps=1e-5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.float()).type(x.dtype)


class Upsample(nn.Module):
    """Nearest ×2, optionally followed by a 3×3 convolution (``conv``)."""

    def __init__(self, channels: int, use_conv: bool) -> None:
        super().__init__()
        self.use_conv = use_conv
        if use_conv:
            self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=2, mode="nearest")
        return self.conv(x) if self.use_conv else x


class Downsample(nn.Module):
    """3×3 stride-2 convolution (``op``) or 2×2 average pooling."""

    def __init__(self, channels: int, use_conv: bool) -> None:
        super().__init__()
        self.use_conv = use_conv
        self.op: nn.Module = (
            nn.Conv2d(channels, channels, 3, stride=2, padding=1) if use_conv else nn.AvgPool2d(2, 2)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x)  # type: ignore[no-any-return]


class ResBlock(nn.Module):
    """guided-diffusion residual block with optional scale-shift norm and built-in up/down resampling."""

    def __init__(
        self,
        channels: int,
        emb_channels: int,
        dropout: float,
        out_channels: int,
        *,
        use_scale_shift_norm: bool,
        up: bool = False,
        down: bool = False,
    ) -> None:
        super().__init__()
        self.use_scale_shift_norm = use_scale_shift_norm
        self.in_layers = nn.Sequential(
            GroupNorm32(channels), nn.SiLU(), nn.Conv2d(channels, out_channels, 3, padding=1)
        )
        self.updown = up or down
        self.h_upd: nn.Module
        self.x_upd: nn.Module
        if up:
            self.h_upd, self.x_upd = Upsample(channels, False), Upsample(channels, False)
        elif down:
            self.h_upd, self.x_upd = Downsample(channels, False), Downsample(channels, False)
        else:
            self.h_upd = self.x_upd = nn.Identity()
        self.emb_layers = nn.Sequential(
            nn.SiLU(), nn.Linear(emb_channels, 2 * out_channels if use_scale_shift_norm else out_channels)
        )
        self.out_layers = nn.Sequential(
            GroupNorm32(out_channels),
            nn.SiLU(),
            nn.Dropout(p=dropout),
            nn.Conv2d(out_channels, out_channels, 3, padding=1),
        )
        _zero(self.out_layers[3])
        self.skip_connection: nn.Module = (
            nn.Identity() if out_channels == channels else nn.Conv2d(channels, out_channels, 1)
        )

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        if self.updown:
            h = self.in_layers[:-1](x)
            h = self.h_upd(h)
            x = self.x_upd(x)
            h = self.in_layers[-1](h)
        else:
            h = self.in_layers(x)
        emb_out = self.emb_layers(emb).type(h.dtype)[:, :, None, None]
        if self.use_scale_shift_norm:
            scale, shift = torch.chunk(emb_out, 2, dim=1)
            h = self.out_layers[0](h) * (1 + scale) + shift
            h = self.out_layers[1:](h)
        else:
            h = self.out_layers(h + emb_out)
        return self.skip_connection(x) + h  # type: ignore[no-any-return]


def adm_attention_reference(qkv: torch.Tensor, n_heads: int, *, legacy: bool = True) -> torch.Tensor:
    """guided-diffusion's explicit QKV attention on (B, 3·H·C, T): q and k scaled by C^-¼, fp32 softmax."""
    bs, width, length = qkv.shape
    ch = width // (3 * n_heads)
    if legacy:
        q, k, v = qkv.reshape(bs * n_heads, ch * 3, length).split(ch, dim=1)
    else:
        q, k, v = (z.reshape(bs * n_heads, ch, length) for z in qkv.chunk(3, dim=1))
    scale = 1 / math.sqrt(math.sqrt(ch))
    weight = torch.einsum("bct,bcs->bts", q * scale, k * scale)
    weight = torch.softmax(weight.float(), dim=-1).type(weight.dtype)
    a = torch.einsum("bts,bcs->bct", weight, v)
    return a.reshape(bs, -1, length)


def _sdpa_qkv(qkv: torch.Tensor, n_heads: int, *, legacy: bool) -> torch.Tensor:
    """The same attention as :func:`adm_attention_reference` through ``scaled_dot_product_attention``."""
    bs, width, length = qkv.shape
    ch = width // (3 * n_heads)
    if legacy:
        # legacy order: heads outermost, then [q | k | v] per head
        q, k, v = qkv.reshape(bs, n_heads, ch * 3, length).split(ch, dim=2)
    else:
        q, k, v = (z.reshape(bs, n_heads, ch, length) for z in qkv.chunk(3, dim=1))
    # (B, heads, T, C); SDPA's default scale 1/√C equals the two C^-¼ factors
    out = F.scaled_dot_product_attention(q.transpose(2, 3), k.transpose(2, 3), v.transpose(2, 3))
    return out.transpose(2, 3).reshape(bs, n_heads * ch, length)


class AttentionBlock(nn.Module):
    """Multi-head spatial self-attention: GroupNorm, conv1d ``qkv``, attention, conv1d ``proj_out``, residual."""

    def __init__(
        self, channels: int, *, num_heads: int = 1, num_head_channels: int = -1, use_new_attention_order: bool
    ) -> None:
        super().__init__()
        if num_head_channels == -1:
            self.num_heads = num_heads
        else:
            if channels % num_head_channels:
                raise ConfigError(
                    f"Attention width {channels} is not divisible by num_head_channels {num_head_channels}."
                )
            self.num_heads = channels // num_head_channels
        self.legacy = not use_new_attention_order
        self.norm = GroupNorm32(channels)
        self.qkv = nn.Conv1d(channels, channels * 3, 1)
        self.proj_out = nn.Conv1d(channels, channels, 1)
        _zero(self.proj_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, *spatial = x.shape
        x = x.reshape(b, c, -1)
        qkv = self.qkv(self.norm(x))
        h = _sdpa_qkv(qkv, self.num_heads, legacy=self.legacy)
        h = self.proj_out(h)
        return (x + h).reshape(b, c, *spatial)


class TimestepEmbedSequential(nn.Sequential):
    """A sequential container that passes the timestep embedding to the ResBlocks inside it."""

    def forward(self, x: torch.Tensor, emb: torch.Tensor, run: Any = None) -> torch.Tensor:  # type: ignore[override]
        for layer in self:
            args = (x, emb) if isinstance(layer, ResBlock) else (x,)
            x = run(layer, *args) if run is not None else layer(*args)
        return x


class ADMUNet(nn.Module):
    """guided-diffusion ``UNetModel``: ``forward(x, t) -> (B, out_channels, H, W)`` (ε and, with learned sigma,
    the variance coefficient).

    Args:
        config: ``create_model`` arguments (merged over :data:`ADM_AFHQ_CONFIG`).
    """

    def __init__(self, config: Mapping[str, Any] | None = None) -> None:
        super().__init__()
        cfg = normalize_adm_config(config)
        self.config = cfg
        mc = cfg["num_channels"]
        channel_mult: Sequence[float] = cfg["channel_mult"]
        num_res_blocks, dropout = cfg["num_res_blocks"], cfg["dropout"]
        attention_ds = {cfg["image_size"] // r for r in cfg["attention_resolutions"]}
        num_heads = cfg["num_heads"]
        num_heads_upsample = num_heads if cfg["num_heads_upsample"] == -1 else cfg["num_heads_upsample"]
        hc, new_order = cfg["num_head_channels"], cfg["use_new_attention_order"]
        ssn, updown, conv_resample = cfg["use_scale_shift_norm"], cfg["resblock_updown"], cfg["conv_resample"]
        self.model_channels = mc
        self.image_size = cfg["image_size"]
        self.in_channels = cfg["in_channels"]
        self.out_channels = cfg["in_channels"] * (2 if cfg["learn_sigma"] else 1)
        self.num_levels = len(channel_mult)
        self.gradient_checkpointing = cfg["use_checkpoint"]

        ted = mc * 4
        self.time_embed = nn.Sequential(nn.Linear(mc, ted), nn.SiLU(), nn.Linear(ted, ted))
        if cfg["class_cond"]:
            # loaded but unused: DiffusionCLIP runs the class-conditional ImageNet model without labels
            self.label_emb = nn.Embedding(cfg["num_classes"], ted)

        ch = input_ch = int(channel_mult[0] * mc)
        self.input_blocks = nn.ModuleList(
            [TimestepEmbedSequential(nn.Conv2d(cfg["in_channels"], ch, 3, padding=1))]
        )
        input_block_chans = [ch]
        ds = 1
        for level, mult in enumerate(channel_mult):
            for _ in range(num_res_blocks):
                layers: list[nn.Module] = [
                    ResBlock(ch, ted, dropout, int(mult * mc), use_scale_shift_norm=ssn)
                ]
                ch = int(mult * mc)
                if ds in attention_ds:
                    layers.append(
                        AttentionBlock(
                            ch, num_heads=num_heads, num_head_channels=hc, use_new_attention_order=new_order
                        )
                    )
                self.input_blocks.append(TimestepEmbedSequential(*layers))
                input_block_chans.append(ch)
            if level != len(channel_mult) - 1:
                self.input_blocks.append(
                    TimestepEmbedSequential(
                        ResBlock(ch, ted, dropout, ch, use_scale_shift_norm=ssn, down=True)
                        if updown
                        else Downsample(ch, conv_resample)
                    )
                )
                input_block_chans.append(ch)
                ds *= 2

        self.middle_block = TimestepEmbedSequential(
            ResBlock(ch, ted, dropout, ch, use_scale_shift_norm=ssn),
            AttentionBlock(ch, num_heads=num_heads, num_head_channels=hc, use_new_attention_order=new_order),
            ResBlock(ch, ted, dropout, ch, use_scale_shift_norm=ssn),
        )

        self.output_blocks = nn.ModuleList([])
        for level, mult in list(enumerate(channel_mult))[::-1]:
            for i in range(num_res_blocks + 1):
                ich = input_block_chans.pop()
                layers = [ResBlock(ch + ich, ted, dropout, int(mc * mult), use_scale_shift_norm=ssn)]
                ch = int(mc * mult)
                if ds in attention_ds:
                    layers.append(
                        AttentionBlock(
                            ch,
                            num_heads=num_heads_upsample,
                            num_head_channels=hc,
                            use_new_attention_order=new_order,
                        )
                    )
                if level and i == num_res_blocks:
                    layers.append(
                        ResBlock(ch, ted, dropout, ch, use_scale_shift_norm=ssn, up=True)
                        if updown
                        else Upsample(ch, conv_resample)
                    )
                    ds //= 2
                self.output_blocks.append(TimestepEmbedSequential(*layers))

        self.out = nn.Sequential(
            GroupNorm32(ch), nn.SiLU(), nn.Conv2d(input_ch, self.out_channels, 3, padding=1)
        )
        _zero(self.out[2])

    def set_gradient_checkpointing(self, enabled: bool = True) -> None:
        """Recompute residual and attention blocks in the backward pass to save activation memory."""
        self.gradient_checkpointing = bool(enabled)

    def _run(self, module: nn.Module, *args: torch.Tensor) -> torch.Tensor:
        if self.gradient_checkpointing and torch.is_grad_enabled():
            return checkpoint(module, *args, use_reentrant=False)  # type: ignore[no-any-return]
        return module(*args)  # type: ignore[no-any-return]

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """Run the network.

        Args:
            x: (B, in_channels, H, W) with H = W divisible by 2**(len(channel_mult) - 1).
            t: (B,) timesteps.
            y: ignored (class labels are not used, as in DiffusionCLIP).

        Returns:
            (B, out_channels, H, W): ε, followed by the variance coefficient when ``learn_sigma``.
        """
        down_factor = 2 ** (self.num_levels - 1)
        if x.ndim != 4 or x.shape[2] != x.shape[3] or x.shape[2] % down_factor:
            raise ConfigError(
                f"The ADM UNet needs square (B, C, S, S) inputs with S divisible by {down_factor}, "
                f"got {tuple(x.shape)}.",
                hint=f"Resize images to {self.image_size}x{self.image_size}.",
            )
        emb = self.time_embed(timestep_embedding_adm(t, self.model_channels))
        hs = []
        h = x
        for module in self.input_blocks:
            h = module(h, emb, self._run)
            hs.append(h)
        h = self.middle_block(h, emb, self._run)
        for module in self.output_blocks:
            h = torch.cat([h, hs.pop()], dim=1)
            h = module(h, emb, self._run)
        return self.out(h.type(x.dtype))  # type: ignore[no-any-return]
