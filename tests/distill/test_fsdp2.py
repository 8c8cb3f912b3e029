"""FSDP2 across 2 CPU processes (gloo), launched with examples/accelerate_fsdp2.yaml: the student,
its optimiser state and its EMA are sharded; losses equal a 1-process run with the same global
batch; a sharded checkpoint resumes bit for bit (see slimdiff.train.sharded).

Slow on a loaded machine (every FSDP2 all-gather and reduce-scatter is a gloo collective between two
processes that compete for the cores): about 4 minutes at load average 7.5 on 2 cores, 2026-12-03.
"""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

from slimdiff.distill import distill

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(tiny_pipe, student_dir, out, *extra):
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
           str(ROOT / "examples" / "accelerate_fsdp2.yaml"), "--main_process_port", str(free_port()),
           "-m", "slimdiff", "distill", "--cpu", "--teacher", str(tiny_pipe), "--student", str(student_dir),
           "--data", "toy", "--toy-size", "8", "--out", str(out), "--max-steps", "3", "--batch-size", "2",
           "--lr", "1e-3", "--ema-decay", "0.9", "--quiet", *extra]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0 and (out / "diffusion_pytorch_model.safetensors").is_file(), proc.stderr[-3000:]


def records(out):
    return [{k: v for k, v in json.loads(line).items() if k != "time_s"}
            for line in (out / "train_log.jsonl").read_text().splitlines()]


def test_fsdp2_two_processes_match_one_and_resume_exactly(make_config, tiny_pipe, student_dir, tmp_path):
    # 1. 2 processes x batch 2, FSDP2, EMA on, sharded checkpoints after steps 1 and 2
    two = tmp_path / "two"
    launch(tiny_pipe, student_dir, two, "--checkpoint-every", "1")
    shards = sorted(p.name for p in (two / "checkpoints" / "checkpoint-1").iterdir())
    assert shards == ["lr_scheduler.json", "shard-0-of-2.json", "shard-0-of-2.safetensors", "shard-1-of-2.json",
                      "shard-1-of-2.safetensors", "train_state.json"]  # no pickle, no full copy
    ema = load_file(str(two / "checkpoints" / "checkpoint-1" / "shard-0-of-2.safetensors"))
    assert any(k.startswith("state.ema.shadow.") for k in ema)  # the EMA is sharded like the parameters

    # 2. the same global batch in 1 process: the same losses and weights (EMA weights) within 1e-5
    one = distill(make_config(tmp_path / "one", toy_size=8, max_steps=3, batch_size=4, ema_decay=0.9),
                  progress=False)
    for a, b in zip(records(one.out), records(two)):
        assert abs(a["loss"] - b["loss"]) <= 1e-5 * abs(a["loss"]), (a, b)
    w1, w2 = load_file(str(one.out / "diffusion_pytorch_model.safetensors")), \
        load_file(str(two / "diffusion_pytorch_model.safetensors"))
    assert w1.keys() == w2.keys() and max((w1[k] - w2[k]).abs().max().item() for k in w1) < 1e-5

    # 3. resumed from the step-1 shards: the uninterrupted run's log and weights, bit for bit
    back = tmp_path / "back"
    launch(tiny_pipe, student_dir, back, "--resume", str(two / "checkpoints" / "checkpoint-1"))
    assert records(back) == records(two)[1:]  # a new --out: its log starts at step 2
    w3 = load_file(str(back / "diffusion_pytorch_model.safetensors"))
    assert all(torch.equal(w2[k], w3[k]) for k in w2)
