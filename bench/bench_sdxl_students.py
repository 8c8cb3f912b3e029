"""The field's SDXL students on the SDXL toy world (issue 23 item 6): KOALA-1B, KOALA-700M, SSD-1B and
Segmind-Vega shaped students and LAPTOP-Diff at 50% of the parameters, each distilled with the demo's
budget from the `toy-xl` teacher, against the teacher (all-correct and the other toy metrics, paired 95%
CIs; `slimdiff.eval.compare`); and each architecture's per-step latency at sdxl-arch 1024 px.

    python bench/bench_sdxl_students.py --part quality                          # the toy table (chunks: --models)
    python bench/bench_sdxl_students.py --part latency --rounds 3               # sdxl-arch 1024 px, round-robin
    python bench/bench_sdxl_students.py --part quality --models koala-700m --distill-steps 1 --num-images 4 \\
        --sample-steps 5 --batch-size 2 --work /tmp/sdxl_work --out /tmp/sdxl_students   # dry run (minutes)

Students (built from the teacher with `apply_preset`, or LAPTOP's knapsack at params=0.5 with the toy-xl
teacher's output-loss scores on 32 calibration prompts, the pooled text and time ids included), distilled
--distill-steps steps with `slimdiff.demo.demo_distill_settings` through bench_asdm.py's `Bench` (each stage
resumable and reused only with the same settings). The toy-xl U-Net has SDXL-base's topology (Transformer
depths 1 / 2 / 10 per level, none at the first), so every preset's unit names are SDXL's and LAPTOP's
removal on the toy maps onto sdxl-arch unit for unit: the latency part times the same structures at full
size (float32, batch 1 with the conditional and unconditional halves, i.e. one CFG step at batch 2, 1024 px,
`--threads` threads; medians over --rounds round-robin rounds so load drifts hit every model alike).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench_asdm's Bench (a sibling script)

import torch  # noqa: E402
from bench_asdm import Bench, parse_args as asdm_args  # noqa: E402

from slimdiff.io import atomic_write, read_json, write_json  # noqa: E402
from slimdiff.prune.calibration import CalibrationConfig, toy_calibration  # noqa: E402
from slimdiff.prune.criteria import OutputLossCriterion, removable_units  # noqa: E402
from slimdiff.prune.laptop import Budget, BudgetAccount, laptop_select  # noqa: E402
from slimdiff.sample import load_pipeline  # noqa: E402
from slimdiff.unet import apply_preset, load_unet, remove_units, save_student, to_slim  # noqa: E402

PRESETS = ["koala-1b", "koala-700m", "ssd-1b", "vega"]
LAPTOP = "laptop-50"  # LAPTOP-Diff at 50% of the U-Net's parameters (seed 002's SDXL headline)
MODELS = [*PRESETS, LAPTOP]


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--part", choices=["quality", "latency"], default="quality")
    p.add_argument("--models", nargs="+", default=MODELS, choices=MODELS)
    p.add_argument("--distill-only", action="store_true", help="build and distil --models, no evaluation")
    p.add_argument("--rounds", type=int, default=3, help="latency: round-robin rounds")
    p.add_argument("--threads", type=int, default=1, help="latency: torch threads")
    p.add_argument("--resolution", type=int, default=1024, help="latency: image side in pixels (latent / 8)")
    p.add_argument("--arch", default="sdxl-arch",
                   help="latency: the full-size U-Net (a dry run: the toy-xl pipeline, whose topology is the same)")
    own, rest = p.parse_known_args()
    command = " ".join(["python bench/bench_sdxl_students.py", *sys.argv[1:]])
    sys.argv = [sys.argv[0], *rest]
    args = asdm_args()
    for k, v in vars(own).items():
        setattr(args, k, v)
    args.command = command
    if args.teacher == "toy":
        args.teacher = "toy-xl"
    if args.work == "runs/bench_asdm":
        args.work = "runs/bench_sdxl_students"
    if args.out == "docs/bench/asdm":
        args.out = "docs/bench/sdxl_students"
    return args


def laptop_student(b: Bench) -> str:
    """work/laptop-50: LAPTOP's knapsack removing >= 50% of the teacher's parameters at the least summed
    one-shot output-loss score (inner Transformer blocks are candidates of their own)."""
    teacher_name, seed = b.args.teacher, b.args.seed

    def make(out: Path):
        teacher = to_slim(load_unet(teacher_name)).eval()
        calib = toy_calibration(load_pipeline(teacher_name), CalibrationConfig(size=32, seed=seed))
        student, res = laptop_select(teacher, OutputLossCriterion(calib), Budget("params", 0.5),
                                     candidates=removable_units(teacher), measure=False)
        save_student(student, out, source=teacher_name, recipe={"search": res.to_recipe()})

    return b.stage(LAPTOP, {"teacher": teacher_name, "budget": "params=0.5", "seed": seed}, make)


def build(b: Bench, name: str) -> str:
    return laptop_student(b) if name == LAPTOP else b.prune(name, name)


def quality(args) -> dict:
    b = Bench(args)
    distilled = {name: b.distill(f"{name}-kd", build(b, name)) for name in args.models}
    if args.distill_only:
        return {}
    models = {"teacher (toy-xl)": args.teacher, **{f"{n} + KD": path for n, path in distilled.items()}}
    return b.compare("students", models, steps=args.sample_steps, teacher=0)


def _full_size(arch_name: str, name: str, removed: list[str] | None):
    """sdxl-arch with the preset (or LAPTOP's removal list, found on the toy) applied: the same structure
    at SDXL's widths."""
    arch = load_unet(arch_name)
    if name == "sdxl-arch":
        return arch
    if removed is not None:
        return remove_units(to_slim(arch), removed)
    return apply_preset(arch, name)[0]


@torch.no_grad()
def latency(args) -> dict:
    """Per-step latency (one CFG step: the U-Net at batch 2) of sdxl-arch and each student's structure at
    `args.resolution` px, medians over round-robin rounds; each model is built, timed and freed in turn
    (an fp32 SDXL U-Net is ~10 GB)."""
    torch.set_num_threads(args.threads)
    removed = None
    if LAPTOP in args.models:
        recipe = read_json(Path(args.work) / LAPTOP / "recipe.json")
        removed = recipe["search"]["removed"]
    names = ["sdxl-arch", *args.models]
    side = args.resolution // 8
    gen = torch.Generator().manual_seed(0)
    config = load_unet(args.arch).config if args.arch != "sdxl-arch" else None  # sdxl-arch: SDXL-base's widths
    width = config.cross_attention_dim if config else 2048
    pooled = config.projection_class_embeddings_input_dim - 6 * config.addition_time_embed_dim if config else 1280
    x = torch.randn(2, 4, side, side, generator=gen)
    text = torch.randn(2, 77, width, generator=gen)
    added = {"text_embeds": torch.randn(2, pooled, generator=gen),
             "time_ids": torch.tensor([[args.resolution, args.resolution, 0, 0, args.resolution, args.resolution]] * 2,
                                      dtype=torch.float32)}
    times = {n: [] for n in names}
    params = {}
    for r in range(args.rounds):
        for n in names:
            unet = _full_size(args.arch, n, removed if n == LAPTOP else None).eval()
            params[n] = sum(p.numel() for p in unet.parameters())
            t0 = time.perf_counter()
            unet(x, torch.tensor([500, 500]), encoder_hidden_states=text, added_cond_kwargs=added)
            times[n].append(time.perf_counter() - t0)
            print(f"round {r}: {n} {times[n][-1]:.1f} s", flush=True)
            del unet
    base = statistics.median(times["sdxl-arch"])
    rows = {n: {"params": params[n], "seconds": times[n], "median_s": statistics.median(times[n]),
                "speedup": base / statistics.median(times[n])} for n in names}
    return {"rows": rows, "resolution": args.resolution, "threads": args.threads, "rounds": args.rounds,
            "arch": args.arch}


def report(result: dict, args) -> str:
    lines = ["# The field's SDXL students on toy-xl (`bench/bench_sdxl_students.py`)", ""]
    q, lat = result.get("quality"), result.get("latency")
    if q:
        s = q["settings"]
        lines += ["## Quality after the demo's distillation budget", "",
                  f"Teacher {s['teacher']}; distillation {s['distill_steps']} steps, batch {s['batch_size']}, lr "
                  f"{s['learning_rate']} cosine, {s['feat_loss']} feature KD; {s['num_images']} test prompts, seed "
                  f"{s['seed']}, {s['sample_steps']} steps. Command: `{q['command']}`; {q['written']}, load average "
                  f"{q['load']}.", "", q["markdown"], ""]
    if lat:
        lines += ["## Per-step latency at sdxl-arch", "",
                  f"{lat['resolution']} px, one CFG step (U-Net at batch 2), float32, {lat['threads']} thread(s), "
                  f"median of {lat['rounds']} round-robin rounds. Command: `{lat['command']}`; {lat['written']}, "
                  f"load average {lat['load']}.", "", "| model | params (M) | s / step | speed-up |", "|:--|--:|--:|--:|"]
        for n, r in lat["rows"].items():
            lines.append(f"| {n} | {r['params'] / 1e6:.1f} | {r['median_s']:.2f} | {r['speedup']:.2f}x |")
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    import os

    args = parse_args()
    path = Path(args.out + ".json")
    result = read_json(path) if path.is_file() else {}
    part = quality(args) if args.part == "quality" else latency(args)
    if not part:
        return
    part.update(command=args.command, written=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                load=" ".join(f"{v:.2f}" for v in os.getloadavg()))
    if args.part == "quality":
        part["settings"] = {k: getattr(args, k) for k in ("teacher", "distill_steps", "batch_size", "learning_rate",
                                                          "feat_loss", "num_images", "seed", "sample_steps")}
    result[args.part] = part
    write_json(path, result)
    atomic_write(args.out + ".md", report(result, args))
    print(f"wrote {args.out}.md and {path}")


if __name__ == "__main__":
    main()
