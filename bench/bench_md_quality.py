"""MobileDiffusion on the toy world (issue 22 item 4): the md / md-lite twins and each trick alone, distilled
with the demo's budget, against distilled bk-small (all-correct, paired 95% CIs; `slimdiff.eval.compare`).

    python bench/bench_md_quality.py --reuse bk-small-kd=runs/demo/distill                 # the full table
    python bench/bench_md_quality.py --models md --distill-steps 1 --num-images 4 --sample-steps 5 \\
        --batch-size 2 --work /tmp/md_work --out /tmp/md_quality                          # dry run (minutes)

Models (each built from the toy teacher, then distilled --distill-steps steps with the demo's settings,
`slimdiff.demo.demo_distill_settings`, through bench_asdm.py's `Bench`, so every stage is resumable and
reused only with the same settings): the presets `md` and `md-lite` scaled to the toy's widths (the
bottleneck 0.8 / 0.7 x the teacher's third width, rounded to its norm groups: 96 -> 80 / 64), and bk-small
with one trick (`MDTRICKS` below), the toy twins of bench_md.py's sd15-arch rows, and the designs
bench_md_search.py found (docs/bench/md_search.json: their choices applied to the toy teacher; e.g.
`--models NAME --out docs/bench/md_search_quality --work runs/bench_md_search_quality`). The per-step speed of
each architecture at sd15-arch 512px is bench_md.py's (docs/bench/md.md). Work: 600 distillation steps
per model (~10-20 min each on one thread); run it in chunks (`--models`), each under the shared CPU lock.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench_asdm's Bench (a sibling script)

import torch  # noqa: E402
from bench_asdm import Bench, parse_args as asdm_args  # noqa: E402

from slimdiff.io import atomic_write, read_json, write_json  # noqa: E402
from slimdiff.modules import MDTricks, apply_md_tricks  # noqa: E402
from slimdiff.prune.choices import apply_choices  # noqa: E402
from slimdiff.unet import apply_preset, load_unet, save_student  # noqa: E402

# bk-small + one trick (the toy's levels: 0 = 8x8, 1 = 4x4, 2 = 2x2)
MDTRICKS = {
    "bk-small + separable ResNets": MDTricks(separable_levels=(0, 1, 2)),
    "bk-small - 8x8 self-attention (cross only)": MDTricks(cross_only_levels=(0,)),
    "bk-small + shared K/V + FF 3x": MDTricks(shared_kv=True, ff_mult=3.0),
    "bk-small + swish": MDTricks(swish=True),
    "bk-small + ReLU attention": MDTricks(relu=True),
}
SEARCH = "docs/bench/md_search.json"  # bench_md_search.py's designs: {name: {"chosen": {unit: choice}}}
DESIGNS = read_json(SEARCH)["designs"] if Path(SEARCH).is_file() else {}
MODELS = ["md", "md-lite", *MDTRICKS, *DESIGNS]


SPEED = "docs/bench/md.json"  # bench_md.py: per-step speed-ups of md / md-lite at sd15-arch 512px
BK_SMALL_SPEED = ("docs/bench/presets_latency.json", "bk-small")  # bench_presets_latency.py's row
P1_SPEEDUP = 2.5  # issue 22's target P1: at least 2.5x per step ...
P1_METRIC = "all_correct"  # ... and all-correct within distilled bk-small's 95% interval


def parse_args() -> argparse.Namespace:
    """--models and --distill-only here; every other flag is bench_asdm.py's (the demo's distillation
    settings, --reuse, ...)."""
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--models", nargs="+", default=MODELS, choices=MODELS)
    p.add_argument("--distill-only", action="store_true",
                   help="build and distil --models, no evaluation (a chunk; the full run reuses them)")
    own, rest = p.parse_known_args()
    command = shlex.join(["python", "bench/bench_md_quality.py", *sys.argv[1:]])
    sys.argv = [sys.argv[0], *rest]
    args = asdm_args()
    args.models, args.distill_only, args.command = own.models, own.distill_only, command
    if args.work == "runs/bench_asdm":
        args.work = "runs/bench_md_quality"
    if args.out == "docs/bench/asdm":
        args.out = "docs/bench/md_quality"
    return args


def student(b: Bench, name: str) -> str:
    """work/NAME: the preset (md, md-lite) or bk-small with one trick, built from the toy teacher. The
    presets' recipe.json carries their feature-KD block map (`mobilediffusion.MD_BLOCK_MAP`)."""
    teacher_name = b.args.teacher

    def make(out: Path):
        teacher = load_unet(teacher_name)
        if name in ("md", "md-lite"):
            model, info = apply_preset(teacher, name)
        elif name in DESIGNS:  # a searched design's keep / remove / replace choices on the toy teacher
            model = apply_choices(teacher, DESIGNS[name]["chosen"])
            info = {"search": {"method": "laptop-choices", "design": name, "chosen": DESIGNS[name]["chosen"]}}
        else:
            base, info = apply_preset(teacher, "bk-small")
            model, info = apply_md_tricks(base, MDTRICKS[name]), {**info, "md_tricks": MDTRICKS[name].to_dict()}
        save_student(model, out, source=teacher_name, recipe=info)

    settings = {"teacher": teacher_name, "model": name}
    if name in DESIGNS:
        settings["chosen"] = DESIGNS[name]["chosen"]
    return b.stage(key(name), settings, make)


def key(name: str) -> str:
    return name.replace(" ", "_").replace("/", "-")


def speedups() -> dict[str, float]:
    """Per-step speed-ups at sd15-arch 512px, CPU, 1 thread, against sd15-arch in the same rounds."""
    out = {}
    if Path(SPEED).is_file():
        out |= {n: r["speedup"] for n, r in read_json(SPEED)["rows"].items() if n in ("md", "md-lite", *DESIGNS)}
    path, row = BK_SMALL_SPEED
    if Path(path).is_file():
        out["bk-small"] = read_json(path)["models"][row]["speedup"]
    return out


def p1_rows(result: dict, speed: dict[str, float]) -> list[dict]:
    """Target P1 per model: speed-up >= P1_SPEEDUP and all-correct within bk-small's 95% interval or above it
    (quality kept: not below the interval's lower end; a model better than bk-small keeps it too); with the
    paired difference from bk-small (the first row)."""
    base = result["rows"][0]
    lo, hi = base["ci"][P1_METRIC]
    rows = []
    for r in result["rows"][1:]:
        if r["model"] not in speed and r["model"] not in MODELS:
            continue  # the rendered ceiling
        v, s = r[P1_METRIC], speed.get(r["model"])
        d_lo, d_hi = r["diff_ci"][P1_METRIC]
        inside = lo <= v <= hi
        kept = v >= lo  # within the interval or above it
        rows.append({"model": r["model"], "speedup": s, "all_correct": v, "ci": r["ci"][P1_METRIC],
                     "diff": v - base[P1_METRIC], "diff_ci": [d_lo, d_hi], "inside_bk_small_ci": inside,
                     "quality_kept": kept, "p1": None if s is None else bool(s >= P1_SPEEDUP and kept)})
    return rows


def p1_markdown(rows: list[dict], base: dict, speed: dict[str, float]) -> list[str]:
    lo, hi = base["ci"][P1_METRIC]
    lines = [f"## Target P1: >= {P1_SPEEDUP}x per step, all-correct within distilled bk-small's interval (or above it)", "",
             f"bk-small (distilled, {speed.get('bk-small', float('nan')):.2f}x per step): all-correct "
             f"{base[P1_METRIC]:.4f} [{lo:.4f}, {hi:.4f}]. Speed-ups: per step at sd15-arch 512px, CPU, 1 thread, "
             f"beside sd15-arch in the same rounds ({SPEED}, bench_md.py; bk-small: {BK_SMALL_SPEED[0]}); the "
             "bk-small + trick rows have no sd15-arch timing of their own (their tricks alone on sd15-arch: "
             "docs/bench/md.md).", "",
             "| model | speed-up / step | all correct [95% CI] | - bk-small [95% paired CI] | vs bk-small's CI | P1 |",
             "|---|---:|---|---|---|---|"]
    for r in rows:
        s = "-" if r["speedup"] is None else f"{r['speedup']:.2f}x"
        p1 = "-" if r["p1"] is None else ("met" if r["p1"] else "missed")
        lines.append(f"| {r['model']} | {s} | {r['all_correct']:.4f} [{r['ci'][0]:.4f}, {r['ci'][1]:.4f}] | "
                     f"{r['diff']:+.4f} [{r['diff_ci'][0]:+.4f}, {r['diff_ci'][1]:+.4f}] | "
                     f"{'inside' if r['inside_bk_small_ci'] else ('above' if r['quality_kept'] else 'below')} | {p1} |")
    return lines


def attribute_markdown(result: dict) -> list[str]:
    """Per attribute of the toy judge: the share of images with it right [95% CI], every row."""
    attrs = list(result["rows"][0].get("per_attribute", {}))
    lines = ["## Where the points go: per attribute (share right [95% CI])", "",
             "| model | " + " | ".join(attrs) + " |", "|---|" + "---|" * len(attrs)]
    for r in result["rows"]:
        cells = [f"{r['per_attribute'][a]:.3f} [{r['ci'][f'per_attribute.{a}'][0]:.3f}, "
                 f"{r['ci'][f'per_attribute.{a}'][1]:.3f}]" for a in attrs]
        lines.append(f"| {r['model']} | " + " | ".join(cells) + " |")
    return lines


def main() -> None:
    args = parse_args()
    t0, load0 = time.time(), os.getloadavg()[0]
    b = Bench(args)
    models = {"bk-small": b.distill("bk-small-kd", b.prune("bk-small", "bk-small"))}
    for name in args.models:
        models[name] = b.distill(f"{key(name)}-kd", student(b, name))
    if args.distill_only:
        print(f"distilled {list(models)}; no evaluation (--distill-only)")
        return
    result = b.compare("md_quality", models, contrasts=[(m, "bk-small") for m in list(models)[1:]])
    speed = speedups()
    p1 = p1_rows(result, speed)
    run = {"command": args.command, "models": args.models,
           "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "seconds": round(time.time() - t0),
           "load": [load0, os.getloadavg()[0]], "torch": torch.__version__}
    runs = read_json(args.out + ".json").get("runs", []) if Path(args.out + ".json").is_file() else []
    runs.append(run)  # every invocation that wrote the report (the first evaluates, later ones reuse)
    write_json(args.out + ".json", {"settings": vars(args), "runs": runs, "speedups": speed, "p1": p1,
                                    "result": {k: v for k, v in result.items() if k != "prompts"}})
    lines = ["# MobileDiffusion on the toy world (`bench/bench_md_quality.py`)", "",
             f"Teacher {args.teacher}; distillation {args.distill_steps} steps, batch {args.batch_size}, AdamW lr "
             f"{args.learning_rate} cosine, {args.feat_loss} feature KD (the demo's settings; md / md-lite: feature "
             "KD at the four blocks of the teacher's widths, `MD_BLOCK_MAP`); reused: "
             f"{', '.join(args.reuse) or 'none'}; {args.num_images} test-split images per model, seed {args.seed}.", "",
             *p1_markdown(p1, result["rows"][0], speed), "", *attribute_markdown(result), "",
             "## All metrics", "", result["markdown"], ""]
    if result.get("markdown_contrasts"):
        lines += ["Paired differences a - b:", "", result["markdown_contrasts"], ""]
    lines += ["## Runs", "", f"Stages (students, distillations, the evaluation) are reused from {args.work} when "
              "made with the same settings; each line: one invocation, its wall time, load average on 2 cores.", ""]
    lines += [f"- {r['date']}: `{r['command']}`, {r['seconds']} s, load {r['load'][0]:.2f} -> {r['load'][1]:.2f}, "
              f"1 thread, torch {r['torch']}{r.get('note', '')}" for r in runs] + [""]
    atomic_write(args.out + ".md", "\n".join(lines))
    print(f"wrote {args.out}.md and {args.out}.json")


if __name__ == "__main__":
    main()
