"""SnapFusion architecture evolving on the toy world, end to end (issue 12 item 3).

    python bench/bench_evolve.py                                # defaults: ~1-2 hours on 2 CPU cores
    python bench/bench_evolve.py --out /tmp/evolve --target-ratio 0.98 --max-rounds 1 --score-images 2 \
        --score-steps 1 --robust-steps 1 --robust-steps-per-round 1 --eval-images 2 --eval-steps 1 \
        --lut-repeats 1                                         # dry run: minutes

Steps: (1) the toy teacher's latency lookup table (`slimdiff.prune.latency_table`) and the
target = `--target-ratio` x the table's prediction for the teacher; (2) per variant, one
`slimdiff.prune.run_search` evolve run with the toy judge's continuous alignment score
(`ToyAlignmentScore`: `alignment_score` when the judge gives it, else `alignment`) on the
validation split: `robust` interleaves robust training (stochastic depth, SnapFusion
Algorithm 1) with the rounds, `plain` evolves the teacher as it is; (3) the teacher and every
result evaluated on the test split (`slimdiff.eval.evaluation`: the judge's metrics with their
confidence intervals, whatever the evaluation runner reports) and timed round-robin with the
table's settings. Results: OUT.md, OUT.json; each run's student and recipe.json in WORK/.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import sys
import tempfile
import time

from slimdiff.eval import evaluate
from slimdiff.io import atomic_write, write_json
from slimdiff.prune import SearchConfig, latency_table, run_search, save_search
from slimdiff.prune.laptop import context_length_for, lut_wallclock_ms
from slimdiff.unet import load_unet, to_slim

METRICS = ("alignment_score", "alignment", "all_correct", "kid", "judge_fid")  # shown when evaluate gives them


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--teacher", default="toy", help="the toy pipeline (the default score needs the toy judge)")
    p.add_argument("--target-ratio", type=float, default=0.8, help="target = ratio x LUT(teacher) ms")
    p.add_argument("--variants", nargs="+", choices=["robust", "plain"], default=["robust", "plain"])
    p.add_argument("--stochastic-depth", type=float, default=0.1, help="robust variant: skip probability")
    p.add_argument("--robust-steps", type=int, default=200, help="robust training before the first round")
    p.add_argument("--robust-steps-per-round", type=int, default=50, help="robust training before later rounds")
    p.add_argument("--robust-batch", type=int, default=32)
    p.add_argument("--max-rounds", type=int, default=30)
    p.add_argument("--score-images", type=int, default=32, help="validation images per score")
    p.add_argument("--score-steps", type=int, default=10, help="sampler steps per score image")
    p.add_argument("--eval-images", type=int, default=128, help="test-split images per final evaluation")
    p.add_argument("--eval-steps", type=int, default=20)
    p.add_argument("--lut-repeats", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--work", default=None, help="where the runs are written (default: a temporary directory)")
    p.add_argument("--out", default="docs/bench/evolve", help="writes OUT.md and OUT.json")
    return p.parse_args()


def _fmt(result: dict, key: str) -> str:
    """`value [lo, hi]`: the metric and its 95% interval (`result["ci"][key]`, when evaluate gives it)."""
    v, ci = result.get(key), result.get("ci", {}).get(key)
    if not isinstance(v, (int, float)):
        return "" if v is None else str(v)
    text = f"{v:.4g}"
    if isinstance(ci, (list, tuple)) and len(ci) == 2:
        text += f" [{ci[0]:.4g}, {ci[1]:.4g}]"
    return text


def evaluate_unet(args, unet) -> dict:
    r = evaluate(unet, base=args.teacher, split="test", num_images=args.eval_images, steps=args.eval_steps,
                 seed=args.seed, progress=False)
    keep = {k: v for k, v in r.items() if k not in ("prompts", "timing")}
    return {"params": unet.num_parameters(), **keep}


def main() -> None:
    args = parse_args()
    work = args.work or tempfile.mkdtemp(prefix="bench_evolve_")
    t0 = time.time()
    # 1. teacher, its latency table, the target
    teacher = to_slim(load_unet(args.teacher)).eval()
    lut = latency_table(teacher, context_length=context_length_for(args.teacher), repeats=args.lut_repeats)
    lut_path = os.path.join(work, "lut.json")
    os.makedirs(work, exist_ok=True)
    lut.save(lut_path)
    teacher_ms = lut.predict(teacher)
    target = args.target_ratio * teacher_ms
    print(f"teacher: {teacher_ms:.3f} ms predicted; target {target:.3f} ms")

    # 2. one evolve run per variant
    models, runs = {"teacher": teacher}, {}
    for variant in args.variants:
        cfg = SearchConfig(
            model=args.teacher, method="evolve", out=os.path.join(work, variant), seed=args.seed, lut=lut_path,
            target_latency_ms=target, max_rounds=args.max_rounds,
            stochastic_depth=args.stochastic_depth if variant == "robust" else 0.0,
            robust_steps=args.robust_steps, robust_steps_per_round=args.robust_steps_per_round,
            robust_batch_size=args.robust_batch, score_images=args.score_images, score_steps=args.score_steps,
        )
        t = time.time()
        student, recipe = run_search(cfg)
        save_search(student, recipe, cfg)
        s = recipe["search"]
        models[variant] = student
        runs[variant] = {
            "search_seconds": round(time.time() - t, 1),
            "actions": [(a["action"], a["teacher_unit"]) for a in s["actions"]],
            "trainings": s["trainings"],
            "predicted_ms": s["final_latency"],
            "search_score": {"initial": s["initial_score"], "final": s["final_score"], "key": s["score"]["key"]},
            "stop_reason": s["stop_reason"],
            "recipe": os.path.join(cfg.out, "recipe.json"),
        }

    # 3. evaluation on the test split, then every model timed round-robin
    results = {name: evaluate_unet(args, m) for name, m in models.items()}
    measured = lut_wallclock_ms(models, lut)
    for name in models:
        results[name]["measured_ms"] = measured[name]
        results[name]["predicted_ms"] = lut.predict(models[name])

    # 4. report
    shown = [k for k in METRICS if any(k in r for r in results.values())]
    lines = [
        "# Architecture evolving (SnapFusion Algorithm 1) on the toy world",
        "",
        "`" + " ".join(["python bench/bench_evolve.py", *sys.argv[1:]]) + "`",
        "",
        f"Target {target:.3f} ms = {args.target_ratio} x the teacher's {teacher_ms:.3f} ms (lookup table). "
        f"Search score: the toy judge on {args.score_images} validation images, {args.score_steps} steps; "
        f"final metrics on {args.eval_images} test images, {args.eval_steps} steps (95% CIs where the "
        "evaluation gives them).",
        "",
        "| model | " + " | ".join(shown) + " | params | predicted ms | measured ms | actions | trainings |",
        "|---|" + "---:|" * (len(shown) + 5),
    ]
    for name, r in results.items():
        run = runs.get(name, {})
        lines.append(f"| {name} | " + " | ".join(_fmt(r, k) for k in shown)
                     + f" | {r['params']:,} | {r['predicted_ms']:.3f} | {r['measured_ms']:.3f} | "
                     f"{len(run.get('actions', []))} | {run.get('trainings', '')} |")
    lines += ["", "Actions (teacher unit names):", ""]
    lines += [f"- {name}: {', '.join(f'{a} {u}' for a, u in run['actions']) or 'none'} ({run['stop_reason']})"
              for name, run in runs.items()]
    write_json(args.out + ".json", {
        "settings": vars(args), "target_ms": target, "teacher_predicted_ms": teacher_ms, "runs": runs,
        "results": results, "work": work, "seconds": round(time.time() - t0, 1),
        "machine": {"platform": platform.platform(), "load_avg": os.getloadavg(),
                    "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")},
    })
    atomic_write(args.out + ".md", "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
