"""Issue 19 item 7: a guidance-embedded (LCM-style `time_cond_proj_dim`) teacher.

`distill` and the LAPTOP criterion must feed the guidance embedding (`timestep_cond`) as the
pipeline does, so the student's `cond_proj` trains and the criterion scores what sampling runs.
"""

import pytest
import torch

from slimdiff.distill import distill
from slimdiff.prune.calibration import CalibrationConfig, random_calibration
from slimdiff.prune.criteria import OutputLossCriterion
from slimdiff.testing import tiny_unet_config
from slimdiff.toy import components


def embedded_unet(seed: int):
    """The tiny U-Net reading a 8-wide guidance embedding, its projection random (not zero)."""
    unet = components.build_unet({**tiny_unet_config(), "time_cond_proj_dim": 8}, seed=seed)
    with torch.no_grad():
        unet.time_embedding.cond_proj.weight.normal_(0, 0.5, generator=torch.Generator().manual_seed(seed))
    return unet


def test_distill_trains_the_students_guidance_projection(make_config, tiny_pipe, tmp_path):
    teacher, student = embedded_unet(0), embedded_unet(1)
    before = student.time_embedding.cond_proj.weight.detach().clone()
    cfg = make_config(tmp_path / "o", teacher=None, student=None, pipeline=str(tiny_pipe), max_steps=2)
    result = distill(cfg, teacher=teacher, student=student, progress=False)
    assert not torch.equal(result.student.time_embedding.cond_proj.weight, before)  # it received gradient


def test_distill_refuses_a_guidance_embedding_on_one_side_only(make_config, tiny_pipe, student_dir, tmp_path):
    cfg = make_config(tmp_path / "o", teacher=None, pipeline=str(tiny_pipe))
    with pytest.raises(ValueError, match="time_cond_proj_dim.*teacher 8, student None"):
        distill(cfg, teacher=embedded_unet(0), progress=False)


def test_laptop_criterion_feeds_the_guidance_embedding():
    unet = embedded_unet(0).eval()
    criterion = OutputLossCriterion(random_calibration(unet, CalibrationConfig(size=2, batch_size=2), seq_len=3))
    first = criterion.reference(unet)[0].clone()
    with torch.no_grad():
        unet.time_embedding.cond_proj.weight.mul_(2)  # only the guidance path changes
    criterion.reset()
    assert not torch.allclose(criterion.reference(unet)[0], first)
