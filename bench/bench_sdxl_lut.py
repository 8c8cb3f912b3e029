"""sdxl-arch at 1024 px (issue 23 item 3): params, FLOPs and per-unit latency (units and the inner
Transformer blocks) into a latency lookup table, then LAPTOP's knapsack at 50% of the parameters
and under a 50% latency budget from that table.

    flock /work/notes/cpu.lock python bench/bench_sdxl_lut.py --out docs/bench/sdxl_lut   # the committed run

sdxl-arch has random weights, so an output-loss score on it measures nothing: the knapsack here
uses the magnitude criterion (what the budget accounting and the table are checked with); the
output-loss criterion runs on a trained SDXL (`slimdiff prune PIPELINE --search laptop`) and on the
tiny SDXL of tests/prune/test_laptop_sdxl.py. CPU, float32, 1 thread, CPU-time clock (the machine
is shared), no warm-up and 1 timed round (each call at 1024 px takes seconds: the table's entries
are single measurements, not medians). Writes OUT.json (the table), OUT.md (the summary).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch
from diffusers import UNet2DConditionModel

from slimdiff.profile import LatencyLUT, ProfileSettings, profile_unet
from slimdiff.prune.criteria import MagnitudeCriterion, removable_units
from slimdiff.prune.laptop import Budget, laptop_select
from slimdiff.unet import load_unet, slim_view
from slimdiff.unet.builtins import BUILTIN_CONFIGS


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="docs/bench/sdxl_lut")
    p.add_argument("--resolution", type=int, default=1024)
    p.add_argument("--model", default="sdxl-arch", help="the teacher (a dry run: a tiny SDXL U-Net directory)")
    args = p.parse_args()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    start, load = time.time(), os.getloadavg()
    # 1. params and FLOPs on the meta device (no weights), at 1024 px
    if args.model in BUILTIN_CONFIGS:
        with torch.device("meta"):
            meta = UNet2DConditionModel(**BUILTIN_CONFIGS[args.model])
    else:
        meta = load_unet(args.model).to("meta")
    counts = profile_unet(meta, ProfileSettings(resolution=args.resolution, device="meta", measure_latency=False))
    teacher = slim_view(load_unet(args.model))  # shares the tensors: one 10 GB copy, not two
    # 2. the latency table: every unit signature, every Transformer's shell and inner blocks
    settings = ProfileSettings(resolution=args.resolution, threads=1, clock="cpu", warmup=0, repeats=1)
    lut = LatencyLUT.build(teacher, settings, progress=True)
    lut.save(out.with_suffix(".json"))
    # 3. the knapsack at 50% of the parameters and at 50% of the predicted latency
    crit = MagnitudeCriterion()
    candidates = removable_units(teacher)
    rows = {}
    for budget in (Budget("params", 0.5), Budget("latency", 0.5)):
        student, result = laptop_select(teacher, crit, budget, candidates=candidates, lut=lut)
        rows[str(budget)] = {"predicted_ratio": result.predicted_ratio, "measured_ratio": result.measured_ratio,
                             "params_ratio": result.measured_other["params"], "removed": len(result.removed),
                             "student_params": student.num_parameters(),
                             "student_ms": lut.predict(student)}
        del student
    summary = {
        "command": f"flock /work/notes/cpu.lock python bench/bench_sdxl_lut.py --out {args.out} --model {args.model}",
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "loadavg_at_start": load,
        "minutes": (time.time() - start) / 60, "resolution": args.resolution,
        "params": counts.total.params, "flops": counts.total.flops, "teacher_ms": lut.predict(teacher),
        "unit_entries": len(lut), "inner_entries": len(lut.inner), "candidates": len(candidates), "laptop": rows,
    }
    out.with_suffix(".summary.json").write_text(json.dumps(summary, indent=1))
    lines = [f"# sdxl-arch at {args.resolution} px: latency table and LAPTOP knapsack", "",
             f"`{summary['command']}` ({summary['date']}, load average {load[0]:.2f}, {summary['minutes']:.1f} min; "
             "CPU float32, 1 thread, CPU-time clock, 1 timed round: single measurements, no interval).", "",
             f"- parameters {counts.total.params:,}; FLOPs per forward {counts.total.flops / 1e12:.2f} T "
             "(2 x MACs, attention matmuls included)",
             f"- predicted latency per step (table) {summary['teacher_ms'] / 1e3:.1f} s; {len(lut)} unit entries, "
             f"{len(lut.inner)} Transformer shell/inner-block entries; {len(candidates)} candidates",
             "", "| budget | removed | predicted ratio | measured ratio | params ratio | student params | student s/step |",
             "|---|---|---|---|---|---|---|"]
    for b, r in rows.items():
        lines.append(f"| {b} | {r['removed']} | {r['predicted_ratio']:.3f} | {r['measured_ratio']:.3f} | "
                     f"{r['params_ratio']:.3f} | {r['student_params']:,} | {r['student_ms'] / 1e3:.1f} |")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
