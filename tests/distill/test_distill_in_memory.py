"""The in-memory API (issue 12 items 1 and 10): a pipeline named by `config.teacher` provides the
parts when the teacher U-Net is passed in memory, and the caller's models come back unchanged."""

import copy

import pytest
import torch

from slimdiff.distill import distill
from slimdiff.distill.kd import KdTrainer as Trainer


def _hooks(model) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def _patched(model) -> list[str]:
    return [name for name, m in model.named_modules() if "forward" in m.__dict__]


def _state(model):
    return model.training, [p.requires_grad for p in model.parameters()], next(model.parameters()).device


@pytest.fixture
def models(tiny_pipe):
    from slimdiff.sample import load_pipeline

    pipe = load_pipeline(str(tiny_pipe))
    teacher = pipe.unet.train()
    teacher.conv_in.requires_grad_(False)  # a mixed set of flags the caller chose
    student = copy.deepcopy(teacher)
    return teacher, student, pipe


def test_pipeline_comes_from_config_teacher_when_the_teacher_is_in_memory(make_config, models, tmp_path):
    teacher, student, _ = models
    cfg = make_config(tmp_path / "o", student=None)  # teacher= the tiny pipeline directory
    result = distill(cfg, teacher=teacher, student=student, progress=False)
    assert result.student is student and result.steps == 2


@pytest.mark.parametrize("fail", [False, True])
def test_callers_models_come_back_unchanged(make_config, models, tmp_path, monkeypatch, fail):
    teacher, student, pipe = models
    vae_state = _state(pipe.vae)
    before_t, before_s = _state(teacher), _state(student)
    hooks_t, hooks_s = _hooks(teacher), _hooks(student)
    if fail:  # training raises after hooks and stochastic-depth patches are installed
        def boom(self, items, position):
            assert self.s_rec is not None and self.stochastic.units
            raise RuntimeError("boom")

        monkeypatch.setattr(Trainer, "_micro_step", boom)
    cfg = make_config(tmp_path / "o", student=None, stochastic_depth=0.5)
    if fail:
        with pytest.raises(RuntimeError, match="boom"):
            distill(cfg, teacher=teacher, student=student, pipeline=pipe, progress=False)
    else:
        distill(cfg, teacher=teacher, student=student, pipeline=pipe, progress=False)
    assert _state(teacher) == before_t  # train mode, conv_in frozen, the rest trainable, same device
    assert _state(student)[1:] == before_s[1:]  # requires_grad flags and device
    assert (_hooks(teacher), _hooks(student)) == (hooks_t, hooks_s)
    assert _patched(teacher) == [] and _patched(student) == []
    assert _state(pipe.vae) == vae_state


def test_failed_set_up_leaves_no_hooks(make_config, models, tmp_path):
    """A feature map whose shapes differ fails in the dry run, after the recorders are registered."""
    teacher, student, pipe = models
    cfg = make_config(tmp_path / "o", student=None, stochastic_depth=0.5, feat_map={"down.0": "down.1"})
    with pytest.raises(ValueError, match="down.0"):
        distill(cfg, teacher=teacher, student=student, pipeline=pipe, progress=False)
    assert _hooks(teacher) == 0 and _hooks(student) == 0
    assert _patched(student) == [] and teacher.training
    with torch.no_grad():  # the student still runs its plain forward
        x = torch.randn(1, 4, 8, 8)
        student(x, 1, encoder_hidden_states=torch.randn(1, 4, 16))
