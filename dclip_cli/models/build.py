"""Build diffusion UNets from a configuration and load checkpoints into them strictly.

The architecture is detected from the state-dict keys when not given (``temb.dense.*`` -> DDPM,
``time_embed.*`` -> ADM, diffusers ``UNet2DModel`` keys -> converted to DDPM), and the configuration is taken, in
order of precedence, from the ``config`` argument, from the file's own metadata (``arch`` / ``arch_config`` in a
``.safetensors`` header) and from the tensor shapes. A state dict that does not fit raises
:class:`~dclip_cli.errors.StateDictMismatchError` listing the missing and unexpected keys and the wrong shapes.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from fractions import Fraction
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dclip_cli.errors import ConfigError, StateDictMismatchError
from dclip_cli.models.adm_unet import ADMUNet, normalize_adm_config
from dclip_cli.models.configs import ADM_AFHQ_CONFIG, DDPM_256_CONFIG
from dclip_cli.models.ddpm_unet import DDPMUNet, normalize_ddpm_config
from dclip_cli.models.io import load_checkpoint
from dclip_cli.models.protocol import Arch, DiffusionModel

ARCHES: tuple[str, ...] = ("ddpm", "adm")
#: safetensors metadata keys that make a file self-describing
METADATA_ARCH_KEY = "arch"
METADATA_CONFIG_KEY = "arch_config"

_MAX_LISTED = 8


def _check_arch(arch: str) -> Arch:
    if arch not in ARCHES:
        raise ConfigError(f"Unknown architecture {arch!r}.", hint="Use 'ddpm' or 'adm'.")
    return arch  # type: ignore[return-value]


def normalize_config(arch: str, config: Mapping[str, Any] | None) -> dict[str, Any]:
    """Return the full, validated configuration of ``arch`` with ``config`` merged over its defaults."""
    if _check_arch(arch) == "ddpm":
        return normalize_ddpm_config(config)
    return normalize_adm_config(config)


def build_model(arch: str, config: Mapping[str, Any] | None = None) -> DiffusionModel:
    """Build a randomly initialised :class:`DiffusionModel`.

    Args:
        arch: ``"ddpm"`` (ermongroup/SDEdit UNet, ddim YAML names) or ``"adm"`` (guided-diffusion UNet,
            ``create_model`` names).
        config: architecture settings merged over the defaults (the 256 px CelebA-HQ/LSUN DDPM, or the AFHQ ADM).

    Returns:
        The model (on the current default device, in float32).
    """
    cfg = normalize_config(arch, config)
    unet: nn.Module
    if arch == "ddpm":
        unet = DDPMUNet(cfg)
        return DiffusionModel(unet, arch="ddpm", config=cfg, image_size=cfg["resolution"], learn_sigma=False)
    unet = ADMUNet(cfg)
    return DiffusionModel(
        unet, arch="adm", config=cfg, image_size=cfg["image_size"], learn_sigma=cfg["learn_sigma"]
    )


# ---------------------------------------------------------------------------------------------------------------
# architecture detection and configuration inference


def is_diffusers_unet(state_dict: Mapping[str, torch.Tensor]) -> bool:
    """Whether the keys are those of a diffusers ``UNet2DModel``."""
    return (
        "time_embedding.linear_1.weight" in state_dict
        and "down_blocks.0.resnets.0.conv1.weight" in state_dict
    )


def detect_arch(state_dict: Mapping[str, torch.Tensor]) -> Arch:
    """Return ``"ddpm"`` or ``"adm"`` from the key layout.

    Raises:
        StateDictMismatchError: the keys belong to neither architecture.
    """
    if "temb.dense.0.weight" in state_dict or any(k.startswith("down.0.block.") for k in state_dict):
        return "ddpm"
    if "time_embed.0.weight" in state_dict or any(k.startswith("input_blocks.") for k in state_dict):
        return "adm"
    sample = ", ".join(sorted(state_dict)[:5]) or "(no keys)"
    raise StateDictMismatchError(
        f"The checkpoint is neither a DDPM nor an ADM diffusion model (first keys: {sample}).",
        hint="dclip loads ermongroup/SDEdit DDPM and guided-diffusion ADM state dicts and diffusers "
        "UNet2DModel DDPM weights; check that the file is a diffusion checkpoint.",
    )


def _count(state_dict: Mapping[str, torch.Tensor], fmt: str) -> int:
    n = 0
    while any(k.startswith(fmt.format(n)) for k in state_dict):
        n += 1
    return n


def _shape(state_dict: Mapping[str, torch.Tensor], key: str) -> tuple[int, ...]:
    try:
        return tuple(state_dict[key].shape)
    except KeyError:
        raise StateDictMismatchError(
            f"The checkpoint lacks {key!r}, so its architecture cannot be inferred.",
            hint="Pass the architecture settings explicitly (--arch-config).",
        ) from None


def _ddpm_levels(state_dict: Mapping[str, torch.Tensor]) -> tuple[dict[str, Any], list[int]]:
    ch, in_channels = _shape(state_dict, "conv_in.weight")[:2]
    out_ch = _shape(state_dict, "conv_out.weight")[0]
    levels = _count(state_dict, "down.{}.block.0.")
    ch_mult = [_shape(state_dict, f"down.{i}.block.0.conv1.weight")[0] // ch for i in range(levels)]
    num_res_blocks = _count(state_dict, "down.0.block.{}.")
    attn_levels = [i for i in range(levels) if f"down.{i}.attn.0.q.weight" in state_dict]
    resamp = levels < 2 or "down.0.downsample.conv.weight" in state_dict
    cfg = {
        "in_channels": in_channels,
        "out_ch": out_ch,
        "ch": ch,
        "ch_mult": ch_mult,
        "num_res_blocks": num_res_blocks,
        "dropout": 0.0,
        "resamp_with_conv": resamp,
    }
    return cfg, attn_levels


def _ddpm_resolution_guess(ch_mult: list[int], attn_levels: list[int]) -> int:
    if ch_mult == DDPM_256_CONFIG["ch_mult"]:
        return 256
    if attn_levels:  # the released DDPMs attend at 16x16
        return 16 * 2 ** attn_levels[0]
    return 8 * 2 ** (len(ch_mult) - 1)


def _adm_levels(state_dict: Mapping[str, torch.Tensor]) -> tuple[dict[str, Any], list[int]]:
    mc = _shape(state_dict, "time_embed.0.weight")[1]
    in_channels = _shape(state_dict, "input_blocks.0.0.weight")[1]
    out_channels = _shape(state_dict, "out.2.weight")[0]
    n_out = _count(state_dict, "output_blocks.{}.")

    def has_up_layer(j: int) -> bool:
        idx = 2 if f"output_blocks.{j}.1.qkv.weight" in state_dict else 1
        return any(k.startswith(f"output_blocks.{j}.{idx}.") for k in state_dict)

    first_up = next((j for j in range(n_out) if has_up_layer(j)), None)
    num_res_blocks = first_up if first_up is not None else n_out - 1
    if num_res_blocks < 1 or n_out % (num_res_blocks + 1):
        raise StateDictMismatchError(
            "The ADM checkpoint's block layout could not be inferred.",
            hint="Pass the create_model settings explicitly (--arch-config).",
        )
    levels = n_out // (num_res_blocks + 1)
    mult: list[float] = []
    attn_levels = []
    for level in range(levels):
        first = 1 + level * (num_res_blocks + 1)
        width = _shape(state_dict, f"input_blocks.{first}.0.in_layers.2.weight")[0]
        m = Fraction(width, mc)
        mult.append(int(m) if m.denominator == 1 else float(m))
        if f"input_blocks.{first}.1.qkv.weight" in state_dict:
            attn_levels.append(level)
    down_idx = num_res_blocks + 1
    resblock_updown = levels > 1 and f"input_blocks.{down_idx}.0.in_layers.0.weight" in state_dict
    conv_resample = resblock_updown or levels < 2 or f"input_blocks.{down_idx}.0.op.weight" in state_dict
    emb_out = _shape(state_dict, "input_blocks.1.0.emb_layers.1.weight")[0]
    res_out = _shape(state_dict, "input_blocks.1.0.out_layers.0.weight")[0]
    widths = [int(m * mc) for m in mult]
    attn_widths = [widths[lv] for lv in attn_levels] + [widths[-1]]
    head_channels = 64 if all(w % 64 == 0 for w in attn_widths) else -1
    cfg: dict[str, Any] = {
        "in_channels": in_channels,
        "num_channels": mc,
        "num_res_blocks": num_res_blocks,
        "channel_mult": mult,
        "learn_sigma": out_channels == 2 * in_channels,
        "class_cond": "label_emb.weight" in state_dict,
        "use_scale_shift_norm": emb_out == 2 * res_out,
        "resblock_updown": resblock_updown,
        "conv_resample": conv_resample,
        "num_head_channels": head_channels,
        "num_heads": ADM_AFHQ_CONFIG["num_heads"] if head_channels != -1 else 1,
        "num_heads_upsample": -1,
        "dropout": 0.0,
        "use_new_attention_order": False,
    }
    if cfg["class_cond"]:
        cfg["num_classes"] = _shape(state_dict, "label_emb.weight")[0]
    if out_channels not in (in_channels, 2 * in_channels):
        raise StateDictMismatchError(
            f"The ADM checkpoint outputs {out_channels} channels for {in_channels} input channels.",
            hint="Only eps (C) and eps + learned sigma (2C) outputs are supported.",
        )
    return cfg, attn_levels


def _adm_image_size_guess(mult: list[float]) -> int:
    known = {(0.5, 1, 1, 2, 2, 4, 4): 512, (1, 1, 2, 2, 4, 4): 256, (1, 1, 2, 3, 4): 128, (1, 2, 3, 4): 64}
    return known.get(tuple(mult), 8 * 2 ** (len(mult) - 1))


def infer_config(
    arch: str, state_dict: Mapping[str, torch.Tensor], overrides: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """Infer the architecture settings of ``state_dict`` from its tensor shapes, then apply ``overrides``.

    The training resolution is not stored in the weights: it is guessed (256 for the released 256 px layouts,
    else from where attention sits), so pass ``resolution`` (DDPM) or ``image_size`` (ADM) for custom models;
    attention resolutions follow it. ADM's number of attention heads is not stored either (64 channels per head is
    assumed, as in every released ADM checkpoint).
    """
    overrides = dict(overrides or {})
    if _check_arch(arch) == "ddpm":
        cfg, attn_levels = _ddpm_levels(state_dict)
        res = int(overrides.get("resolution", _ddpm_resolution_guess(cfg["ch_mult"], attn_levels)))
        cfg["resolution"] = res
        cfg["attn_resolutions"] = [res // 2**lv for lv in attn_levels]
        cfg.update(overrides)
        return normalize_ddpm_config(cfg)
    cfg, attn_levels = _adm_levels(state_dict)
    size = int(overrides.get("image_size", _adm_image_size_guess(cfg["channel_mult"])))
    cfg["image_size"] = size
    cfg["attention_resolutions"] = [size // 2**lv for lv in attn_levels]
    cfg.update(overrides)
    return normalize_adm_config(cfg)


# ---------------------------------------------------------------------------------------------------------------
# strict loading


def _listing(items: list[str]) -> str:
    shown = ", ".join(items[:_MAX_LISTED])
    if len(items) > _MAX_LISTED:
        shown += f", … and {len(items) - _MAX_LISTED} more"
    return shown


def state_dict_mismatch(
    state_dict: Mapping[str, torch.Tensor], reference: Mapping[str, torch.Tensor]
) -> str | None:
    """Describe how ``state_dict`` differs from ``reference`` in keys and shapes, or return ``None`` if it fits.

    The text lists missing keys, unexpected keys and wrong shapes (checkpoint vs model), at most eight of each.
    """
    missing = [k for k in reference if k not in state_dict]
    unexpected = [k for k in state_dict if k not in reference]
    wrong = [
        f"{k} (checkpoint {tuple(state_dict[k].shape)} vs model {tuple(v.shape)})"
        for k, v in reference.items()
        if k in state_dict and tuple(state_dict[k].shape) != tuple(v.shape)
    ]
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing key(s): {_listing(missing)}")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected key(s): {_listing(unexpected)}")
    if wrong:
        parts.append(f"{len(wrong)} wrong shape(s): {_listing(wrong)}")
    return "; ".join(parts) or None


def check_state_dict(
    module: nn.Module, state_dict: Mapping[str, torch.Tensor], *, what: str = "model"
) -> None:
    """Raise :class:`StateDictMismatchError` unless ``state_dict`` has exactly the keys and shapes of ``module``
    (the message comes from :func:`state_dict_mismatch`)."""
    problem = state_dict_mismatch(state_dict, module.state_dict())
    if problem is None:
        return
    raise StateDictMismatchError(
        f"The checkpoint does not fit the {what}: {problem}.",
        hint="Check the architecture settings (--arch-config) or that the file is a checkpoint of this model.",
    )


def check_arch_keys(
    state_dict: Mapping[str, Any], arch: str, config: Mapping[str, Any] | None, *, what: str
) -> None:
    """Raise :class:`StateDictMismatchError` unless ``state_dict`` has exactly the keys and shapes of the ``arch``
    UNet built from ``config`` (the official key layout); ``what`` names the file in the message."""
    reference = build_model(arch, config).unet.state_dict()
    problem = state_dict_mismatch(state_dict, reference)
    if problem is None:
        return
    raise StateDictMismatchError(
        f"{what} does not fit the {arch.upper()} architecture {_summary(normalize_config(arch, config))}: "
        f"{problem}.",
        hint="Check that you downloaded the file for this checkpoint.",
    )


def load_weights(model: DiffusionModel, state_dict: Mapping[str, torch.Tensor]) -> DiffusionModel:
    """Copy an official-layout state dict into ``model.unet`` strictly (keys and shapes checked first)."""
    check_state_dict(
        model.unet, state_dict, what=f"{model.arch.upper()} architecture {_summary(model.config)}"
    )
    model.unet.load_state_dict(dict(state_dict), strict=True)
    return model


def _summary(cfg: Mapping[str, Any]) -> str:
    if "ch" in cfg:
        return f"(ch={cfg['ch']}, ch_mult={cfg['ch_mult']}, num_res_blocks={cfg['num_res_blocks']})"
    return (
        f"(num_channels={cfg['num_channels']}, channel_mult={cfg['channel_mult']}, "
        f"num_res_blocks={cfg['num_res_blocks']})"
    )


def model_from_state_dict(
    state_dict: Mapping[str, torch.Tensor],
    *,
    arch: str | None = None,
    config: Mapping[str, Any] | None = None,
    metadata: Mapping[str, str] | None = None,
    device: torch.device | str | None = None,
) -> DiffusionModel:
    """Build the model a state dict belongs to and load it (see :func:`load_diffusion_model`)."""
    from dclip_cli.models.convert import diffusers_to_ddpm

    if is_diffusers_unet(state_dict):
        state_dict = diffusers_to_ddpm(state_dict)
    meta = dict(metadata or {})
    detected = detect_arch(state_dict)
    meta_arch = meta.get(METADATA_ARCH_KEY)
    if arch is None:
        arch = detected
    else:
        _check_arch(arch)
        if arch != detected:
            raise StateDictMismatchError(
                f"The checkpoint holds a {detected.upper()} model, not the requested {arch.upper()} architecture.",
                hint=f"Use --arch {detected} (or leave --arch out to detect it).",
            )
    base: Mapping[str, Any] | None = None
    if meta_arch == arch and meta.get(METADATA_CONFIG_KEY):
        try:
            base = json.loads(meta[METADATA_CONFIG_KEY])
        except json.JSONDecodeError:
            base = None
    if base is not None:
        cfg = normalize_config(arch, {**base, **(config or {})})
    else:
        cfg = infer_config(arch, state_dict, config)
    with torch.device("meta"):
        model = build_model(arch, cfg)
    check_state_dict(model.unet, state_dict, what=f"{arch.upper()} architecture {_summary(model.config)}")
    model.unet.load_state_dict(dict(state_dict), strict=True, assign=True)
    model = model.float()
    if device is not None:
        model = model.to(device)
    return model.eval()


def load_diffusion_model(
    path: str | os.PathLike[str],
    *,
    arch: str | None = None,
    config: Mapping[str, Any] | None = None,
    device: torch.device | str | None = None,
) -> DiffusionModel:
    """Load a diffusion checkpoint as an eps-model in eval mode.

    Works for the official DDPM (CelebA-HQ, LSUN) and ADM (AFHQ, FFHQ, ImageNet 512) files, the official
    fine-tuned ``.pth`` files (base-architecture state dicts), diffusers ``UNet2DModel`` DDPM weights and dclip's
    own ``.safetensors`` files, loaded safely (:func:`dclip_cli.models.io.load_checkpoint`).

    Args:
        path: checkpoint file.
        arch: ``"ddpm"`` or ``"adm"``; detected from the keys when ``None``.
        config: architecture settings; missing ones come from the file's metadata or are inferred from shapes.
        device: where to put the model (default CPU).

    Returns:
        A :class:`DiffusionModel` (``model(x, t) -> eps``) in float32 and eval mode.

    Raises:
        CheckpointError: the file is missing or unreadable.
        UnsafeCheckpointError: the file would need arbitrary code to load.
        StateDictMismatchError: the weights do not fit the architecture (keys and shapes listed).
        ConfigError: invalid architecture settings.
    """
    state_dict, metadata = load_checkpoint(path)
    if is_diffusers_unet(state_dict) and "resolution" not in (config or {}):
        from dclip_cli.models.convert import diffusers_sample_size

        size = diffusers_sample_size(path)
        if size is not None:
            config = {**(config or {}), "resolution": size}
    model = model_from_state_dict(state_dict, arch=arch, config=config, metadata=metadata, device=device)
    model.source = str(Path(path))
    return model


def save_diffusion_model(
    path: str | os.PathLike[str],
    model: DiffusionModel,
    *,
    metadata: Mapping[str, str] | None = None,
    overwrite: bool = False,
) -> Path:
    """Write ``model.unet``'s official-layout state dict as a self-describing ``.safetensors`` file.

    The header carries ``arch`` and ``arch_config`` (JSON) plus ``metadata``, so :func:`load_diffusion_model`
    needs no settings to read it back. Written atomically.
    """
    from safetensors.torch import save_file

    from dclip_cli.fileio import atomic_path

    meta = {METADATA_ARCH_KEY: model.arch, METADATA_CONFIG_KEY: json.dumps(model.config, sort_keys=True)}
    meta.update({str(k): str(v) for k, v in (metadata or {}).items()})
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in model.unet.state_dict().items()}
    with atomic_path(path, overwrite=overwrite) as tmp:
        save_file(tensors, str(tmp), metadata=meta)
    return Path(path)


def load_arch_config(path: str | os.PathLike[str]) -> tuple[str | None, dict[str, Any]]:
    """Read architecture settings from a JSON, TOML or YAML file.

    Accepted shapes: a flat mapping of settings (``{"ch": 128, ...}``), optionally with ``"arch"``; a mapping with
    ``"arch"`` and ``"config"``; or an ermongroup/ddim YAML config, whose ``model:`` block is used (with
    ``data.image_size`` as the resolution and its non-architecture keys ignored).

    Returns:
        ``(arch or None, settings)``.

    Raises:
        ConfigError: the file is missing, unparsable or not a mapping.
    """
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"Cannot read the architecture file {p}: {exc.strerror or exc}.") from exc
    suffix = p.suffix.lower()
    try:
        if suffix == ".toml":
            import tomllib

            data: Any = tomllib.loads(text)
        elif suffix in (".yml", ".yaml"):
            try:
                import yaml
            except ImportError:  # pragma: no cover - PyYAML is usually present
                raise ConfigError(
                    f"Reading {p} needs PyYAML, which is not installed.",
                    hint="pip install pyyaml, or write the settings as JSON or TOML.",
                ) from None
            data = yaml.safe_load(text)
        else:
            data = json.loads(text)
    except ConfigError:
        raise
    except Exception as exc:  # noqa: BLE001 - json, tomllib and yaml raise different types
        raise ConfigError(
            f"The architecture file {p} could not be parsed: {exc}.",
            hint="Write it as JSON, TOML or YAML with the settings as a mapping.",
        ) from exc
    if not isinstance(data, dict):
        raise ConfigError(f"The architecture file {p} does not hold a mapping of settings.")
    arch = data.get("arch")
    if isinstance(data.get("model"), dict):  # ddim/SDEdit YAML
        settings = {k: v for k, v in data["model"].items() if k in DDPM_256_CONFIG}
        image_size = (
            (data.get("data") or {}).get("image_size") if isinstance(data.get("data"), dict) else None
        )
        if image_size is not None and "resolution" not in settings:
            settings["resolution"] = image_size
        return arch or "ddpm", settings
    if isinstance(data.get("config"), dict):
        return arch, dict(data["config"])
    return arch, {k: v for k, v in data.items() if k != "arch"}
