"""The instrument check (issue 20): does the toy judge read softness and noise as wrong attributes?

    python bench/bench_judge.py --judges v2 v3                     # docs/bench/judge.md and .json
    python bench/bench_judge.py --judges v2 --num-renders 64 --num-images 16 --rows ref --out /tmp/judge_dry

1. Ground truth: `--num-renders` rendered test scenes (the renderer's own images, every attribute
   known), clean and under each of `slimdiff.toy.degrade.BENCH_DEGRADATIONS` (Gaussian blur 0.5 /
   1 / 2 px, additive noise, downsample-upsample 2x / 4x, JPEG q30 / q10, blur + noise; noise
   seeded per condition). Per judge: all-correct and accuracy per attribute family, 95% bootstrap
   CIs (`slimdiff.eval.stats`, draws shared by all judges and conditions), and the paired
   difference of each judge from the first. Also: clutter read as '4+' and blobs read as 'blob'
   (a robust judge must still see broken generations).
2. Generated: the teacher's images of `--num-images` test prompts (image i seeded with i), as
   `slimdiff evaluate toy --split test --num-images N --steps S [--scheduler X]` makes them, for the
   reference (25 DPM-Solver++ steps), DDIM 8 / 16 and DPM-Solver++ 8; the same images scored by
   every judge (each judge's own features and PCA for KID / judge-FID), with paired differences.
   The images are kept in `--cache` (`stages.run_or_reuse`: reused only with the same settings).
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import sys
from pathlib import Path

import numpy as np
import torch

from slimdiff.eval import stats
from slimdiff.eval.toy import features, judge_results, pca_basis, summarize
from slimdiff.io import atomic_write, write_json
from slimdiff.report.tables import markdown_table
from slimdiff.stages import Stage, run_or_reuse
from slimdiff.toy import JUDGES, world
from slimdiff.toy.degrade import BENCH_DEGRADATIONS
from slimdiff.toy.judge import FAMILIES, load_judge

# generated rows: key -> (label, steps, scheduler name or None for the pipeline's own DPM-Solver++)
ROWS = {
    "ref": ("teacher, 25 DPM-Solver++ steps (reference)", 25, None),
    "ddim8": ("teacher, DDIM 8", 8, "ddim"),
    "ddim16": ("teacher, DDIM 16", 16, "ddim"),
    "dpm8": ("teacher, DPM-Solver++ 8", 8, "dpm"),
}
GEN_KEYS = ("all_correct", "alignment", "alignment_score", "kid", "judge_fid")


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--judges", nargs="+", default=list(JUDGES), choices=list(JUDGES),
                   help="judge versions; differences are taken from the first")
    p.add_argument("--num-renders", type=int, default=1024, help="rendered test scenes (part 1)")
    p.add_argument("--num-images", type=int, default=256, help="test prompts per generated row (part 2; 0: skip)")
    p.add_argument("--rows", nargs="+", default=list(ROWS), choices=list(ROWS), help="generated rows")
    p.add_argument("--seed", type=int, default=0, help="scenes, image seeds, noise and bootstrap draws")
    p.add_argument("--teacher", default="toy", help="the pipeline of part 2")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--cache", default="runs/bench_judge", help="where generated images are kept")
    p.add_argument("--out", default="docs/bench/judge", help="writes OUT.md and OUT.json")
    return p.parse_args()


def fmt(value: float, ci) -> str:
    return f"{value:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]"


def renders(args, judges: dict) -> list[dict]:
    """Part 1: every judge on the same rendered scenes under each degradation; paired bootstrap."""
    scenes = world.sample_scenes("test", args.num_renders, seed=args.seed)
    clean = world.to_tensor(world.render_batch(scenes))  # (N, 3, 64, 64) in [0, 1]
    idx = stats.draws(len(scenes), seed=args.seed)
    rows = []
    for c, (name, degrade) in enumerate(BENCH_DEGRADATIONS.items()):
        x = degrade(clean, torch.Generator().manual_seed(args.seed + 1000 + c))
        first = None
        for version, judge in judges.items():
            per = judge.per_image(x, scenes)
            s = summarize(per, np.zeros(len(scenes), bool), idx, keep_draws=True)
            draws = s.pop("_draws")
            row = {"condition": name, "judge": version, "all_correct": s["all_correct"],
                   "ci": s["ci"], "per_attribute": s["per_attribute"], "draws": draws}
            if first is None:
                first = row
            else:
                row["diff"] = {k: stats.interval(draws[k] - first["draws"][k]) for k in draws}
                row["diff_value"] = s["all_correct"] - first["all_correct"]
            rows.append(row)
        print(name, {r["judge"]: round(r["all_correct"], 3) for r in rows if r["condition"] == name}, flush=True)
    for r in rows:
        r.pop("draws")
    return rows


def broken(args, judges: dict) -> list[dict]:
    """Part 1b: does each judge still see broken scenes, clean and blurred by 1 px? Clutter (4-5
    objects) read as count '4+', objects painted as blobs read as shape 'blob', per image."""
    rng = np.random.default_rng(args.seed + 7)
    n = max(2, args.num_renders // 4)
    clutter = [world.clutter_scene(rng) for _ in range(n)]
    blobs = [world.with_blobs(s, rng, p=1.0) for s in world.sample_scenes("test", n, seed=args.seed + 8)]
    images = {"clutter": world.to_tensor(world.render_batch(clutter)), "blobs": world.to_tensor(world.render_batch(blobs))}
    rows = []
    for condition in ("clean", "blur 1 px"):
        for version, judge in judges.items():
            row = {"condition": condition, "judge": version}
            for kind, x in images.items():
                preds = judge.predict(BENCH_DEGRADATIONS[condition](x, torch.Generator().manual_seed(args.seed)))
                if kind == "clutter":
                    hit = np.array([p["count"] == "4+" for p in preds], float)
                else:  # share of each image's objects read as blob
                    hit = np.array([np.mean([p[f"shape{i}"] == world.BLOB for i in range(len(s.objects))])
                                    for p, s in zip(preds, blobs)])
                m = stats.mean_ci(hit, seed=args.seed)
                row[kind] = fmt(m["value"], m["ci"])
            rows.append(row)
    return rows


def generated_images(args, key: str) -> np.ndarray:
    """The teacher's images of row `key` (N, 64, 64, 3) uint8, made once and kept in --cache."""
    from slimdiff.eval.evaluation import evaluate

    label, steps, scheduler = ROWS[key]
    out = Path(args.cache) / f"{key}.npy"
    settings = {"model": args.teacher, "split": "test", "num_images": args.num_images, "steps": steps,
                "scheduler": scheduler, "seed": args.seed, "guidance": None}

    def make():
        _, images = evaluate(args.teacher, split="test", num_images=args.num_images, steps=steps, scheduler=scheduler,
                             seed=args.seed, batch_size=args.batch_size, return_images=True, progress=False)
        arr = np.stack([np.asarray(im.convert("RGB")) for im in images])
        np.save(out.with_suffix(".tmp.npy"), arr)
        os.replace(out.with_suffix(".tmp.npy"), out)

    Path(args.cache).mkdir(parents=True, exist_ok=True)
    print(key, run_or_reuse(Stage(key, settings, make, output=out), args.cache), flush=True)
    return np.load(out)


def generated(args, judges: dict) -> list[dict]:
    """Part 2: every judge on the same generated images (each with its own features and PCA)."""
    scenes = world.sample_scenes("test", args.num_images, seed=args.seed)
    rendered = world.to_tensor(world.render_batch(scenes))
    novel = np.array([world.is_novel(s) for s in scenes])
    idx = stats.draws(len(scenes), seed=args.seed)
    rows = []
    for key in args.rows:
        x = torch.from_numpy(generated_images(args, key)).permute(0, 3, 1, 2).float() / 255
        first = None
        for version, judge in judges.items():
            basis = pca_basis(judge) if len(scenes) >= 10 * stats.PCA_DIMS else None
            s = summarize(judge_results(judge, x, scenes), novel, idx, features(judge, rendered), basis, keep_draws=True)
            draws = s.pop("_draws")
            row = {"row": ROWS[key][0], "key": key, "judge": version, **{k: s[k] for k in GEN_KEYS if k in s},
                   "per_attribute": s["per_attribute"], "ci": s["ci"], "draws": draws}
            if first is None:
                first = row
            else:
                row["diff"] = {k: stats.interval(draws[k] - first["draws"][k]) for k in draws if k in first["draws"]}
            rows.append(row)
        print(key, {r["judge"]: round(r["all_correct"], 3) for r in rows if r["key"] == key}, flush=True)
    for r in rows:
        r.pop("draws")
    return rows


def report(args, part1: list[dict], part1b: list[dict], part2: list[dict], load: tuple) -> None:
    first = args.judges[0]
    t1 = []
    for r in part1:
        row = {"condition": r["condition"], "judge": r["judge"], "all-correct": fmt(r["all_correct"], r["ci"]["all_correct"])}
        for fam in FAMILIES:
            row[fam] = fmt(r["per_attribute"][fam], r["ci"][f"per_attribute.{fam}"])
        row[f"all-correct - {first}"] = (f"{r['diff_value']:+.3f} [{r['diff']['all_correct'][0]:+.3f}, "
                                         f"{r['diff']['all_correct'][1]:+.3f}]") if "diff" in r else ""
        t1.append(row)
    t2 = []
    for r in part2:
        row = {"generated by": r["row"], "judge": r["judge"]}
        for k in GEN_KEYS:
            if k in r:
                row[k] = fmt(r[k], r["ci"][k])
        base = next(b for b in part2 if b["key"] == r["key"] and b["judge"] == first)
        row[f"all-correct - {first}"] = (f"{r['all_correct'] - base['all_correct']:+.3f} [{r['diff']['all_correct'][0]:+.3f}, "
                                         f"{r['diff']['all_correct'][1]:+.3f}]") if "diff" in r else ""
        t2.append(row)
    now = datetime.datetime.now(datetime.timezone.utc)
    md = (f"# The judge under softness and noise (issue 20, item 1)\n\n"
          f"`python bench/bench_judge.py {' '.join(sys.argv[1:])}`  \n"
          f"{now:%Y-%m-%d %H:%M} UTC, {platform.processor() or 'cpu'}, torch threads {args.threads}, "
          f"load average {load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f} (1 / 5 / 15 min) at the start; judges: "
          f"{', '.join(args.judges)}; [95% bootstrap CI, {stats.BOOTSTRAP_DRAWS} draws shared by every judge and condition; "
          f"differences paired]\n\n"
          f"## 1. Ground truth: {args.num_renders} rendered test scenes, degraded\n\n" + markdown_table(t1) + "\n")
    if part1b:
        md += (f"\nBroken scenes ({max(2, args.num_renders // 4)} each): 4-5 objects read as count '4+' (clutter), objects "
               f"painted as blobs read as shape 'blob' (blobs, share of objects per image)\n\n" + markdown_table(part1b) + "\n")
    if t2:
        md += (f"\n## 2. The teacher's generated images, {args.num_images} test prompts (the same images for every judge)\n\n"
               + markdown_table(t2) + "\n")
    atomic_write(Path(args.out).with_suffix(".md"), md)
    write_json(Path(args.out).with_suffix(".json"), {"args": vars(args), "load_average": load, "date": f"{now:%Y-%m-%d %H:%M} UTC",
                                                    "renders": part1, "broken": part1b, "generated": part2})
    print(md)


def main() -> None:
    args = parse_args()
    load = os.getloadavg()
    torch.set_num_threads(args.threads)
    judges = {v: load_judge(version=v) for v in args.judges}
    part1 = renders(args, judges) if args.num_renders else []
    part1b = broken(args, judges) if args.num_renders else []
    part2 = generated(args, judges) if args.num_images else []
    report(args, part1, part1b, part2, load)


if __name__ == "__main__":
    main()
