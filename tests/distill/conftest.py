"""Tiny seeded fixtures for the distillation tests: a tiny pipeline (teacher) and a student."""

from pathlib import Path

import pytest

from slimdiff.distill import DistillConfig


@pytest.fixture(scope="session")
def tiny_pipe(tmp_path_factory) -> Path:
    from slimdiff.testing import tiny_pipeline

    return tiny_pipeline(tmp_path_factory.mktemp("pipe") / "pipe", seed=0)


@pytest.fixture(scope="session")
def student_dir(tmp_path_factory) -> Path:
    """Same architecture as the teacher, other random weights (a UNet directory)."""
    from slimdiff.testing import tiny_unet

    path = tmp_path_factory.mktemp("student") / "student"
    tiny_unet(seed=1).save_pretrained(path)
    return path


@pytest.fixture(scope="session")  # a pure function of two session fixtures: shared by module-scoped runs
def make_config(tiny_pipe, student_dir):
    """make_config(out, **overrides): 2 steps of batch 2 on 16 toy scenes at 16x16, no checkpoints."""

    def make(out, **overrides) -> DistillConfig:
        settings = dict(teacher=str(tiny_pipe), student=str(student_dir), data="toy", toy_size=16, out=str(out),
                        max_steps=2, batch_size=2, checkpoint_every=0, learning_rate=1e-3)
        settings.update(overrides)
        return DistillConfig(**settings)

    return make
