"""LAPTOP-Diff one-shot pruning on the toy world: against bk-small, against the baselines, and
the additivity of its criterion (issue 5's closing tables).

    python bench/bench_laptop.py                                   # everything, toy world
    python bench/bench_laptop.py --distill-steps 0 --eval-images 32   # no distillation, quicker
    python bench/bench_laptop.py --teacher PIPE --no-eval --out /tmp/l  # smoke run: no judge needed

Steps: (1) the toy teacher and its calibration set (toy prompts, rendered images, spread
timesteps, fixed noise); (2) scores of every removable unit by the output-loss criterion,
parameter magnitude and random; (3) bk-small and the LAPTOP student at bk-small's parameter
ratio, each evaluated (alignment, judge-FID on the test split, measured U-Net latency) before
and after distillation with the same settings; (4) pruning ratios 0.3/0.5/0.7 of parameters:
the student chosen with each criterion, its alignment without retraining and its output loss
L(S); (5) additivity: real L(S) vs sum L({u}) over random sets, Pearson and Spearman.
Results: OUT.md, OUT.json, OUT_additivity.png, OUT_scores.png.
"""

from __future__ import annotations

import argparse
import copy
import datetime
import os
import platform
import tempfile
import time

import torch

from slimdiff.demo import DEMO_DISTILL, demo_distill_settings
from slimdiff.distill import DistillConfig, distill
from slimdiff.eval.compare import compare
from slimdiff.io import atomic_write, write_json
from slimdiff.prune.additivity import additivity_study, plot_additivity
from slimdiff.prune.calibration import CalibrationConfig, toy_calibration
from slimdiff.prune.criteria import MagnitudeCriterion, OutputLossCriterion, RandomCriterion, removable_units
from slimdiff.prune.laptop import Budget, laptop_select
from slimdiff.profile import model_latencies
from slimdiff.prune.report import plot_unit_scores
from slimdiff.report.tables import format_ci
from slimdiff.unet import apply_preset, load_unet, text_width, to_slim
from slimdiff.sample import load_pipeline


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--teacher", default="toy", help="the toy pipeline (or a pipeline with the toy tokenizer)")
    p.add_argument("--calib-size", type=int, default=32)
    p.add_argument("--ratios", type=float, nargs="+", default=[0.3, 0.5, 0.7], help="pruning ratios of params")
    p.add_argument("--eval-images", type=int, default=256, help="test-split images per model (one paired comparison)")
    p.add_argument("--eval-steps", type=int, default=20, help="sampler steps per image")
    p.add_argument("--distill-steps", type=int, default=600, help="same for both students; 0: no distillation")
    # the distillation settings of `slimdiff demo` (slimdiff.demo.DEMO_DISTILL), so the figures compare
    p.add_argument("--distill-batch", type=int, default=DEMO_DISTILL["batch_size"])
    p.add_argument("--distill-lr", type=float, default=DEMO_DISTILL["learning_rate"])
    p.add_argument("--feat-loss", choices=["plain", "normalized"], default=DEMO_DISTILL["feat_loss"])
    p.add_argument("--additivity-sizes", type=int, nargs="+", default=[2, 4, 8])
    p.add_argument("--sets-per-size", type=int, default=8)
    p.add_argument("--latency-repeats", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-eval", action="store_true", help="skip generation metrics and distillation (smoke run)")
    p.add_argument("--out", default="docs/bench/laptop", help="writes OUT.md, OUT.json and PNGs")
    return p.parse_args()


def evaluate_unet(args, unet, ctx: int, timed: dict, key: str) -> dict:
    """Params now; the model joins `timed` (the round-robin latency measurement and the one paired
    comparison of generation metrics at the end: every model on the same prompts and noise)."""
    timed[key] = unet
    return {"params": unet.num_parameters()}


def distill_student(args, teacher, student, name: str):
    out = os.path.join(tempfile.mkdtemp(prefix="bench_laptop_"), name)
    fields = demo_distill_settings(args.distill_steps, batch_size=args.distill_batch, learning_rate=args.distill_lr,
                                   feat_loss=args.feat_loss, seed=args.seed, cpu=False)  # cpu: the device as before
    cfg = DistillConfig(teacher=None, student=None, pipeline=args.teacher, out=out, checkpoint_every=0,
                        cache_dir=os.path.join(tempfile.gettempdir(), "bench_laptop_cache"), **fields)
    return distill(cfg, teacher=copy.deepcopy(teacher), student=copy.deepcopy(student), progress=True).student.eval()


def main() -> None:
    args = parse_args()
    t_start = time.time()
    load = [f"start: load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores"]

    # 1. teacher, calibration set, candidates
    teacher = to_slim(load_unet(args.teacher)).eval()
    pipe = load_pipeline(args.teacher)
    ctx = int(pipe.tokenizer.model_max_length)
    calib = toy_calibration(pipe, CalibrationConfig(size=args.calib_size, seed=args.seed))
    output = OutputLossCriterion(calib)
    candidates = removable_units(teacher)
    print(f"teacher: {teacher.num_parameters():,} params, {len(candidates)} removable units")

    # 2. scores, once per criterion (the knapsack reuses them at every budget)
    t0 = time.time()
    scores = {"output": output(teacher, candidates)}
    print(f"output-loss scores: {time.time() - t0:.0f}s")
    scores["magnitude"] = MagnitudeCriterion()(teacher, candidates)
    scores["random"] = RandomCriterion(args.seed)(teacher, candidates)
    plot_unit_scores(args.out + "_scores.png", scores["output"], (), [u.name for u in teacher.units()],
                     "output-loss criterion L({u}), toy teacher")

    # 3. bk-small vs LAPTOP at bk-small's parameter ratio, before/after distillation
    bk, _ = apply_preset(teacher, "bk-small")
    bk_ratio = 1 - bk.num_parameters() / teacher.num_parameters()
    lap, lap_res = laptop_select(teacher, scores["output"], Budget("params", bk_ratio), candidates=candidates)
    timed: dict = {}  # key -> model, timed together at the end
    versus = {"teacher": {"before": evaluate_unet(args, teacher, ctx, timed, "teacher")}}
    for name, student in (("bk-small", bk), ("laptop", lap)):
        row = {"before": evaluate_unet(args, student, ctx, timed, name), "L(S)": output.loss_of_model(teacher, student)}
        if not args.no_eval and args.distill_steps > 0:
            row["after"] = evaluate_unet(args, distill_student(args, teacher, student, name), ctx, timed,
                                         f"{name}/after")
        versus[name] = row
        print(name, row)
    versus["laptop"]["removed"] = lap_res.removed

    # 4. criteria at several pruning ratios (no retraining)
    ratios = {}
    for ratio in args.ratios:
        for crit, sc in scores.items():
            student, res = laptop_select(teacher, sc, Budget("params", ratio), candidates=candidates)
            row = evaluate_unet(args, student, ctx, timed, f"{ratio:g}/{crit}")
            row.update({"L(S)": output.loss_of_model(teacher, student), "removed": res.removed,
                        "measured_ratio": res.measured_ratio, "repairs": len(res.repairs)})
            ratios[f"{ratio:g}/{crit}"] = row
            print(f"ratio {ratio:g} {crit}: L(S)={row['L(S)']:.4g}")

    # 5. latency of every model above: whole U-Net forward, batch 1, one thread, round-robin
    cross = text_width(teacher)
    ms = model_latencies(timed, teacher.config.sample_size, cross, batch=1, context_length=ctx, warmup=1,
                         repeats=args.latency_repeats, threads=1)
    for name in ("teacher", "bk-small", "laptop"):  # the pruned students' latency (same as after distillation)
        versus[name]["latency_ms"] = ms[name]
    for key, row in ratios.items():
        row["latency_ms"] = ms[key]

    # 6. generation metrics of every model in one paired comparison (same prompts and noise, 95% CIs)
    comparison = None
    if not args.no_eval:

        extra = {k: {"params": u.num_parameters(), "latency_ms": ms[k]} for k, u in timed.items()}
        comparison = compare([load_pipeline(args.teacher, unet=u) for u in timed.values()], names=list(timed),
                             num_images=args.eval_images, steps=args.eval_steps, seed=args.seed, extra=extra,
                             contrasts=[("laptop", "bk-small"), ("laptop/after", "bk-small/after")])
        rows = {r["model"]: r for r in comparison["rows"]}
        for name in ("teacher", "bk-small", "laptop"):
            versus[name]["before"].update(_quality(rows[name]))
            if f"{name}/after" in rows:
                versus[name]["after"] = {**versus[name].get("after", {}), **_quality(rows[f"{name}/after"])}
        for key, row in ratios.items():
            row.update(_quality(rows[key]))

    # 7. additivity of the output loss
    add = additivity_study(teacher, output, candidates, args.additivity_sizes, args.sets_per_size,
                           seed=args.seed, singles=scores["output"])
    plot_additivity(add, args.out + "_additivity.png")
    print(f"additivity: Pearson {add.pearson:.3f}, Spearman {add.spearman:.3f}")

    load.append(f"end: load average {os.getloadavg()[0]:.2f}")
    meta = {
        "teacher": args.teacher, "args": vars(args), "bk_small_ratio": bk_ratio, "candidates": len(candidates),
        "torch": torch.__version__, "threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(),
        "date": datetime.datetime.now().isoformat(timespec="seconds"), "wall_s": round(time.time() - t_start),
        "machine_load": load,
    }
    result = {"meta": meta, "versus_bk_small": versus, "ratios": ratios, "scores": scores, "comparison": comparison,
              "additivity": {"pearson": add.pearson, "spearman": add.spearman, "per_size": add.per_size,
                             "refused": add.refused, "rows": add.rows}}
    write_json(args.out + ".json", result)
    atomic_write(args.out + ".md", render_md(result))
    print(render_md(result))


QUALITY = ("alignment_score", "all_correct", "kid", "psnr_to_teacher")


def _quality(row: dict) -> dict:
    """A comparison row's headline metrics and their intervals."""
    return {**{k: row.get(k) for k in QUALITY}, "ci": {k: row["ci"].get(k) for k in QUALITY}}


def _f(x, fmt=".3f") -> str:
    return "-" if x is None else format(x, fmt)


def _q(row: dict, key: str) -> str:

    return format_ci(row.get(key), row.get("ci", {}).get(key)) if row.get(key) is not None else "-"


def render_md(r: dict) -> str:
    m, a = r["meta"], r["meta"]["args"]
    base = os.path.basename(a["out"])
    lines = [
        "# LAPTOP-Diff one-shot pruning on the toy world (`bench/bench_laptop.py`)", "",
        f"Teacher `{m['teacher']}`; {m['candidates']} removable units; calibration: {a['calib_size']} toy prompts "
        f"(validation split) with rendered images, timesteps spread over [0, 1000), seed {a['seed']}. "
        f"Evaluation: {a['eval_images']} test-split prompts per model, {a['eval_steps']} steps, the same initial "
        f"noise for every model, values [95% bootstrap CI]"
        f"{' (skipped: --no-eval)' if a['no_eval'] else ''}. Latency: whole U-Net forward, batch 1, float32, CPU, "
        f"median of {a['latency_repeats']} round-robin rounds over all models, 1 thread ({'; '.join(m['machine_load'])}). "
        f"{m['date']}, {m['wall_s']} s.", "",
        f"## LAPTOP vs bk-small at bk-small's parameter ratio ({m['bk_small_ratio']:.3f})", "",
        f"Distillation: {a['distill_steps']} steps, batch {a['distill_batch']}, AdamW lr {a['distill_lr']:g} cosine, "
        f"task + output KD + {a['feat_loss']} feature KD (the settings of `slimdiff demo`), identical for both "
        "students.", "",
        "| model | params | L(S) | alignment score before | all correct before | alignment score after "
        "| all correct after | latency ms |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, row in r["versus_bk_small"].items():
        b, af = row["before"], row.get("after", {})
        lines.append(f"| {name} | {b['params']:,} | {_f(row.get('L(S)'), '.4g')} | {_q(b, 'alignment_score')} | "
                     f"{_q(b, 'all_correct')} | {_q(af, 'alignment_score')} | {_q(af, 'all_correct')} | "
                     f"{_f(row['latency_ms'], '.2f')} |")
    lines += ["", f"LAPTOP removed: {', '.join(r['versus_bk_small']['laptop']['removed'])}", "",
              "## Criteria at pruning ratios of parameters (no retraining)", "",
              "| ratio | criterion | params removed | L(S) | alignment score | all correct | KID | latency ms |",
              "|---|---|---|---|---|---|---|---|"]
    for key, row in r["ratios"].items():
        ratio, crit = key.split("/")
        lines.append(f"| {ratio} | {crit} | {row['measured_ratio']:.3f} | {row['L(S)']:.4g} | "
                     f"{_q(row, 'alignment_score')} | {_q(row, 'all_correct')} | {_q(row, 'kid')} | "
                     f"{row['latency_ms']:.2f} |")
    if r.get("comparison"):
        lines += ["", "## Every model, one paired comparison", "", r["comparison"]["markdown"], "",
                  "Paired differences (a - b):", "", r["comparison"]["markdown_contrasts"]]
    ad = r["additivity"]
    lines += ["", "## Additivity of the output loss: L(S) vs sum L({u})", "",
              f"Pooled over {len(ad['rows'])} random sets: Pearson {ad['pearson']:.3f}, Spearman {ad['spearman']:.3f} "
              f"({ad['refused']} draws refused by remove_units and redrawn).", "",
              "| set size | sets | Pearson | Spearman |", "|---|---|---|---|"]
    for k, v in ad["per_size"].items():
        lines.append(f"| {k} | {v['n']} | {_f(v['pearson'])} | {_f(v['spearman'])} |")
    lines += ["", f"![additivity]({base}_additivity.png)", "", f"![scores]({base}_scores.png)", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
