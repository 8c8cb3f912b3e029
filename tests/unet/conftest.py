"""Fixtures for the slimdiff.unet tests: tiny seeded U-Nets with SD-1.5's block topology.

(pytest runs with --import-mode=importlib, so helpers are fixtures, not imports.)
"""

import pytest
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


def _make_unet(seed: int = 0, **overrides) -> UNet2DConditionModel:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return UNet2DConditionModel(**{**TINY, **overrides}).eval()


def _run(model, inputs) -> torch.Tensor:
    with torch.no_grad():
        return model(*inputs).sample


@pytest.fixture
def tiny_config() -> dict:
    return dict(TINY)


@pytest.fixture
def make_unet():
    """`make_unet(seed=0, **config_overrides)` -> a seeded tiny diffusers U-Net (eval mode)."""
    return _make_unet


@pytest.fixture
def run():
    """`run(model, (sample, timestep, text))` -> the output sample, without gradients."""
    return _run


@pytest.fixture
def unet() -> UNet2DConditionModel:
    return _make_unet()


@pytest.fixture
def inputs():
    g = torch.Generator().manual_seed(1)
    return torch.randn(2, 4, 16, 16, generator=g), torch.tensor([10, 500]), torch.randn(2, 5, 12, generator=g)
