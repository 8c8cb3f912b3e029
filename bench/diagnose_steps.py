"""Why every step-distilled student scored below the teacher sampled at the same steps (issue 20, item 1).

    python bench/diagnose_steps.py --part solvers          # training-free: the teacher under each sampler
    python bench/diagnose_steps.py --part start            # the student at step 0 (before any training)
    python bench/diagnose_steps.py --part train            # students: prediction type x length x guided share
    python bench/diagnose_steps.py --report                # docs/bench/steps_diagnosis.md from the JSON

Every row: the toy world's test split, `--images` prompts (seed 0: the same scenes and noise for
every row), guidance 5 (the toy's), all-correct with its 95% bootstrap interval, and the paired
difference to the teacher's DDIM (trailing, epsilon) path at the same step count, whose interval
uses the same bootstrap draws (`*`: it excludes 0). Results accumulate in
docs/bench/steps_diagnosis.json (a row already there with the same settings is not recomputed),
so the parts can run one at a time on a shared machine.

Rows of `train` are `slimdiff.distill.step` students (student = the teacher's weights, 8 steps,
a 16-step teacher path, batch 32, AdamW 1e-4 constant): their length grows by resuming the same run
(`max_steps` is a resumable change, and a constant learning rate makes the longer run equal to an
uninterrupted one), so the 400-step and 1600-step rows are one run read twice.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
from pathlib import Path

import numpy as np
import torch

from slimdiff.distill import DistillConfig, distill
from slimdiff.distill.step import StepDistillConfig, step_distill
from slimdiff.eval import evaluate, stats
from slimdiff.eval.toy import shared_judge
from slimdiff.io import atomic_write, write_json
from slimdiff.report.images import to_tensor
from slimdiff.sample import make_scheduler, resolve_pipeline
from slimdiff.toy import world

GUIDANCE = 5.0
RESULTS = Path("docs/bench/steps_diagnosis.json")


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--part", nargs="+", choices=list(ALL), default=[])
    p.add_argument("--only", nargs="+", metavar="TEXT", help="only rows whose name contains one of these")
    p.add_argument("--images", type=int, default=256)
    p.add_argument("--work", default="runs/diagnose_steps")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--report", action="store_true")
    return p.parse_args()


# ---------------------------------------------------------------------------------- rows


def solver_rows() -> list[dict]:
    """The teacher, no training: DDIM (the toy config's linspace, and the students' trailing), DPM-Solver++
    as shipped and in the variants that could explain it (1st order = DDIM; trailing; Karras), Euler."""
    rows = []
    for n in (4, 8, 16, 32):
        rows += [dict(name=f"teacher DDIM trailing {n}", steps=n, scheduler="ddim",
                      overrides=dict(timestep_spacing="trailing")),
                 dict(name=f"teacher DDIM linspace {n}", steps=n, scheduler="ddim"),
                 dict(name=f"teacher DPM-Solver++ 2M {n}", steps=n, scheduler="dpm"),
                 dict(name=f"teacher Euler {n}", steps=n, scheduler="euler")]
    for n in (4, 8):
        rows += [dict(name=f"teacher DPM-Solver++ 1st order {n}", steps=n, scheduler="dpm",
                      overrides=dict(solver_order=1)),
                 dict(name=f"teacher DPM-Solver++ 2M trailing {n}", steps=n, scheduler="dpm",
                      overrides=dict(timestep_spacing="trailing")),
                 dict(name=f"teacher DPM-Solver++ 2M no lower-order final {n}", steps=n, scheduler="dpm",
                      overrides=dict(lower_order_final=False)),
                 dict(name=f"teacher DPM-Solver++ 3M {n}", steps=n, scheduler="dpm", overrides=dict(solver_order=3))]
    rows.append(dict(name="reference: teacher DPM-Solver++ 2M 25", steps=25, scheduler="dpm"))
    return rows


def start_rows() -> list[dict]:
    """The student before training: the teacher's weights under the student's DDIM (trailing) sampler,
    read as v (today's v-prediction student: an epsilon model's output taken as v) or kept as epsilon."""
    return [dict(name=f"student at step 0, read as {p} {n}", steps=n, scheduler="ddim",
                 overrides=dict(timestep_spacing="trailing", prediction_type=p))
            for n in (4, 8) for p in ("v_prediction", "epsilon")]


def train_rows() -> list[dict]:
    """Students at 8 steps after 400 / 1600 optimiser steps: today's recipe and one change at a time.

    Every row samples with CFG at guidance 5 (two U-Net calls a step): a CFG-aware student's guided rows
    train its own CFG combination w out(c) - (w - 1) out(null), so it is sampled with that combination
    ("guided at w = 5": every row guided, cfg_prob 1, w fixed; its recipe's guidance 1 is not used here);
    the control fine-tunes the teacher on its own task loss (no distillation) and samples it with the
    teacher's DDIM trailing 8: does training on this data at this learning rate alone cost quality?"""
    fixed5 = dict(cfg_prob=1.0, guidance_min=5.0, guidance_max=5.0, guidance=1.0)
    runs = [("epsilon kept, guided at w=5", dict(student_prediction="epsilon", **fixed5), 5.0, (400,)),
            ("v, p=0.1, CFG (today)", dict(student_prediction="v_prediction", cfg_prob=0.1), 5.0, (400,)),
            ("epsilon kept, p=0.1, CFG", dict(student_prediction="epsilon", cfg_prob=0.1), 5.0, (400, 1600))]
    rows = [dict(name=f"control: teacher fine-tuned on its task loss, {length} steps, DDIM trailing 8",
                 steps=8, finetune=dict(lambda_task=1.0, lambda_out=0.0, lambda_feat=0.0), max_steps=length,
                 run="control-finetune", scheduler="ddim", overrides=dict(timestep_spacing="trailing"),
                 guidance=GUIDANCE) for length in (400,)]
    for label, settings, guidance, lengths in runs:
        for length in lengths:
            rows.append(dict(name=f"step-distilled 8, {label}, {length} steps", steps=8, train=settings,
                             max_steps=length, run=label, guidance=guidance))
    return rows


def model_rows() -> list[dict]:
    """Trained consistency students (bench/bench_steps.py's, in its --work) at each step count they serve."""
    rows = []
    for label, path, counts in (("LCM", "runs/bench_steps/lcm", (8, 4, 2, 1)),
                                ("LCM-LoRA", "runs/bench_steps/lcm-lora", (8, 4, 2, 1)),
                                ("bk-small + LCM", "runs/bench_steps/bk-small-lcm", (8, 4, 2, 1)),
                                ("PCM 4 phases", "runs/bench_steps/pcm", (4,))):
        rows += [dict(name=f"{label} {n} (400 steps)", steps=n, model=path, guidance=None) for n in counts]
    return rows


def judge_rows() -> list[dict]:
    """The bench's headline rows scored by both shipped judges (v2, the default; v3, trained on degraded
    renders) on the same images: does softness explain a few-step student's deficit?"""
    trailing = dict(scheduler="ddim", overrides=dict(timestep_spacing="trailing"))
    rows = [dict(name="[judges] reference: teacher DPM-Solver++ 2M 25", steps=25, scheduler="dpm"),
            dict(name="[judges] teacher DDIM trailing 8", steps=8, **trailing),
            dict(name="[judges] teacher DDIM trailing 4", steps=4, **trailing)]
    for label, path, counts in (("SnapFusion", "runs/bench_steps/snapfusion-{n}", (8, 4)),
                                ("LCM", "runs/bench_steps/lcm", (8, 4)),
                                ("LCM-LoRA", "runs/bench_steps/lcm-lora", (8, 4)),
                                ("bk-small + LCM", "runs/bench_steps/bk-small-lcm", (8, 4)),
                                ("PCM 4 phases", "runs/bench_steps/pcm", (4,))):
        rows += [dict(name=f"[judges] {label} {n}", steps=n, model=path.format(n=n), guidance=None) for n in counts]
    return [dict(r, judges=["v3"]) for r in rows]


ALL = {"solvers": solver_rows, "start": start_rows, "train": train_rows, "models": model_rows, "judge": judge_rows}


# ---------------------------------------------------------------------------------- measuring


def slug(text: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in text).strip("-")


def trained_model(row: dict, work: Path) -> str:
    """The row's student: one run per label, extended to the row's length by resuming it."""
    out = work / slug(row["run"])
    recipe = out / "recipe.json"
    done = json.loads(recipe.read_text()) if recipe.is_file() else {}
    if (done.get("distill") or done.get("step_distill") or {}).get("steps") == row["max_steps"]:
        return str(out)  # finished at this length (its last checkpoint is earlier: resuming would redo steps)
    common = dict(teacher="toy", student="toy", max_steps=row["max_steps"], batch_size=32, learning_rate=1e-4,
                  seed=0, checkpoint_every=200, resume="latest" if out.exists() else None, out=str(out))
    if "finetune" in row:
        result = distill(DistillConfig(**common, **row["finetune"]), progress=False)
    else:
        result = step_distill(StepDistillConfig(steps=row["steps"], teacher_steps=16, **common, **row["train"]),
                              progress=False)
    row["train_steps_per_sec"] = result.steps_per_sec  # of the last (resumed) stretch
    return str(out)


def pipeline_of(row: dict, work: Path):
    trained = "train" in row or "finetune" in row
    pipe = resolve_pipeline(trained_model(row, work) if trained else row.get("model", "toy"))
    if row.get("scheduler"):
        pipe.scheduler = make_scheduler(row["scheduler"], pipe)
        if row.get("overrides"):
            pipe.scheduler = type(pipe.scheduler).from_config(pipe.scheduler.config, **row["overrides"])
    pipe.set_progress_bar_config(disable=True)
    return pipe


def measure(row: dict, n: int, work: Path) -> dict:
    pipe = pipeline_of(row, work)
    result, images = evaluate(pipe, num_images=n, steps=row["steps"], guidance=row.get("guidance", GUIDANCE),
                              seed=0, return_images=True, progress=False)
    scenes = world.sample_scenes("test", n, 0)
    per = shared_judge().per_image(to_tensor(images), scenes)
    other = {v: shared_judge(v).per_image(to_tensor(images), scenes)["all_correct"].astype(int).tolist()
             for v in row.get("judges", [])}  # the same images, another judge
    keys = ("all_correct", "alignment_score", "kid", "judge_fid")
    return {**{k: v for k, v in row.items() if k not in ("run",)}, "images": n,
            "guidance_used": result.get("guidance"),
            "scores": {k: [result[k], *result["ci"][k]] for k in keys if k in result},
            "all_correct_per_image": per["all_correct"].astype(int).tolist(),
            **({"all_correct_per_image_by_judge": other} if other else {}),
            "scheduler_config": {k: v for k, v in dict(pipe.scheduler.config).items() if not k.startswith("_")},
            "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "load_average": os.getloadavg()[0], "threads": torch.get_num_threads()}


def results_file(part: str) -> Path:
    """Where a part's rows accumulate (one file per part: parts may run at once in separate processes)."""
    return RESULTS if part in ("solvers", "start") else RESULTS.with_name(f"{RESULTS.stem}_{part}.json")


def load_results(part: str | None = None) -> dict:
    files = [results_file(part)] if part else [RESULTS, *sorted(RESULTS.parent.glob(f"{RESULTS.stem}_*.json"))]
    out = {}
    for f in files:
        out.update(json.loads(f.read_text()) if f.is_file() else {})
    return out


def settings_of(row: dict) -> dict:
    return {k: row.get(k) for k in ("steps", "scheduler", "overrides", "train", "finetune", "max_steps", "guidance",
                                    "model", "judges")}


# ---------------------------------------------------------------------------------- report


def paired(a: list[int], b: list[int]) -> tuple[float, float, float]:
    """mean(a - b) and its 95% bootstrap interval over the same resampled prompts."""
    d = np.asarray(a, float) - np.asarray(b, float)
    idx = stats.draws(len(d), seed=0)
    return float(d.mean()), *stats.interval(d[idx].mean(1))


def report(results: dict) -> str:
    lines = ["# Why the step-distilled students fell below the teacher (issue 20, diagnosis)", "",
             "`python bench/diagnose_steps.py --part solvers start train models judge` (each part alone works; `--only TEXT` picks rows) then `--report`; "
             "toy world, test split, seed 0, guidance 5. all-correct [95% bootstrap CI]; "
             "Δ: paired difference to the teacher's DDIM trailing path at the same steps [95% CI], "
             "`*` where it excludes 0.", "",
             "| row | images | all-correct | Δ vs teacher DDIM trailing, same steps | alignment score | KID "
             "| all-correct, judge v3 (same images) | v3 - v2 (paired) | load avg | date |",
             "|:---|---:|:---|:---|:---|:---|:---|:---|---:|:---|"]
    for name, r in results.items():
        s = r["scores"]
        fmt = lambda k: f"{s[k][0]:.3f} [{s[k][1]:.3f}, {s[k][2]:.3f}]" if k in s else ""  # noqa: E731
        base = results.get(f"teacher DDIM trailing {r['steps']}")
        delta = ""
        if base is not None and base is not r and base["images"] == r["images"]:
            m, lo, hi = paired(r["all_correct_per_image"], base["all_correct_per_image"])
            delta = f"{m:+.3f} [{lo:+.3f}, {hi:+.3f}]" + (" *" if lo > 0 or hi < 0 else "")
        v3 = (r.get("all_correct_per_image_by_judge") or {}).get("v3")
        v3_cell = v3_delta = ""
        if v3 is not None:
            m3 = np.asarray(v3, float)
            idx = stats.draws(len(m3), seed=0)
            v3_cell = "{:.3f} [{:.3f}, {:.3f}]".format(m3.mean(), *stats.interval(m3[idx].mean(1)))
            d, lo, hi = paired(v3, r["all_correct_per_image"])
            v3_delta = f"{d:+.3f} [{lo:+.3f}, {hi:+.3f}]" + (" *" if lo > 0 or hi < 0 else "")
        lines.append(f"| {name} | {r['images']} | {fmt('all_correct')} | {delta} | {fmt('alignment_score')} "
                     f"| {fmt('kid')} | {v3_cell} | {v3_delta} | {r['load_average']:.2f} | {r['date']} |")
    lines += ["", f"Machine: {platform.processor() or platform.machine()}, torch {torch.__version__}, "
              f"threads as in the JSON (`threads`)."]
    return "\n".join(lines) + "\n"


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    work = Path(args.work)
    for part in args.part:
        for row in ALL[part]():
            if args.only and not any(t in row["name"] for t in args.only):
                continue
            done = load_results(part).get(row["name"])
            if done is not None and settings_of(done) == settings_of(row) and done["images"] == args.images:
                continue
            measured = measure(row, args.images, work)
            s = measured["scores"]["all_correct"]
            print(f"{row['name']}: all-correct {s[0]:.3f} [{s[1]:.3f}, {s[2]:.3f}]", flush=True)
            write_json(results_file(part), {**load_results(part), row["name"]: measured})
    if args.report or args.part:
        atomic_write(RESULTS.with_suffix(".md"), report(load_results()))


if __name__ == "__main__":
    sys.exit(main())
