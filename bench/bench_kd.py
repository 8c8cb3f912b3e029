"""BK-SDM's ordering and LAPTOP-Diff's normalized KD on the toy world, with paired 95% CIs.

    python bench/bench_kd.py                                  # ~35 min on 2 cores
    python bench/bench_kd.py --distill-steps 20 --num-images 8 --out /tmp/kd   # smoke run

Questions (toy-world issue, item 5):
1. Does BK-SDM's ordering base > small > tiny hold when each is distilled with the same budget?
2. Does LAPTOP-Diff's normalized feature KD beat BK-SDM's plain feature KD (bk-small)?
Every student is pruned from the toy teacher with its preset, then distilled with the settings
of `slimdiff demo` (same steps, batch, learning rate, seed; task + output + feature KD), and
all are generated on the same test prompts and initial noise (`slimdiff.eval.compare`).
Distillations are kept under `--work` and reused when the bench is rerun with the same settings
(`slimdiff.stages`).
Results: OUT.md, OUT.json.
"""

from __future__ import annotations

import argparse
import datetime
import os
import time
from pathlib import Path

import torch

from slimdiff.demo import DEMO_DISTILL, DEMO_DISTILL_STEPS, demo_distill_settings
from slimdiff.distill import DistillConfig, distill
from slimdiff.eval import stats
from slimdiff.eval.compare import compare
from slimdiff.io import atomic_write, read_json, write_json
from slimdiff.stages import Stage, differences, run_or_reuse
from slimdiff.unet import apply_preset, load_unet, save_student
from slimdiff.sample import load_pipeline

# name -> (preset, feature loss)
STUDENTS = {
    "bk-base (normalized KD)": ("bk-base", "normalized"),
    "bk-small (normalized KD)": ("bk-small", "normalized"),
    "bk-tiny (normalized KD)": ("bk-tiny", "normalized"),
    "bk-small (plain KD)": ("bk-small", "plain"),
}


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--teacher", default="toy")
    # the distillation settings of `slimdiff demo` (slimdiff.demo.DEMO_DISTILL)
    p.add_argument("--distill-steps", type=int, default=DEMO_DISTILL_STEPS)
    p.add_argument("--batch-size", type=int, default=DEMO_DISTILL["batch_size"])
    p.add_argument("--learning-rate", type=float, default=DEMO_DISTILL["learning_rate"])
    p.add_argument("--num-images", type=int, default=256, help="test prompts per model")
    p.add_argument("--seed", type=int, default=DEMO_DISTILL["seed"])
    p.add_argument("--work", default="runs/bench_kd", help="pruned and distilled students (reused on rerun)")
    p.add_argument("--demo", help="a finished `slimdiff demo --out DIR` with the same settings: its distilled "
                   "bk-small (normalized KD) is reused instead of distilled again (identical: same seed)")
    p.add_argument("--out", default="docs/bench/kd", help="writes OUT.md and OUT.json")
    return p.parse_args()


def distilled(args, name: str, preset: str, feat_loss: str, teacher, pipe) -> Path:
    """Prune with `preset` and distill (resumable; reused with the same settings); returns the
    distilled student's directory."""
    work = Path(args.work)
    slug = name.split(" ")[0] + "-" + feat_loss
    pruned, out = work / f"{slug}-pruned", work / slug
    if args.demo and (preset, feat_loss) == ("bk-small", "normalized"):
        demo = read_json(Path(args.demo) / "demo_config.json")
        want = {"model": args.teacher, "preset": preset, "feat_loss": feat_loss, "distill_steps": args.distill_steps,
                "batch_size": args.batch_size, "learning_rate": args.learning_rate, "seed": args.seed}
        differ = differences(demo, want)
        if differ:
            raise ValueError(f"--demo {args.demo} was run with other settings ({'; '.join(differ)})")
        return Path(args.demo) / "distill"

    def prune():
        student, info = apply_preset(teacher, preset)
        save_student(student, pruned, args.teacher, {"preset": preset, **info})

    fields = demo_distill_settings(args.distill_steps, batch_size=args.batch_size, learning_rate=args.learning_rate,
                                   feat_loss=feat_loss, seed=args.seed)

    def train():
        cfg = DistillConfig(teacher=args.teacher, student=str(pruned), out=str(out),
                            checkpoint_every=max(50, args.distill_steps // 4), cache_dir=str(work / "cache"),
                            resume="latest" if (out / "checkpoints").is_dir() else None, **fields)
        t0 = time.time()
        distill(cfg, teacher=teacher, student=load_unet(pruned).train(), pipeline=pipe, progress=True)
        print(f"{name}: distilled in {time.time() - t0:.0f} s")

    run_or_reuse(Stage(pruned.name, {"teacher": args.teacher, "preset": preset}, prune, output=pruned), work, print)
    run_or_reuse(Stage(slug, {"teacher": args.teacher, "preset": preset, **fields}, train, output=out), work, print)
    return out


def main() -> None:
    args = parse_args()
    t_start = time.time()
    load = [f"start: load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores"]
    # 1. the teacher, then every student pruned and distilled with the same budget
    pipe = load_pipeline(args.teacher)
    teacher = pipe.unet.eval()
    dirs = {name: distilled(args, name, preset, feat, teacher, pipe) for name, (preset, feat) in STUDENTS.items()}

    # 2. all on the same prompts and seeds; the teacher is the baseline and the fidelity reference
    unets = {"teacher": teacher, **{name: load_unet(d).eval() for name, d in dirs.items()}}
    extra = {name: {"params": sum(p.numel() for p in u.parameters())} for name, u in unets.items()}
    pipes = [load_pipeline(args.teacher, unet=u) for u in unets.values()]
    # 3. the two questions as paired differences (same draws): base - small - tiny, normalized - plain
    contrasts = [("bk-base (normalized KD)", "bk-small (normalized KD)"),
                 ("bk-small (normalized KD)", "bk-tiny (normalized KD)"),
                 ("bk-small (normalized KD)", "bk-small (plain KD)")]
    result = compare(pipes, names=list(unets), num_images=args.num_images, seed=args.seed, extra=extra,
                     contrasts=contrasts)
    load.append(f"end: load average {os.getloadavg()[0]:.2f}")
    meta = {"args": vars(args), "torch": torch.__version__, "threads": torch.get_num_threads(),
            "date": datetime.datetime.now().isoformat(timespec="seconds"), "wall_s": round(time.time() - t_start),
            "machine_load": load, "confidence": stats.CONFIDENCE}
    write_json(args.out + ".json", {"meta": meta, **result})
    atomic_write(args.out + ".md", render_md(meta, result))
    print(render_md(meta, result))


def render_md(meta: dict, result: dict) -> str:
    a = meta["args"]
    return "\n".join([
        "# Distilled BK-SDM students and the feature-KD variants on the toy world (`bench/bench_kd.py`)", "",
        f"Teacher `{a['teacher']}`. Each student: its preset's blocks removed from the teacher (weights "
        f"inherited), then {a['distill_steps']} distillation steps, batch {a['batch_size']}, AdamW lr "
        f"{a['learning_rate']:g} cosine, task + output + feature KD (the settings of `slimdiff demo`), seed "
        f"{a['seed']}. Evaluation: {a['num_images']} test-split prompts, the toy sampler's defaults, the same "
        f"initial noise for every model. {meta['date']}, {meta['wall_s']} s ({'; '.join(meta['machine_load'])}).", "",
        result["markdown"], "",
        "## The two questions as paired differences (a - b, same prompts, noise and bootstrap draws)", "",
        result["markdown_contrasts"], "",
        "`*`: the 95% CI of the paired difference excludes 0. Higher is better except KID and judge-FID.", "",
        "Reading it: a difference between two rows counts when their intervals are apart, or, against the "
        "teacher, when the row is marked `*`. Fidelity columns: how closely each student reproduces the "
        "teacher's image for the same prompt and noise.", "",
    ])


if __name__ == "__main__":
    main()
