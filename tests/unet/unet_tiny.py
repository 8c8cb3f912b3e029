"""Tiny seeded U-Nets for the slimdiff.unet tests (a uniquely named module: other test folders
have their own conftest.py, so tests import helpers from here, not from `conftest`)."""

import torch
from diffusers import UNet2DConditionModel

# SD-1.5 topology at widths (8, 16, 32, 32): like SD's (320, 640, 1280, 1280) the last two
# levels share a width, so every preset (bk-tiny included) fits.
TINY = dict(
    sample_size=16,
    block_out_channels=(8, 16, 32, 32),
    norm_num_groups=4,
    cross_attention_dim=12,
    attention_head_dim=2,
    layers_per_block=2,
)


def make_unet(seed: int = 0, **overrides) -> UNet2DConditionModel:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return UNet2DConditionModel(**{**TINY, **overrides}).eval()


def run(model, inputs) -> torch.Tensor:
    with torch.no_grad():
        return model(*inputs).sample
