"""Exact resume with the DEFAULT settings (the RAM encoding cache on): a run killed after its
checkpoint and resumed with `resume="latest"` ends with the weights and the log of a run that
was never stopped, bit for bit; `distill` and `step-distill`.

10 scenes, batch 4, 6 steps: each epoch is 2 steps of a seeded permutation's first 8 scenes, so
an uninterrupted run meets scenes new to the cache beside cached ones (it encodes sub-batches of
1-3), while the resumed part (steps 4-6) starts with a cold cache and encodes whole batches of 4.
The VAE encoder is not batch-invariant on the CPU, so this failed while the cache kept an item's
moments from whatever sub-batch first encoded it."""

import json

import pytest
import torch
from safetensors.torch import load_file

from slimdiff.data.cache import BatchEncoder
from slimdiff.distill import distill
from slimdiff.distill.step import StepDistillConfig, step_distill
from slimdiff.train import loop as trainer_mod

SMALL = dict(toy_size=10, batch_size=4, max_steps=6)  # 3 epochs of 2 steps: the RAM cache is on ("auto")


def untimed(path):
    return [{k: v for k, v in json.loads(line).items() if k != "time_s"} for line in path.read_text().splitlines()]


def killed_then_resumed(run, make, out, monkeypatch, kill_at: int):
    """Run `make(out, checkpoint_every=3)` until it has logged step `kill_at` (then a simulated
    kill), resume it with resume="latest"; returns the resumed run's result."""
    write = trainer_mod.JsonlLog.write

    def write_then_die(self, record):
        write(self, record)
        if record["step"] == kill_at:
            raise KeyboardInterrupt("killed")

    monkeypatch.setattr(trainer_mod.JsonlLog, "write", write_then_die)
    with pytest.raises(KeyboardInterrupt):
        run(make(out, checkpoint_every=3), progress=False)
    monkeypatch.undo()
    return run(make(out, checkpoint_every=3, resume="latest"), progress=False)


def assert_same_run(straight, resumed):
    assert_same_run_of(straight, resumed, steps=6)


def assert_same_run_of(straight, resumed, steps: int):
    assert untimed(resumed.log_path) == untimed(straight.log_path) and len(untimed(straight.log_path)) == steps
    a = load_file(str(straight.out / "diffusion_pytorch_model.safetensors"))
    b = load_file(str(resumed.out / "diffusion_pytorch_model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_distill_resumes_bit_for_bit_with_the_default_settings(make_config, tmp_path, monkeypatch):
    make = lambda out, **kw: make_config(out, **SMALL, **kw)  # noqa: E731
    assert make(tmp_path / "x").memory_cache == "auto"  # the defaults: nothing speed-related set
    straight = distill(make(tmp_path / "a"), progress=False)
    assert_same_run(straight, killed_then_resumed(distill, make, tmp_path / "b", monkeypatch, kill_at=5))


def test_step_distill_resumes_bit_for_bit_with_the_default_settings(tiny_pipe, tmp_path, monkeypatch):
    def make(out, **kw):
        return StepDistillConfig(teacher=str(tiny_pipe), student=str(tiny_pipe), data="toy", out=str(out),
                                 learning_rate=1e-3, steps=4, teacher_steps=8, **SMALL, **kw)

    straight = step_distill(make(tmp_path / "a", checkpoint_every=0), progress=False)
    assert_same_run(straight, killed_then_resumed(step_distill, make, tmp_path / "b", monkeypatch, kill_at=4))


def test_an_items_encoding_does_not_depend_on_its_batch(tiny_pipe):
    """The property resume rests on: the encodings of an item are the same alone and in any batch."""
    from slimdiff.data import build_dataset
    from slimdiff.sample import load_pipeline

    pipe = load_pipeline(str(tiny_pipe))
    encoder = BatchEncoder(pipe.vae, pipe.tokenizer, pipe.text_encoder)
    data = build_dataset("toy", 16, seed=0, toy_size=8)
    items = [data[i] for i in range(8)]
    moments, text = encoder(items)
    for i in (0, 5):
        alone_m, alone_t = encoder([items[i]])
        assert torch.equal(moments[i], alone_m[0]) and torch.equal(text[i], alone_t[0])
    swapped_m, _ = encoder(items[4:] + items[:4])
    assert torch.equal(swapped_m, torch.cat([moments[4:], moments[:4]]))


def test_resume_dir_from_another_working_directory(make_config, tiny_pipe, student_dir, tmp_path, monkeypatch):
    """A run started with paths relative to one directory resumes from another, given the same files."""
    import shutil

    first, second = tmp_path / "first", tmp_path / "second"
    shutil.copytree(student_dir, first / "student")
    shutil.copytree(tiny_pipe, first / "pipe")
    second.mkdir()
    monkeypatch.chdir(first)
    distill(make_config("run", teacher="pipe", student="student", max_steps=2, checkpoint_every=1), progress=False)
    straight = distill(make_config(first / "straight", teacher="pipe", student="student", max_steps=3), progress=False)
    monkeypatch.chdir(second)
    resumed = distill(make_config("../first/run", teacher="../first/pipe", student="../first/student", max_steps=3,
                                  resume=str(first / "run" / "checkpoints" / "checkpoint-1")), progress=False)
    assert_same_run_of(straight, resumed, steps=3)
    with pytest.raises(ValueError, match=r"student: checkpoint '.*first/student', now '../first/pipe'"):  # not the same
        distill(make_config("../first/run", teacher="../first/pipe", student="../first/pipe", max_steps=3,
                            resume=str(first / "run" / "checkpoints" / "checkpoint-1")), progress=False)


def test_a_pickled_optimizer_state_is_refused_naming_the_file(make_config, tmp_path):
    import argparse

    distill(make_config(tmp_path / "run", max_steps=2, checkpoint_every=1), progress=False)
    checkpoint = tmp_path / "run" / "checkpoints" / "checkpoint-1"
    torch.save({"state": {}, "param_groups": [], "x": argparse.Namespace(a=1)}, checkpoint / "optimizer.bin")
    with pytest.raises(ValueError) as info:
        distill(make_config(tmp_path / "run", max_steps=2, checkpoint_every=1, resume=str(checkpoint)),
                progress=False)
    message = str(info.value)
    assert f"{checkpoint / 'optimizer.bin'}: this checkpoint file pickles Python objects other than tensors" in message
    assert "weights_only=False" not in message and "\n" not in message, message
