"""FSDP2 across 2 CPU processes (gloo), launched once with examples/accelerate_fsdp2.yaml, for
`distill` (EMA on) and `step-distill` (SnapFusion progressive: the stage teacher is gathered from
the shards; PCM with a LoRA: the target network is sharded like the student; DMD2: the fake score and
its GAN head are sharded with their own optimiser): the student, its optimiser state and its averages
are sharded; losses equal a 1-process run with the same global batch within 1e-5 (weights:
`WEIGHTS_TOL`); a run resumed from a sharded checkpoint ends bit for bit as the uninterrupted one
(see slimdiff.train.sharded).

One launch runs every command (`RUNS`, through `slimdiff.cli.main`) so the two processes start,
import and join their gloo group once: the launch dominates the time (each FSDP2 all-gather and
reduce-scatter is a gloo collective between two processes that compete for 2 loaded cores):
150 s for the four at load average 2-3 on 2 cores, 2026-12-03 (three runs: 114 s; distill alone: about 2.5 min).
"""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from slimdiff.cli import main

ROOT = Path(__file__).resolve().parents[2]
COMMON = ["--cpu", "--data", "toy", "--toy-size", "8", "--max-steps", "3", "--lr", "1e-3", "--quiet"]
# name -> the command's own arguments ({pipe}, {student}: the fixtures' directories)
RUNS = {
    "distill": ["distill", "--teacher", "{pipe}", "--student", "{student}", "--ema-decay", "0.9"],
    "progressive": ["step-distill", "--teacher", "{pipe}", "--student", "{pipe}", "--steps", "2", "--teacher-steps",
                    "8", "--schedule", "progressive"],  # stages 4 -> 2: stage 1 starts at step 1
    # PCM (2 phases) with a rank-4 LoRA: frozen base and trained LoRA matrices in one FSDP unit, the LoRA'd target
    # network (EMA 0.95) sharded like the student (LCM's path: PCM only moves the consistency function's edge)
    "pcm-lora": ["step-distill", "--method", "pcm", "--phases", "2", "--steps", "2", "--lora-rank", "4",
                 "--teacher", "{pipe}", "--student", "{pipe}"],
    # DMD2: the generator (w embedding added) and the fake score with its own AdamW sharded (a GAN head is refused)
    "dmd2": ["step-distill", "--method", "dmd2", "--fake-ratio", "1", "--teacher", "{pipe}", "--student", "{pipe}"],
}
# the weights after 3 AdamW steps at lr 1e-3: the losses agree within 1e-5, but AdamW's update g / (sqrt(v) + eps)
# moves a coordinate whose gradient is rounding-sized (|g| ~ eps = 1e-8: an exact zero in one run, 1e-9 in the other)
# by a fraction of the lr in one run only. docs/bench/fsdp2_tolerance.md (bench/bench_fsdp2_tolerance.py): progressive
# 8.9e-5 at eps 1e-8, the coordinate that differs most had a first-step gradient of 5.9e-9 (its tensor's median
# 3.4e-5); 3.2e-6 at eps 1e-5. `distill` averages it away with EMA 0.9; DMD2 adds its fake score's own AdamW
# (3.7e-4 measured 2026-12-03); PCM with a LoRA: 2.1e-5.
WEIGHTS_TOL = {"distill": 1e-5, "progressive": 2e-4, "pcm-lora": 2e-4, "dmd2": 1e-3}
LAUNCHED = """
import json, sys
from slimdiff.cli import main
runs, common, out = json.loads(sys.argv[1]), json.loads(sys.argv[2]), sys.argv[3]
for name, args in runs.items():  # 2 x batch 2, a sharded checkpoint after steps 1 and 2; then resumed from step 1
    assert main([*args, *common, "--batch-size", "2", "--checkpoint-every", "1", "--out", f"{out}/{name}"]) == 0
    assert main([*args, *common, "--batch-size", "2", "--out", f"{out}/{name}-back",
                 "--resume", f"{out}/{name}/checkpoints/checkpoint-1"]) == 0
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def records(out):
    return [{k: v for k, v in json.loads(line).items() if k != "time_s"}
            for line in (out / "train_log.jsonl").read_text().splitlines()]


def weights(out):
    return load_file(str(out / "diffusion_pytorch_model.safetensors"))


@pytest.fixture(scope="module")
def launched(tiny_pipe, student_dir, tmp_path_factory):
    """Every run of `RUNS` in one 2-process FSDP2 launch; its output directory."""
    out = tmp_path_factory.mktemp("fsdp2")
    runs = {name: [a.format(pipe=tiny_pipe, student=student_dir) for a in args] for name, args in RUNS.items()}
    script = out / "launched.py"
    script.write_text(LAUNCHED)
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
           str(ROOT / "examples" / "accelerate_fsdp2.yaml"), "--main_process_port", str(free_port()),
           str(script), json.dumps(runs), json.dumps(COMMON), str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore",
           "PYTHONPATH": os.pathsep.join([p for p in sys.path if p])}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out, runs


@pytest.mark.parametrize("name", list(RUNS))
def test_fsdp2_two_processes_match_one_and_resume_exactly(launched, name, tmp_path):
    out, runs = launched
    two, back = out / name, out / f"{name}-back"
    # 1. sharded checkpoints: each process's shard, no pickle, no full copy; the averages sharded too
    shards = sorted(p.name for p in (two / "checkpoints" / "checkpoint-1").iterdir())
    assert shards == ["lr_scheduler.json", "shard-0-of-2.json", "shard-0-of-2.safetensors", "shard-1-of-2.json",
                      "shard-1-of-2.safetensors", "train_state.json"]
    shard = load_file(str(two / "checkpoints" / "checkpoint-1" / "shard-0-of-2.safetensors"))
    averaged = {"distill": "state.ema.shadow.", "pcm-lora": "state.target.shadow.", "dmd2": "state.fake.model."}.get(name)
    if averaged:
        assert any(k.startswith(averaged) for k in shard)
    if name == "dmd2":  # the fake score's weights and AdamW moments: half of dim 0 in each shard
        other = load_file(str(two / "checkpoints" / "checkpoint-1" / "shard-1-of-2.safetensors"))
        for key in ("state.fake.model.fake.conv_in.weight", "state.fake.optimizer.state.0.exp_avg"):
            assert shard[key].shape[0] == other[key].shape[0] and shard[key].shape[1:] == other[key].shape[1:]
            assert not torch.equal(shard[key], other[key])
    # 2. the same global batch in 1 process: the same losses and weights within 1e-5
    one = tmp_path / "one"
    assert main([*runs[name], *COMMON, "--batch-size", "4", "--out", str(one)]) == 0
    assert len(records(one)) == len(records(two)) == 3
    for a, b in zip(records(one), records(two)):
        assert abs(a["loss"] - b["loss"]) <= 1e-5 * abs(a["loss"]), (a, b)
    w1, w2 = weights(one), weights(two)
    assert w1.keys() == w2.keys() and max((w1[k] - w2[k]).abs().max().item() for k in w1) < WEIGHTS_TOL[name]
    # 3. resumed from the step-1 shards: the uninterrupted run's log and weights, bit for bit
    assert records(back) == records(two)[1:]  # a new --out: its log starts at step 2
    w3 = weights(back)
    assert all(torch.equal(w2[k], w3[k]) for k in w2)
