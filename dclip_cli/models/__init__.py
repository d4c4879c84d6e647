"""Diffusion networks: the DDPM and ADM UNets behind one eps-model interface, and their safe loading."""

from dclip_cli.models.adm_unet import ADM_AFHQ_CONFIG, ADM_IMAGENET512_CONFIG, ADMUNet
from dclip_cli.models.build import (
    build_model,
    check_state_dict,
    detect_arch,
    infer_config,
    load_diffusion_model,
    load_weights,
    model_from_state_dict,
    normalize_config,
    save_diffusion_model,
)
from dclip_cli.models.ddpm_unet import DDPM_256_CONFIG, DDPMUNet
from dclip_cli.models.io import load_checkpoint, load_state_dict_file
from dclip_cli.models.protocol import DiffusionModel, EpsModel

__all__ = [
    "ADM_AFHQ_CONFIG",
    "ADM_IMAGENET512_CONFIG",
    "ADMUNet",
    "DDPM_256_CONFIG",
    "DDPMUNet",
    "DiffusionModel",
    "EpsModel",
    "build_model",
    "check_state_dict",
    "detect_arch",
    "infer_config",
    "load_checkpoint",
    "load_diffusion_model",
    "load_state_dict_file",
    "load_weights",
    "model_from_state_dict",
    "normalize_config",
    "save_diffusion_model",
]
