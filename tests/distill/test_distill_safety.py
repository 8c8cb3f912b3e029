"""Checkpoints and runs that fail safely: no pickle is executed, damaged files are named and
skipped, a diverged run is stopped, kills leave no junk, outputs never overlap inputs."""

import json
import os
import pickle
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from slimdiff.distill import DistillConfig, distill
from slimdiff.train import checkpoint as ckpt
from slimdiff.train import loop as trainer_mod
from slimdiff.train.checkpoint import JsonlLog
from slimdiff.distill.kd import KdTrainer as Trainer
from slimdiff.train.loop import NonFiniteLossError


class Payload:
    """Unpickling this writes `path`: what a crafted custom_checkpoint_0.pkl could do (os.system ...)."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (Path(self.path).write_text, ("pwned",))


def plant_pickle(checkpoint: Path, marker: Path) -> None:
    torch.save({"lr_lambdas": Payload(marker)}, checkpoint / "custom_checkpoint_0.pkl")


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def strict_json_lines(path: Path) -> list[dict]:
    def refuse(name):
        raise ValueError(f"not JSON: {name}")

    return [json.loads(line, parse_constant=refuse) for line in path.read_text().splitlines() if line.strip()]


def test_checkpoints_hold_no_pickle_and_damaged_ones_are_skipped(make_config, tmp_path):
    marker = tmp_path / "marker.txt"
    cfg = dict(max_steps=3, checkpoint_every=1, checkpoints_keep=3, ema_decay=0.9, lr_scheduler="cosine")
    straight = distill(make_config(tmp_path / "a", **cfg), progress=False)
    root = tmp_path / "a" / "checkpoints"
    c1, c2 = root / "checkpoint-1", root / "checkpoint-2"
    names = sorted(p.name for p in c2.iterdir())
    assert {"lr_scheduler.json", "ema.safetensors", "ema.json", "model.safetensors"} <= set(names)
    assert not [n for n in names if n.startswith("custom_checkpoint")] and ckpt.checkpoint_problems(c2) == []
    final = load_file(str(straight.out / "diffusion_pytorch_model.safetensors"))

    # 1. a truncated optimizer.bin in the newest checkpoint: `latest` falls back to checkpoint-1, warning
    truncate(c2 / "optimizer.bin")
    with pytest.raises(ValueError, match=r"damaged: .*optimizer\.bin is truncated"):
        Trainer(make_config(tmp_path / "a", **cfg, resume=str(c2)), progress=False)
    with pytest.warns(UserWarning, match=r"skipped damaged checkpoint\(s\) .*checkpoint-2"):
        resumed = distill(make_config(tmp_path / "a", **cfg, resume="latest"), progress=False)
    again = load_file(str(resumed.out / "diffusion_pytorch_model.safetensors"))
    assert all(torch.equal(final[k], again[k]) for k in final)  # LR schedule and EMA state restored exactly

    # 2. a pickle payload is refused unread, explicitly named or as `latest`
    truncate(c2 / "model.safetensors")
    plant_pickle(c1, marker)
    with pytest.raises(ValueError, match=r"custom_checkpoint_0\.pkl is pickled state"):
        Trainer(make_config(tmp_path / "a", **cfg, resume=str(c1)), progress=False)
    with pytest.raises(ValueError, match=r"no intact checkpoint .*model\.safetensors is truncated"):
        Trainer(make_config(tmp_path / "a", **cfg, resume="latest"), progress=False)
    assert not marker.exists()


def test_a_diverged_run_stops_keeps_the_last_good_checkpoint_and_writes_strict_json(make_config, tmp_path,
                                                                                       monkeypatch):
    with pytest.raises(ValueError, match="learning_rate=inf is invalid: a finite number"):
        make_config(tmp_path / "inf", learning_rate=float("inf"))
    micro = Trainer._micro_step

    def nan_from_step_3(self, items, position):
        terms = micro(self, items, position)
        if position >= 2:
            terms = {k: v * float("nan") for k, v in terms.items()}
        return terms

    monkeypatch.setattr(Trainer, "_micro_step", nan_from_step_3)
    out = tmp_path / "o"
    with pytest.raises(NonFiniteLossError, match=r"step 3: non-finite .*last good checkpoint is .*checkpoint-2"):
        distill(make_config(out, max_steps=4, checkpoint_every=2), progress=False)
    assert not (out / "diffusion_pytorch_model.safetensors").exists() and not (out / "pipeline").exists()
    assert [r["step"] for r in strict_json_lines(out / "train_log.jsonl")] == [1, 2]
    good = load_file(str(out / "checkpoints" / "checkpoint-2" / "model.safetensors"))
    assert all(torch.isfinite(t).all() for t in good.values())
    monkeypatch.undo()
    # a real divergence: a huge learning rate
    with pytest.raises(NonFiniteLossError, match="no checkpoint was written yet"):
        distill(make_config(tmp_path / "huge", max_steps=3, learning_rate=1e30), progress=False)
    assert not (tmp_path / "huge" / "diffusion_pytorch_model.safetensors").exists()


def test_the_log_tolerates_a_partial_last_line_and_names_a_damaged_one(tmp_path):
    log = tmp_path / "train_log.jsonl"
    log.write_text('{"step": 1, "loss": 0.5}\n{"step": 2, "loss": 0.4}\n{"step": 3, "lo')  # killed mid-write
    JsonlLog(log, resume_step=2, enabled=True)
    assert [r["step"] for r in strict_json_lines(log)] == [1, 2]
    log.write_text('{"step": 1, "loss": 0.5}\n{"step": 2, "lo\n{"step": 3, "loss": 0.4}\n')
    with pytest.raises(ValueError, match=r"train_log\.jsonl:2 is not valid JSON"):
        JsonlLog(log, resume_step=3, enabled=True)
    JsonlLog(log, resume_step=None, enabled=True).write({"step": 1, "loss": float("nan")})
    assert strict_json_lines(log) == [{"step": 1, "loss": None}]


class FakeAccelerator:
    """The accelerate calls save_checkpoint makes, one process; `fail` simulates a full disk."""

    is_main_process = True

    def __init__(self, fail: bool = False):
        self.fail = fail

    def wait_for_everyone(self):
        pass

    def save_state(self, directory):
        os.makedirs(directory, exist_ok=True)
        save_file({"w": torch.zeros(1000)}, os.path.join(directory, "model.safetensors"))
        if self.fail:
            Path(directory, "optimizer.bin").write_bytes(b"\0" * 1000)
            raise RuntimeError("[enforce fail at inline_container.cc:778] . PytorchStreamWriter failed writing "
                               "file data/0: file write failed / unexpected pos 64 vs 0")


def test_checkpoint_saves_clean_up_junk_and_failed_saves(tmp_path):
    root = tmp_path / "checkpoints"
    ckpt.save_checkpoint(FakeAccelerator(), root, 2, {"step": 2}, keep=2, states={"lr_scheduler": {"last_epoch": 2}})
    junk = [root / "checkpoint-1", root / ".tmp-checkpoint-9", root / ".tmp-delete-checkpoint-0"]
    for j in junk:  # a rotation killed mid-delete (no train_state.json), a killed save, a killed delete
        j.mkdir()
        (j / "model.safetensors").write_bytes(b"\0" * 1000)
    with pytest.raises(OSError, match=r"could not write checkpoint .*checkpoint-3 .*unexpected pos.*partial files "
                                      r"were removed"):
        ckpt.save_checkpoint(FakeAccelerator(fail=True), root, 3, {"step": 3}, keep=2)
    assert sorted(p.name for p in root.iterdir()) == ["checkpoint-2"]  # junk and the partial save are gone
    assert ckpt.load_state(root / "checkpoint-2", "lr_scheduler") == {"last_epoch": 2}
    for step in (4, 5):
        ckpt.save_checkpoint(FakeAccelerator(), root, step, {"step": step}, keep=2)
    assert sorted(p.name for p in root.iterdir()) == ["checkpoint-4", "checkpoint-5"]


def test_outputs_that_overlap_inputs_are_refused(make_config, student_dir, tmp_path):
    student = tmp_path / "student"
    shutil.copytree(student_dir, student)
    before = (student / "diffusion_pytorch_model.safetensors").read_bytes()
    with pytest.raises(ValueError, match=r"--out .*student is the --student .*choose another --out"):
        Trainer(make_config(student, student=str(student)), progress=False)
    with pytest.raises(ValueError, match=r"--out .*student.kd lies inside the --student"):
        Trainer(make_config(student / "kd", student=str(student)), progress=False)
    assert (student / "diffusion_pytorch_model.safetensors").read_bytes() == before
    assert sorted(p.name for p in student.iterdir()) == sorted(p.name for p in student_dir.iterdir())
