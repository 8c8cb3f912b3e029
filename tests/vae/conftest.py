"""Tiny seeded fixtures for the VAE tests: a 3-level KL-VAE and a tiny pipeline."""

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_vae():
    """A 3-level VAE (widths 8, 16, 32; 4 GroupNorm groups; mid-block attention), random weights."""
    from slimdiff.toy import components

    return components.build_vae(block_out_channels=(8, 16, 32), norm_num_groups=4, sample_size=32, seed=0).eval()


@pytest.fixture(scope="session")
def tiny_pipe(tmp_path_factory) -> Path:
    from slimdiff.testing import tiny_pipeline

    return tiny_pipeline(tmp_path_factory.mktemp("pipe") / "pipe", seed=0)
