"""Fixtures for the evaluation tests: the tiny pipeline, and a fake judge with the real one's API."""

import pytest
import torch
from torch import nn


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models run fastest on one thread (and do not fight other jobs for the cores)."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


class FakeJudge(nn.Module):
    """The judge's contract (`features`, `score`) with a fixed random conv as feature extractor.

    `score` "confirms" an attribute when a pixel statistic passes a threshold: meaningless, but a
    deterministic function of the pixels, which is what the determinism tests need.
    """

    def __init__(self, dim: int = 8):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, dim, 3, padding=1)
        self.eval()

    def features(self, images: torch.Tensor) -> torch.Tensor:  # (N, 3, H, W) -> (N, D)
        return torch.tanh(self.conv(images)).mean(dim=(2, 3))

    def score(self, images: torch.Tensor, scenes) -> dict:
        assert images.shape[0] == len(scenes) and images.dtype == torch.float32
        bright = (images.max(dim=1).values > 0.5).float().mean(dim=(1, 2))  # (N,) share of bright pixels
        per_attr = {"colour0": float((bright > 0.05).float().mean()), "count": float((bright > 0.2).float().mean())}
        return {
            "alignment": float(bright.mean()),
            "all_correct": float((bright > 0.3).float().mean()),
            "per_attribute": per_attr,
        }


@pytest.fixture(scope="session")
def fake_judge():
    return FakeJudge()


@pytest.fixture(scope="session")
def tiny_pipe_dir(tmp_path_factory):
    from slimdiff.testing import tiny_pipeline

    return tiny_pipeline(tmp_path_factory.mktemp("tiny") / "pipe", seed=0)


@pytest.fixture(scope="session")
def tiny_pipe(tiny_pipe_dir):
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(tiny_pipe_dir)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture
def needs_load_pipeline():
    """CLI paths go through the contract's `slimdiff.unet.load_pipeline`."""
    import slimdiff.unet

    if not hasattr(slimdiff.unet, "load_pipeline"):
        pytest.skip("slimdiff.unet.load_pipeline is not available yet (the U-Net package is in progress)")
