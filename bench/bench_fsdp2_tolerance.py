"""Why FSDP2's weights differ from a 1-process run's by more than its losses (tests/distill/test_fsdp2.py's WEIGHTS_TOL).

    python bench/bench_fsdp2_tolerance.py --out docs/bench/fsdp2_tolerance     # ~2 min on 2 cores

The test's SnapFusion progressive `step-distill` (the tiny test pipeline as teacher and student, 3 AdamW steps at
lr 1e-3, 16 toy scenes at 16x16, global batch 4) runs once in 2 CPU processes under FSDP2 (2 x batch 2, gloo,
examples/accelerate_fsdp2.yaml) and once in 1 process (batch 4), at AdamW's default eps 1e-8 and at each other
`--eps`. Reported per eps: the largest relative loss difference, the largest weight difference and the weights
that differ most, with the size of their gradient at the first step (1 process).

The mechanism this measures: the two runs' gradients agree to rounding (a different reduction order: the mean of
two half-batch means against one mean, FSDP2's reduce-scatter), but AdamW's first update is
lr * g / (|g| + eps) per coordinate, so a coordinate whose gradient is itself rounding-sized (|g| of order eps or
less: an exact zero in one run, 1e-10 in the other) moves by a fraction of lr in one run and not in the other.
A larger eps makes the update linear in such g: the weight difference falls to the rounding of the others.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SETTINGS = dict(steps=2, teacher_steps=8, schedule="progressive", data="toy", toy_size=8, max_steps=3,
                learning_rate=1e-3, cpu=True)  # the test's "progressive" run
LAUNCHED = """
import json, sys
from slimdiff.distill.step import StepDistillConfig, step_distill
settings, epsilons, pipe, out, batch = json.loads(sys.argv[1]), json.loads(sys.argv[2]), sys.argv[3], sys.argv[4], int(sys.argv[5])
for eps in epsilons:
    step_distill(StepDistillConfig(teacher=pipe, student=pipe, out=f"{out}/eps-{eps}", batch_size=batch,
                                   adam_epsilon=eps, checkpoint_every=0, **settings), progress=False)
"""


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--eps", type=float, nargs="+", default=[1e-8, 1e-6, 1e-5], help="AdamW eps values (1e-8: default)")
    p.add_argument("--out", default="docs/bench/fsdp2_tolerance", help="writes OUT.md and OUT.json")
    p.add_argument("--work", default=None, help="run directory (default: a temporary one)")
    return p.parse_args()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(work: Path, pipe: Path, epsilons: list[float], processes: int) -> None:
    """Every eps's run in one launch of `processes` processes (FSDP2 when 2), global batch 4."""
    script = work / "launched.py"
    script.write_text(LAUNCHED)
    args = [str(script), json.dumps(SETTINGS), json.dumps(epsilons), str(pipe), str(work / f"p{processes}"),
            str(4 // processes)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore",
           "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), *[p for p in sys.path if p]])}
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
           str(ROOT / "examples" / "accelerate_fsdp2.yaml"), "--main_process_port", str(free_port()), *args] \
        if processes == 2 else [sys.executable, *args]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    if proc.returncode:
        raise RuntimeError(f"{processes}-process run failed:\n{proc.stderr[-3000:]}")


def first_gradients(pipe: Path, work: Path) -> dict:
    """name -> the first step's (clipped) gradient in 1 process, read as the trainer's AdamW steps."""
    import torch

    from slimdiff.distill.step import StepDistillConfig, StepTrainer

    grads: dict = {}
    original = torch.optim.AdamW.step

    def record(self, *a, **k):  # the first optimiser step: read the (clipped) gradients, then step as usual
        if not grads:
            names = {id(p): n for n, p in trainer.student.named_parameters()}
            for group in self.param_groups:
                for p in group["params"]:
                    if p.grad is not None:
                        grads[names.get(id(p), "?")] = p.grad.detach().clone()
        return original(self, *a, **k)

    torch.optim.AdamW.step = record
    try:
        cfg = StepDistillConfig(teacher=str(pipe), student=str(pipe), out=str(work / "grads"), batch_size=4,
                                checkpoint_every=0, **SETTINGS)
        trainer = StepTrainer(cfg, progress=False)
        trainer.run()
    finally:
        torch.optim.AdamW.step = original
    return grads


def compare(work: Path, eps: float, grads: dict) -> dict:
    from safetensors.torch import load_file

    one, two = work / "p1" / f"eps-{eps}", work / "p2" / f"eps-{eps}"
    logs = [[json.loads(line)["loss"] for line in (d / "train_log.jsonl").read_text().splitlines()] for d in (one, two)]
    w1, w2 = (load_file(str(d / "diffusion_pytorch_model.safetensors")) for d in (one, two))
    diff = {k: (w1[k] - w2[k]).abs().max().item() for k in w1}
    top = sorted(diff, key=lambda k: -diff[k])[:5]

    def at(k):  # the first-step gradient at the coordinate that differs most, and the tensor's median |g|
        if k not in grads:
            return None, None
        i = (w1[k] - w2[k]).abs().flatten().argmax()
        return grads[k].flatten()[i].item(), grads[k].abs().median().item()

    return {"eps": eps, "loss_rel_diff": max(abs(a - b) / abs(a) for a, b in zip(*logs)),
            "weight_max_diff": max(diff.values()),
            "top": [{"weight": k, "diff": diff[k], "first_grad_there": at(k)[0], "first_grad_median": at(k)[1]}
                    for k in top]}


def main() -> None:
    args = parse_args()
    epsilons = sorted(set(args.eps))
    from slimdiff.testing import tiny_pipeline

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.work or tmp)
        work.mkdir(parents=True, exist_ok=True)
        pipe = tiny_pipeline(work / "pipe", seed=0)
        load0 = os.getloadavg()
        run(work, pipe, epsilons, 2)
        run(work, pipe, epsilons, 1)
        grads = first_gradients(pipe, work)
        rows = [compare(work, eps, grads) for eps in epsilons]
        load1 = os.getloadavg()
    import torch

    when = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = ["# FSDP2 against 1 process: why the weights differ more than the losses", "",
             f"`python bench/bench_fsdp2_tolerance.py --eps {' '.join(f'{e:g}' for e in epsilons)}`, {when}; "
             f"{platform.machine()}, torch {torch.__version__}, 1 thread per process; load average before "
             f"{load0[0]:.2f}, after {load1[0]:.2f}. The mechanism and the runs: the module doc of the script.", "",
             "| AdamW eps | largest relative loss difference | largest weight difference | weights that differ most "
             "(difference; first-step gradients) |", "|---:|---:|---:|---|"]
    for r in rows:
        top = "; ".join(f"`{t['weight']}` {t['diff']:.1e} (g there {t['first_grad_there']:.1e}, median |g| "
                        f"{t['first_grad_median']:.1e})" if t["first_grad_there"] is not None
                        else f"`{t['weight']}` {t['diff']:.1e}" for t in r["top"][:3])
        lines.append(f"| {r['eps']:g} | {r['loss_rel_diff']:.1e} | {r['weight_max_diff']:.1e} | {top} |")
    lines += ["", "g there: the 1-process run's first-step gradient at the coordinate that differs most; median |g|: "
              "over that tensor.", ""]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".md").write_text("\n".join(lines))
    out.with_suffix(".json").write_text(json.dumps({"rows": rows, "load": [load0, load1], "written": when}, indent=1))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
