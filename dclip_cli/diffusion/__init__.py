"""The diffusion math: noise schedule, timestep sequences, DDIM in both directions and noise mixing."""

from dclip_cli.diffusion.ddim import ddim_step, generate, invert, q_sample
from dclip_cli.diffusion.mixing import blend, mix
from dclip_cli.diffusion.schedule import (
    alpha_bar,
    alphas_cumprod,
    generation_pairs,
    inversion_pairs,
    timestep_sequence,
)

__all__ = [
    "alpha_bar",
    "alphas_cumprod",
    "blend",
    "ddim_step",
    "generate",
    "generation_pairs",
    "invert",
    "inversion_pairs",
    "mix",
    "q_sample",
    "timestep_sequence",
]
