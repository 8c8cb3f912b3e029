"""Fixtures for the slimdiff.unet tests."""

import pytest
import torch
from unet_tiny import make_unet


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def unet():
    return make_unet()


@pytest.fixture
def inputs():
    g = torch.Generator().manual_seed(1)
    return torch.randn(2, 4, 16, 16, generator=g), torch.tensor([10, 500]), torch.randn(2, 5, 12, generator=g)
