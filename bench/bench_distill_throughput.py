"""Distillation throughput (steps/s) and peak memory, with and without latent/text caching.

    python bench/bench_distill_throughput.py                 # toy world, writes docs/bench/distill_throughput.md
    python bench/bench_distill_throughput.py --steps 40 --batch-size 32 --threads 2

Three runs of the same distillation (teacher -> its `bk-small` student, BK-SDM losses), each in
its own child process so its peak resident memory (`resource.getrusage`) is its own:
  1. no cache:    every step renders/loads images and runs the VAE encoder and text encoder;
  2. cache fill:  one epoch with --cache-dir, encoding every item once and writing it to disk;
  3. cache hit:   the same run as 1 with the filled cache: both encoders and image loading skipped.
Steps/s is measured on the steps after the first (`time_s` in the JSONL log), so set-up and
first-call overheads are excluded. On the toy world when its assets are installed, else on the
tiny test pipeline (said so in the output).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import resource
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def toy_available() -> bool:
    try:
        from slimdiff.toy import pipeline_path

        pipeline_path()
        return True
    except FileNotFoundError:
        return False


def run_one(settings: dict, queue) -> None:
    """Child process: one distillation; report steps/s, wall time and peak RSS."""
    import torch

    from slimdiff.distill import DistillConfig, distill
    from slimdiff.unet import apply_preset, load_pipeline

    threads = settings.pop("threads")
    if threads:
        torch.set_num_threads(threads)
    pipe = load_pipeline(settings["teacher"])
    student, _ = apply_preset(pipe.unet, "bk-small")
    t0 = time.perf_counter()
    result = distill(DistillConfig(**settings), teacher=pipe.unet, student=student, pipeline=pipe, progress=False)
    wall = time.perf_counter() - t0
    records = [json.loads(line) for line in result.log_path.read_text().splitlines() if line.strip()]
    times = [r["time_s"] for r in records]
    steady = (len(times) - 1) / (times[-1] - times[0]) if len(times) > 1 else float("nan")
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB
    queue.put({"steps": len(records), "steps_per_s": steady, "wall_s": wall, "peak_rss_mib": peak_mib,
               "final_loss": records[-1]["loss"], "trainable_params": result.trainable_params})


def child(settings: dict) -> dict:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=run_one, args=(settings, queue))
    proc.start()
    out = queue.get()
    proc.join()
    if proc.exitcode:
        raise RuntimeError(f"benchmark child failed with exit code {proc.exitcode}")
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=30, help="optimiser steps per measured run")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--toy-size", type=int, default=256, help="items in the data set (one cache-fill epoch)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--out", default=str(ROOT / "docs" / "bench" / "distill_throughput.md"))
    args = p.parse_args(argv)

    # 1. the teacher: the shipped toy pipeline, or the tiny test pipeline when it is not installed
    work = Path(tempfile.mkdtemp(prefix="bench-distill-"))
    if toy_available():
        teacher, world = "toy", "toy world (shipped pipeline)"
    else:
        from slimdiff.testing import tiny_pipeline

        teacher, world = str(tiny_pipeline(work / "tiny-pipe")), "tiny test pipeline (toy assets not installed)"
    base = dict(teacher=teacher, data="toy", toy_size=args.toy_size, batch_size=args.batch_size,
                checkpoint_every=0, seed=0, threads=args.threads)

    # 2. the three runs
    load_before = os.getloadavg()[0]
    rows = {}
    print(f"distillation throughput on the {world}: {args.steps} steps, batch {args.batch_size}")
    rows["no cache"] = child({**base, "out": str(work / "plain"), "max_steps": args.steps})
    print("  no cache  ", rows["no cache"])
    epoch = max(1, args.toy_size // args.batch_size)
    cache = str(work / "cache")
    rows["cache fill (1 epoch)"] = child({**base, "out": str(work / "fill"), "max_steps": epoch, "cache_dir": cache})
    print("  cache fill", rows["cache fill (1 epoch)"])
    rows["cache hit"] = child({**base, "out": str(work / "hit"), "max_steps": args.steps, "cache_dir": cache})
    print("  cache hit ", rows["cache hit"])
    speedup = rows["cache hit"]["steps_per_s"] / rows["no cache"]["steps_per_s"]

    # 3. the report
    import torch

    lines = [
        "# Distillation throughput: with and without latent/text-embedding caching",
        "",
        f"Written by `bench/bench_distill_throughput.py` on {time.strftime('%Y-%m-%d %H:%M')}.",
        f"Model: {world}; teacher -> `bk-small` student "
        f"({rows['no cache']['trainable_params']:,} trainable parameters); BK-SDM losses (task + output KD + "
        f"feature KD); global batch {args.batch_size}; {args.toy_size} toy training scenes.",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPU cores, torch {torch.__version__}, "
        f"threads {args.threads or torch.get_num_threads()}, load average before the runs "
        f"{load_before:.1f} (the cores are shared; absolute numbers vary with other jobs).",
        "",
        "| run | steps | steps/s (after step 1) | wall s (incl. set-up) | peak RSS MiB |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, r in rows.items():
        lines.append(f"| {name} | {r['steps']} | {r['steps_per_s']:.2f} | {r['wall_s']:.1f} | {r['peak_rss_mib']:.0f} |")
    lines += ["", f"Cache hit vs no cache: **{speedup:.2f}x** steps/s. The fill run pays the encoders once per item "
              "plus the disk writes; later epochs skip image rendering, the VAE encoder and the text encoder. "
              "The latent is still sampled every step from the cached distribution (mean, log-variance), so "
              "cached and uncached runs are the same computation (tests/distill/test_distill_trainer.py).", ""]
    out = Path(args.out)
    from slimdiff.io import atomic_write

    atomic_write(out, "\n".join(lines))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
