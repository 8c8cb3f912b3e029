"""2 CPU processes (accelerate launch, gloo) against 1 process with the same global batch.

One launch covers both directions of resuming: the 2-process run resumes from a checkpoint
written by 1 process, takes 2 steps (writing its own checkpoint), and 1 process then resumes
from that. Every stage must agree with the uninterrupted 1-process run.
"""

import json
import os
import socket
import subprocess
import sys

from safetensors.torch import load_file

from slimdiff.distill import distill


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def weights(out):
    return load_file(str(out / "diffusion_pytorch_model.safetensors"))


def records(out):
    return [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]


def assert_close(a, b, atol=2e-5):
    worst = max((a[k] - b[k]).abs().max().item() for k in a)
    assert worst < atol, f"largest parameter difference {worst}"


def test_two_processes_match_one_and_checkpoints_cross_over(make_config, tiny_pipe, student_dir, tmp_path):
    # 1. reference: 1 process, batch 4, 3 steps, checkpoints after steps 1 and 2
    one = distill(make_config(tmp_path / "one", batch_size=4, max_steps=3, checkpoint_every=1), progress=False)

    # 2. 2 processes x batch 2 resume from 1 process's step-1 checkpoint, run steps 2-3
    two = tmp_path / "two"
    # accelerate's multi-process launcher (torchrun); our --cpu makes each process a gloo CPU worker
    # (`accelerate launch --cpu` itself would start a single process unless mpirun is set up)
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "--main_process_port", str(free_port()), "-m", "slimdiff", "distill", "--cpu", "--teacher", str(tiny_pipe), "--student", str(student_dir), "--data", "toy",
           "--toy-size", "16", "--out", str(two), "--max-steps", "3", "--batch-size", "2", "--lr", "1e-3",
           "--checkpoint-every", "2", "--resume", str(tmp_path / "one" / "checkpoints" / "checkpoint-1"), "--quiet"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=170)
    assert proc.returncode == 0 and (two / "diffusion_pytorch_model.safetensors").is_file(), proc.stderr[-3000:]
    assert json.loads((two / "recipe.json").read_text())["distill"]["num_processes"] == 2
    assert_close(weights(one.out), weights(two))
    ref = {r["step"]: r for r in records(one.out)}
    for r in records(two):
        assert r["step"] in (2, 3)
        assert abs(r["loss"] - ref[r["step"]]["loss"]) < 1e-4 * abs(ref[r["step"]]["loss"])

    # 3. 1 process resumes from the 2-process step-2 checkpoint
    back = distill(make_config(tmp_path / "back", batch_size=4, max_steps=3,
                               resume=str(two / "checkpoints" / "checkpoint-2")), progress=False)
    assert_close(weights(one.out), weights(back.out))
    state = json.loads((two / "checkpoints" / "checkpoint-2" / "train_state.json").read_text())
    assert state["num_processes"] == 2 and state["micro_batch_global"] == 4
