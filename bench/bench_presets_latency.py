"""U-Net latency of sd15-arch and of each preset, in one run: speedup next to the FLOPs ratio,
and the latency lookup table's prediction and its error (this is also the LUT-error benchmark).

    python bench/bench_presets_latency.py                                   # 512px, batch 1, fp32
    python bench/bench_presets_latency.py --latent-size 16 --out /tmp/b     # quick smoke run

Steps: (1) build the teacher; (2) build every preset and count parameters and FLOPs (one
forward under the FLOP counter, which also serves as the warm-up); (3) a latency lookup table
from the teacher alone (each distinct unit signature timed on its real inputs, plus the stem
overhead) and its prediction for every model (a unit signature the teacher lacks is measured
into the table with `LatencyLUT.extend` first, and reported); (4) time the whole U-Net forward
of all models round-robin (round r runs each model once) so that all see the same machine
load; medians.

Clock: by default one thread and process CPU time (`--clock cpu`): this machine is shared, and
CPU time leaves out the time other jobs hold the core, so it estimates the latency of an
unloaded core; elapsed (wall-clock) times of the same forwards are recorded beside it.
Results: OUT.md, OUT.json and the table OUT_lut.json.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import time
from dataclasses import asdict, replace

import torch

from slimdiff.io import atomic_write, write_json
from slimdiff.profile import LatencyLUT, ProfileSettings, make_unet_inputs, profile_unet
from slimdiff.profile.latency import CLOCKS, median, num_threads
from slimdiff.unet import PRESETS, apply_preset, list_units, load_unet, text_width


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--teacher", default="sd15-arch")
    p.add_argument("--presets", nargs="*", default=list(PRESETS), choices=list(PRESETS))
    p.add_argument("--resolution", type=int, default=512, help="pixels; latent = resolution // 8")
    p.add_argument("--latent-size", type=int, default=None, help="overrides resolution // 8")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    p.add_argument(
        "--threads", type=int, default=1,
        help="torch threads (default 1: on a shared machine one thread gives stable ratios; two threads "
        "wait on each other whenever another job holds a core. Pass 2 on an idle 2-core machine)",
    )
    p.add_argument(
        "--clock", choices=["cpu", "wall"], default="cpu",
        help="clock of the LUT and of the main columns (default cpu: process CPU time, needs --threads 1; on a "
        "shared machine it leaves out the time other jobs hold the core). Both clocks are recorded.",
    )
    p.add_argument("--warmup", type=int, default=1, help="untimed rounds before the LUT's unit timings")
    p.add_argument("--repeats", type=int, default=3, help="timed rounds of the LUT's unit timings")
    p.add_argument("--model-repeats", type=int, default=5, help="timed rounds of the whole-U-Net forwards")
    p.add_argument("--out", default="docs/bench/presets_latency", help="writes OUT.md and OUT.json")
    return p.parse_args()


def load_note() -> str:
    """What else ran on the machine: 1-minute load average against the core count."""
    return f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores"


def main() -> None:
    args = parse_args()
    t_start = time.time()
    notes = [f"start: {load_note()}"]

    # 1. teacher and settings
    teacher = load_unet(args.teacher)
    if args.dtype != "float32":
        teacher = teacher.to(dtype=getattr(torch, args.dtype))
    settings = ProfileSettings(
        resolution=args.resolution, latent_size=args.latent_size, batch=args.batch, dtype=args.dtype,
        threads=args.threads, warmup=args.warmup, repeats=args.repeats, clock=args.clock,
    )

    # 2. every model in memory; params and FLOPs (one counted forward each, also the warm-up)
    models = {args.teacher: teacher} | {name: apply_preset(teacher, name)[0] for name in args.presets}
    rows, inputs = {}, {}
    for name, model in models.items():
        prof = profile_unet(model, replace(settings, measure_latency=False))
        units = list_units(model)
        inputs[name] = make_unet_inputs(model, settings.latent, text_width(model), settings.batch)
        rows[name] = {"params": prof.total.params, "flops": prof.total.flops, "units": len(units)}
        print(f"{name}: {prof.total.params / 1e6:.1f} M params, {prof.total.flops / 1e9:.1f} GFLOPs")

    # 3. the latency table, from the teacher alone (distinct unit signatures + stem overhead),
    #    timed after the models are built: CPU forwards speed up once the allocator has
    #    served a few large tensors, so table and round-robin run in the same process state
    t0 = time.time()
    lut = LatencyLUT.build(teacher, settings, progress=True)
    teacher_entries = len(lut)
    print(f"LUT: {teacher_entries} unit signatures from {args.teacher} in {time.time() - t0:.0f}s")
    for name, model in models.items():  # predictions (signatures the teacher lacks measured in first)
        added = set(lut.extend(model))
        parts = lut.explain(model)  # [(unit name, signature key, ms), ..., ("other", stem key, ms)]
        predicted = sum(ms for _, _, ms in parts)
        rows[name].update(
            predicted_ms=predicted,
            lut_entries_added=len([k for k in added if not k.startswith("stem")]),
            lut_added_share=sum(ms for n, k, ms in parts if k in added and n != "other") / predicted,
        )
        print(f"{name}: LUT {predicted:.0f} ms")

    # 4. measured whole forwards, round-robin over the models so that all see the same load;
    #    both clocks at once (the LUT's clock gives the main columns)
    times = {c: {name: [] for name in models} for c in CLOCKS}
    with num_threads(settings.threads) as threads, torch.inference_mode():
        for r in range(args.model_repeats):
            for name, model in models.items():
                t0 = {c: now() for c, now in CLOCKS.items()}
                inputs[name](model)
                for c, now in CLOCKS.items():
                    times[c][name].append((now() - t0[c]) * 1e3)
            print(f"round {r + 1}/{args.model_repeats}")
    notes.append(f"end: {load_note()}")
    lut.save(args.out + "_lut.json")

    # 5. ratios and report
    main_times = times[settings.clock]
    base = rows[args.teacher]
    base_ms = median(main_times[args.teacher])
    for name, r in rows.items():
        r["latency_ms"] = median(main_times[name])
        r["latency_samples_ms"] = {c: times[c][name] for c in CLOCKS}
        r["latency_median_ms"] = {c: median(times[c][name]) for c in CLOCKS}
        r["speedup"] = base_ms / r["latency_ms"]
        r["speedup_by_clock"] = {c: median(times[c][args.teacher]) / median(times[c][name]) for c in CLOCKS}
        r["flops_ratio"] = base["flops"] / r["flops"]
        r["params_ratio"] = base["params"] / r["params"]
        r["lut_error"] = r["predicted_ms"] / r["latency_ms"] - 1
        r["predicted_speedup"] = base["predicted_ms"] / r["predicted_ms"]
        r["speedup_error"] = r["predicted_speedup"] / r["speedup"] - 1
    meta = {
        "teacher": args.teacher,
        "settings": {**asdict(settings), "threads": threads, "latent_size": settings.latent,
                     "model_repeats": args.model_repeats},
        "lut_unit_entries_from_teacher": teacher_entries,
        "lut_overhead_ms": list(lut.overhead.values()),
        "torch": torch.__version__,
        "cpu": platform.processor() or platform.machine(),
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "wall_s": round(time.time() - t_start),
        "machine_load": notes,
    }
    write_json(args.out + ".json", {"meta": meta, "models": rows})
    atomic_write(args.out + ".md", render_md(meta, rows))
    print(render_md(meta, rows))


CLOCK_NOTE = {"cpu": " (process CPU time with one thread: the latency of an unloaded core; other jobs' time on the core "
                     "is left out)"}


def render_md(meta: dict, rows: dict) -> str:
    s = meta["settings"]
    lines = [
        "# U-Net latency of the presets (`bench/bench_presets_latency.py`)",
        "",
        f"{meta['teacher']} and its presets at {s['resolution']}px (latent {s['latent_size']}x{s['latent_size']}), "
        f"batch {s['batch']}, {s['dtype']}, CPU ({meta['cpu']}), {s['threads']} thread(s), torch {meta['torch']}, "
        f"clock: {s['clock']}{CLOCK_NOTE.get(s['clock'], '')}. Whole U-Net forward: median of {s['model_repeats']} "
        f"rounds (round-robin over the models, after one warm-up forward each). LUT unit entries: median of "
        f"{s['repeats']}. FLOPs = 2 x MACs, attention matmuls included. Run {meta['date']}, {meta['wall_s']} s.",
        "",
        "| model | params (M) | GFLOPs | FLOPs ratio | latency (ms) | speedup | wall-clock speedup | LUT predicted (ms) "
        "| LUT error | LUT speedup | LUT speedup error | LUT entries added |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, r in rows.items():
        added = f"{r['lut_entries_added']} ({100 * r['lut_added_share']:.0f}% of pred.)" if r["lut_entries_added"] else "0"
        lines.append(
            f"| {name} | {r['params'] / 1e6:.1f} | {r['flops'] / 1e9:.1f} | {r['flops_ratio']:.2f}x | "
            f"{r['latency_ms']:.0f} | {r['speedup']:.2f}x | {r['speedup_by_clock']['wall']:.2f}x | {r['predicted_ms']:.0f} | "
            f"{100 * r['lut_error']:+.1f}% | {r['predicted_speedup']:.2f}x | {100 * r['speedup_error']:+.1f}% | {added} |"
        )
    lines += [
        "",
        "- speedup = teacher median / model median (main clock); wall-clock speedup = the same from elapsed "
        "times of the same forwards; FLOPs ratio = teacher FLOPs / model FLOPs.",
        f"- LUT: built from {meta['teacher']} alone ({meta['lut_unit_entries_from_teacher']} unit signatures + stem "
        "overhead), just before the round-robin timings; a preset unit whose signature the teacher lacks is measured "
        f"into the table first (`LatencyLUT.extend`, last column). The table is saved next to this file "
        f"(`_lut.json`); its stem overhead (whole - sum of units) is {meta['lut_overhead_ms'][0]:.0f} ms. LUT error = predicted / measured median - 1: "
        "it includes any change of machine load between the table's timings and the round-robin ones (the "
        "teacher's own row shows that drift). LUT speedup = predicted(teacher) / predicted(model); its error "
        "against the measured speedup is free of that drift, and is what a search comparing candidates uses.",
        f"- Machine: {'; '.join(meta['machine_load'])}. A load above the core count means other jobs shared "
        "the cores: absolute numbers are noisy; compare ratios within this run.",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
