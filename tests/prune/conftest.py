import contextlib

import pytest
import torch


@contextlib.contextmanager
def one_thread():
    """Tiny models run fastest on one thread (and do not fight other jobs for the cores)."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(old)


@pytest.fixture(autouse=True)
def _one_thread():
    with one_thread():
        yield


@pytest.fixture(scope="session")
def tiny_slim():
    """The tiny SD-1.5-topology U-Net, imported into the editable representation."""
    from slimdiff.testing import tiny_unet
    from slimdiff.unet import to_slim

    with one_thread():
        return to_slim(tiny_unet(seed=0)).eval()


@pytest.fixture(scope="session")
def tiny_calibration(tiny_slim):
    from slimdiff.prune.calibration import CalibrationConfig, random_calibration

    return random_calibration(tiny_slim, CalibrationConfig(size=4, batch_size=4), seq_len=6)


@pytest.fixture(scope="session")
def tiny_candidates(tiny_slim):
    from slimdiff.prune.criteria import removable_units

    with one_thread():
        return removable_units(tiny_slim)
