"""Calibration images of the wrong size are refused, not interpolated silently (STYLE habit 6)."""

import pytest
import torch

from slimdiff.prune.calibration import CalibrationConfig, pipeline_calibration, toy_calibration


def test_calibration_images_of_another_size_are_refused(tmp_path):
    from diffusers import StableDiffusionPipeline

    from slimdiff.testing import tiny_pipeline

    pipe = StableDiffusionPipeline.from_pretrained(tiny_pipeline(tmp_path / "pipe"))
    px = pipe.unet.config.sample_size * pipe.vae_scale_factor
    prompts = ["a small red circle on the left"] * 2
    with pytest.raises(ValueError, match=rf"calibration images are 20x20, the U-Net's latents decode to {px}x{px}"):
        pipeline_calibration(pipe, prompts, CalibrationConfig(size=2), images=torch.rand(2, 3, 20, 20))
    cal = pipeline_calibration(pipe, prompts, CalibrationConfig(size=2), images=torch.rand(2, 3, px, px))
    assert cal.sample.shape[0] == 2
    assert toy_calibration(pipe, CalibrationConfig(size=2)).sample.shape == cal.sample.shape  # renders resized
