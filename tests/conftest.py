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
