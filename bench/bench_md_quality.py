"""MobileDiffusion on the toy world (issue 22 item 4): the md / md-lite twins and each trick alone, distilled
with the demo's budget, against distilled bk-small (all-correct, paired 95% CIs; `slimdiff.eval.compare`).

    python bench/bench_md_quality.py --reuse bk-small-kd=runs/demo/distill                 # the full table
    python bench/bench_md_quality.py --models md --distill-steps 1 --num-images 4 --sample-steps 5 \\
        --batch-size 2 --work /tmp/md_work --out /tmp/md_quality                          # dry run (minutes)

Models (each built from the toy teacher, then distilled --distill-steps steps with the demo's settings,
`slimdiff.demo.demo_distill_settings`, through bench_asdm.py's `Bench`, so every stage is resumable and
reused only with the same settings): the presets `md` and `md-lite` scaled to the toy's widths (the
bottleneck 0.8 / 0.7 x the teacher's third width, rounded to its norm groups: 96 -> 80 / 64), and bk-small
with one trick (`MDTRICKS` below), the toy twins of bench_md.py's sd15-arch rows. The per-step speed of
each architecture at sd15-arch 512px is bench_md.py's (docs/bench/md.md). Work: 600 distillation steps
per model (~10-20 min each on one thread); run it in chunks (`--models`), each under the shared CPU lock.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench_asdm's Bench (a sibling script)

from bench_asdm import Bench, parse_args as asdm_args  # noqa: E402

from slimdiff.io import atomic_write, write_json  # noqa: E402
from slimdiff.modules import MDTricks, apply_md_tricks  # noqa: E402
from slimdiff.unet import apply_preset, load_unet, save_student  # noqa: E402

# bk-small + one trick (the toy's levels: 0 = 8x8, 1 = 4x4, 2 = 2x2)
MDTRICKS = {
    "bk-small + separable ResNets": MDTricks(separable_levels=(0, 1, 2)),
    "bk-small - 8x8 self-attention (cross only)": MDTricks(cross_only_levels=(0,)),
    "bk-small + shared K/V + FF 3x": MDTricks(shared_kv=True, ff_mult=3.0),
    "bk-small + swish": MDTricks(swish=True),
    "bk-small + ReLU attention": MDTricks(relu=True),
}
MODELS = ["md", "md-lite", *MDTRICKS]


def parse_args() -> argparse.Namespace:
    """--models here; every other flag is bench_asdm.py's (the demo's distillation settings, --reuse, ...)."""
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--models", nargs="+", default=MODELS, choices=MODELS)
    own, rest = p.parse_known_args()
    sys.argv = [sys.argv[0], *rest]
    args = asdm_args()
    args.models = own.models
    if args.work == "runs/bench_asdm":
        args.work = "runs/bench_md_quality"
    if args.out == "docs/bench/asdm":
        args.out = "docs/bench/md_quality"
    return args


def student(b: Bench, name: str) -> str:
    """work/NAME: the preset (md, md-lite) or bk-small with one trick, built from the toy teacher."""
    teacher_name = b.args.teacher

    def make(out: Path):
        teacher = load_unet(teacher_name)
        if name in ("md", "md-lite"):
            model, info = apply_preset(teacher, name)
        else:
            base, info = apply_preset(teacher, "bk-small")
            model, info = apply_md_tricks(base, MDTRICKS[name]), {**info, "md_tricks": MDTRICKS[name].to_dict()}
        save_student(model, out, source=teacher_name, recipe=info)

    key = name.replace(" ", "_").replace("/", "-")
    return b.stage(key, {"teacher": teacher_name, "model": name}, make)


def main() -> None:
    args = parse_args()
    t0 = time.time()
    b = Bench(args)
    models = {"bk-small": b.distill("bk-small-kd", b.prune("bk-small", "bk-small"))}
    for name in args.models:
        key = name.replace(" ", "_").replace("/", "-")
        models[name] = b.distill(f"{key}-kd", student(b, name))
    result = b.compare("md_quality", models, contrasts=[(m, "bk-small") for m in list(models)[1:]])
    write_json(args.out + ".json", {"settings": vars(args), "result": {k: v for k, v in result.items()
                                                                       if k != "prompts"}})
    lines = ["# MobileDiffusion on the toy world (`bench/bench_md_quality.py`)", "",
             f"Teacher {args.teacher}; distillation {args.distill_steps} steps, batch {args.batch_size}, AdamW lr "
             f"{args.learning_rate} cosine, {args.feat_loss} feature KD (the demo's settings); reused: "
             f"{', '.join(args.reuse) or 'none'}; {args.num_images} test-split images per model, seed {args.seed}; "
             f"{round(time.time() - t0)} s.", "", result["markdown"], ""]
    if result.get("markdown_contrasts"):
        lines += ["Paired differences a - b:", "", result["markdown_contrasts"], ""]
    atomic_write(args.out + ".md", "\n".join(lines))
    print(f"wrote {args.out}.md and {args.out}.json")


if __name__ == "__main__":
    main()
