"""Shared fixtures for the profiling tests: the tiny SD-1.5-topology U-Net and one profile of it."""

import pytest
import torch

from slimdiff.profile import ProfileSettings, profile_unet
from slimdiff.testing import tiny_unet

# Latency settings for tiny models: one thread (the test machine is shared, and two threads
# contend with other jobs), a few repeats; latent 8 = tiny_unet's sample_size.
FAST = dict(latent_size=8, threads=1, warmup=2, repeats=5)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One torch thread for this folder's module-scoped fixtures too (they build and time models
    before tests/conftest.py's function-scoped one-thread fixture applies): on a loaded 2-core
    machine two OpenMP threads make a tiny forward up to 100x slower."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture
def fast() -> dict:
    return dict(FAST)


@pytest.fixture(scope="module")
def unet():
    torch.manual_seed(0)
    return tiny_unet(seed=0)


@pytest.fixture(scope="module")
def profile(unet):
    return profile_unet(unet, ProfileSettings(**FAST), name="tiny")
