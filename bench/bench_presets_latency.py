"""UNet latency of sd15-arch and of each preset, in one run; speedup next to the FLOPs ratio;
the latency lookup table's prediction and its error (this also is the LUT-error benchmark).

    python bench/bench_presets_latency.py                       # 512px, batch 1, fp32, ~10-15 min on 2 cores
    python bench/bench_presets_latency.py --latent-size 16 --out /tmp/b   # quick smoke run

Steps: (1) build the teacher; (2) a latency lookup table from the teacher (each distinct unit
signature timed alone, plus the stem overhead); (3) for the teacher and every preset:
parameters and FLOPs (one counted forward), measured whole-U-Net latency (warm-up, median of
repeats), LUT prediction. A preset unit whose signature the teacher does not have is measured
into the table with `LatencyLUT.extend` first; the report says how many and how much of the
prediction they make up. Results: OUT.md and OUT.json.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import os
import platform
import time

import torch

from slimdiff.io import atomic_write, write_json
from slimdiff.profile import LatencyLUT, ProfileSettings, make_unet_inputs, profile_unet
from slimdiff.profile.latency import median, num_threads, time_model
from slimdiff.profile.units import list_units, text_width
from slimdiff.unet import PRESETS, apply_preset, load_unet


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--teacher", default="sd15-arch")
    p.add_argument("--presets", nargs="*", default=list(PRESETS), choices=list(PRESETS))
    p.add_argument("--resolution", type=int, default=512, help="pixels; latent = resolution // 8")
    p.add_argument("--latent-size", type=int, default=None)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--dtype", default="float32")
    p.add_argument("--threads", type=int, default=None, help="default: torch's (all cores)")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--repeats", type=int, default=3, help="timed calls per unit (LUT)")
    p.add_argument("--model-repeats", type=int, default=5, help="timed whole-U-Net forwards per model")
    p.add_argument("--out", default="docs/bench/presets_latency", help="writes OUT.md and OUT.json")
    return p.parse_args()


def load_note() -> str:
    """What else ran on the machine: 1-minute load average against the core count."""
    load1 = os.getloadavg()[0]
    return f"load average {load1:.2f} on {os.cpu_count()} cores"


def measure(model, settings: ProfileSettings, lut: LatencyLUT, model_repeats: int) -> dict:
    # 1. params and FLOPs (one forward under the FLOP counter)
    prof = profile_unet(model, ProfileSettings(**{**settings.__dict__, "measure_latency": False}))
    # 2. LUT: measure the signatures the table lacks (counted, so the report can say so)
    added = set(lut.extend(model))
    parts = lut.explain(model)
    predicted = sum(ms for _, _, ms in parts)
    added_ms = sum(ms for name, key, ms in parts if key in added and name != "other")
    # 3. measured whole forward
    units = list_units(model)
    inputs = make_unet_inputs(model, settings.latent, text_width(model, units), settings.batch, settings.context_length)
    with num_threads(settings.threads):
        samples = time_model(model, inputs, settings.warmup, model_repeats)
    return {
        "params": prof.total.params,
        "flops": prof.total.flops,
        "units": len(units),
        "latency_ms": median(samples),
        "latency_samples_ms": samples,
        "predicted_ms": predicted,
        "lut_entries_added": len([k for k in added if not k.startswith("stem")]),
        "lut_added_share": added_ms / predicted,
    }


def main() -> None:
    args = parse_args()
    t_start = time.time()
    notes = [f"start: {load_note()}"]

    # 1. teacher and settings (threads resolved now, so every timing uses the same number)
    teacher = load_unet(args.teacher)
    settings = ProfileSettings(
        resolution=args.resolution, latent_size=args.latent_size, batch=args.batch, dtype=args.dtype,
        threads=args.threads or torch.get_num_threads(), warmup=args.warmup, repeats=args.repeats,
    )
    if args.dtype != "float32":
        teacher = teacher.to(dtype=getattr(torch, args.dtype))

    # 2. the latency table, from the teacher alone
    t0 = time.time()
    lut = LatencyLUT.build(teacher, settings, progress=True)
    teacher_entries = len(lut)
    print(f"LUT: {teacher_entries} unit signatures from {args.teacher} in {time.time() - t0:.0f}s")

    # 3. teacher, then each preset (one student in memory at a time)
    rows = {args.teacher: measure(teacher, settings, lut, args.model_repeats)}
    print(f"{args.teacher}: {rows[args.teacher]['latency_ms']:.0f} ms")
    for name in args.presets:
        student, _ = apply_preset(teacher, name)
        rows[name] = measure(student, settings, lut, args.model_repeats)
        print(f"{name}: {rows[name]['latency_ms']:.0f} ms (LUT {rows[name]['predicted_ms']:.0f} ms)")
        del student
        gc.collect()
    notes.append(f"end: {load_note()}")

    # 4. ratios and report
    base = rows[args.teacher]
    for r in rows.values():
        r["speedup"] = base["latency_ms"] / r["latency_ms"]
        r["flops_ratio"] = base["flops"] / r["flops"]
        r["params_ratio"] = base["params"] / r["params"]
        r["lut_error"] = r["predicted_ms"] / r["latency_ms"] - 1
    meta = {
        "teacher": args.teacher,
        "settings": {**settings.__dict__, "latent_size": settings.latent, "model_repeats": args.model_repeats},
        "lut_unit_entries_from_teacher": teacher_entries,
        "torch": torch.__version__,
        "cpu": platform.processor() or platform.machine(),
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "wall_s": round(time.time() - t_start),
        "machine_load": notes,
    }
    write_json(args.out + ".json", {"meta": meta, "models": rows})
    atomic_write(args.out + ".md", render_md(meta, rows))
    print(render_md(meta, rows))


def render_md(meta: dict, rows: dict) -> str:
    s = meta["settings"]
    lines = [
        "# U-Net latency of the presets (`bench/bench_presets_latency.py`)",
        "",
        f"{meta['teacher']} and its presets at {s['resolution']}px (latent {s['latent_size']}x{s['latent_size']}), "
        f"batch {s['batch']}, {s['dtype']}, CPU ({meta['cpu']}), {s['threads']} threads, torch {meta['torch']}; "
        f"whole U-Net forward: warm-up {s['warmup']}, median of {s['model_repeats']}; LUT units: median of "
        f"{s['repeats']}. FLOPs = 2 x MACs (attention matmuls included). {meta['date']}, {meta['wall_s']} s.",
        "",
        "| model | params (M) | GFLOPs | FLOPs ratio | latency (ms) | speedup | LUT predicted (ms) | LUT error | LUT entries added |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, r in rows.items():
        added = f"{r['lut_entries_added']} ({100 * r['lut_added_share']:.0f}% of pred.)" if r["lut_entries_added"] else "0"
        lines.append(
            f"| {name} | {r['params'] / 1e6:.1f} | {r['flops'] / 1e9:.1f} | {r['flops_ratio']:.2f}x | "
            f"{r['latency_ms']:.0f} | {r['speedup']:.2f}x | {r['predicted_ms']:.0f} | {100 * r['lut_error']:+.1f}% | {added} |"
        )
    lines += [
        "",
        "- speedup = teacher latency / model latency; FLOPs ratio = teacher FLOPs / model FLOPs.",
        f"- LUT: built from {meta['teacher']} alone ({meta['lut_unit_entries_from_teacher']} unit signatures + stem "
        "overhead); a preset unit with a signature the teacher lacks is measured into the table first "
        "(`LatencyLUT.extend`), counted in the last column. Error = predicted / measured - 1.",
        f"- Machine: {'; '.join(meta['machine_load'])}. Other jobs shared the cores when the load exceeds "
        "the core count: absolute numbers are noisy, compare ratios within this run.",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
