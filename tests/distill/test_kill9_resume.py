"""kill -9 at three moments of a default `slimdiff distill` and a default `slimdiff step-distill`
(real CLI processes killed with SIGKILL), each time `--resume latest`: the final weights and the
log equal an uninterrupted run's, bit for bit.

One chain per command, 8 steps, a checkpoint every 2 (checkpoints are not a speed setting; every
speed setting, the RAM encoding cache included, is the default):
    run 1  killed in the middle of step 5 (its forward done, no update yet)  -> resumes from checkpoint-4
    run 2  killed while writing checkpoint-6 (weights written, not renamed)    -> resumes from checkpoint-4
    run 3  killed just after checkpoint-6 was renamed into place               -> resumes from checkpoint-6
    run 4  finishes steps 7-8
10 scenes, batch 4: an epoch is 2 steps of a seeded permutation's first 8 scenes, so every resumed
part starts with a cold RAM cache and encodes batches of other compositions than the straight run.

The kill comes from inside the process at an exact point (`os.kill(os.getpid(), SIGKILL)` from a
patched function; `KILLER` below), so the moments are deterministic; nothing runs after it (no
`finally`, no atexit). The uninterrupted run is the same command line in this process.
Slow for a unit test: each of the 4 child processes pays Python's, torch's and diffusers' imports;
58 s (`distill`) and 74 s (`step-distill`) at load average 2-3 on 2 cores, 2026-12-03.
"""

import json
import os
import signal
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from slimdiff.cli import main

# child: python -c KILLER MOMENT STEP slimdiff-args...; SIGKILLs itself at MOMENT of optimiser step STEP (1-based)
KILLER = """
import os, signal, sys
from slimdiff.train import checkpoint, loop

moment, at = sys.argv[1], int(sys.argv[2])
die = lambda: os.kill(os.getpid(), signal.SIGKILL)
if moment == "mid-step":  # after the forward of step `at`, before its backward and update
    step_of = loop.optimizer_step
    def optimizer_step(acc, model, opt, trainable, step, accum, clip, micro_step, timer=None):
        def micro(p):
            terms = micro_step(p)
            if step + 1 == at:
                die()
            return terms
        return step_of(acc, model, opt, trainable, step, accum, clip, micro, timer)
    loop.optimizer_step = optimizer_step
elif moment == "checkpoint-write":  # the weights are in .tmp-checkpoint-<at>; train_state.json is not
    write_json = checkpoint.write_json
    def write(path, value, *a, **k):
        if path.name == "train_state.json" and value.get("step") == at:
            die()
        return write_json(path, value, *a, **k)
    checkpoint.write_json = write
elif moment == "after-checkpoint":  # checkpoint-<at> renamed into place, nothing after it
    save = checkpoint.save_checkpoint
    def save_checkpoint(acc, root, step, *a, **k):
        out = save(acc, root, step, *a, **k)
        if step == at:
            die()
        return out
    checkpoint.save_checkpoint = save_checkpoint
from slimdiff.cli import main
sys.exit(main(sys.argv[3:]))
"""
CHAIN = [("mid-step", 5, 4), ("checkpoint-write", 6, 4), ("after-checkpoint", 6, 6)]  # (moment, step, resumes at)
STEPS = ["--data", "toy", "--toy-size", "10", "--batch-size", "4", "--max-steps", "8", "--lr", "1e-3", "--quiet"]


def killed(args: list[str], moment: str, step: int) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore",
           "PYTHONPATH": os.pathsep.join([p for p in sys.path if p])}
    proc = subprocess.run([sys.executable, "-c", KILLER, moment, str(step), *args], env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, (moment, proc.returncode, proc.stderr[-2000:])


def records(out):
    return [{k: v for k, v in json.loads(line).items() if k != "time_s"}
            for line in (out / "train_log.jsonl").read_text().splitlines()]


def checkpoints(out):
    return sorted(p.name for p in (out / "checkpoints").iterdir())


def kill_three_times_then_finish(command: list[str], tmp_path):
    """The chain above on `command` (a slimdiff command line without --out); the straight run's
    and the chain's output directories."""
    straight, chain = tmp_path / "straight", tmp_path / "chain"
    assert main([*command, "--out", str(straight), *STEPS]) == 0
    args = [*command, "--out", str(chain), *STEPS, "--checkpoint-every", "2"]
    for k, (moment, step, resumes_at) in enumerate(CHAIN):
        killed(args + (["--resume", "latest"] if k else []), moment, step)
        if moment == "checkpoint-write":  # the half-written checkpoint is there, under its temp name
            assert checkpoints(chain) == [".tmp-checkpoint-6", "checkpoint-2", "checkpoint-4"]
        assert max(int(n.split("-")[-1]) for n in checkpoints(chain) if n.startswith("checkpoint-")) == resumes_at
    assert main([*args, "--resume", "latest"]) == 0
    assert checkpoints(chain) == ["checkpoint-4", "checkpoint-6"]  # the temp dir was removed
    return straight, chain


def assert_bitwise_equal(straight, chain):
    assert records(chain) == records(straight) and [r["step"] for r in records(chain)] == list(range(1, 9))
    a = load_file(str(straight / "diffusion_pytorch_model.safetensors"))
    b = load_file(str(chain / "diffusion_pytorch_model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("command", ["distill", "step-distill"])
def test_kill9_three_times_then_resume_latest_is_bitwise_exact(command, tiny_pipe, student_dir, tmp_path):
    student = student_dir if command == "distill" else tiny_pipe  # step-distill: the teacher itself
    straight, chain = kill_three_times_then_finish(
        [command, "--teacher", str(tiny_pipe), "--student", str(student)], tmp_path)
    assert_bitwise_equal(straight, chain)
