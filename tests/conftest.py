"""Fixtures shared by every test folder."""

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    """Every test runs torch on one thread: tiny models run fastest that way, and on a loaded
    2-core machine two OpenMP threads wait on each other while other jobs hold a core."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def tiny_sdxl_dir(tmp_path_factory):
    """A tiny `StableDiffusionXLPipeline` directory (diffusers' test configs; `slimdiff.testing.tiny_sdxl_pipeline`)."""
    from slimdiff.testing import tiny_sdxl_pipeline

    return tiny_sdxl_pipeline(tmp_path_factory.mktemp("sdxl") / "pipe")
