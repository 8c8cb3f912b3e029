"""A-SDM faithfulness on the toy world (issue 10 item 5): the seed's Tables 1-3 with the evaluation
runner's metrics and confidence intervals, equal distillation budgets, the same prompts and seeds.

    python bench/bench_asdm.py --reuse bk-small-kd=runs/demo/distill \\
        bk-tiny-kd=runs/bench_kd/bk-tiny-normalized bk-base-kd=runs/bench_kd/bk-base-normalized   # the committed run
    python bench/bench_asdm.py --distill-steps 1 --num-images 4 --sample-steps 5 --batch-size 2 \\
        --work /tmp/asdm_work --out /tmp/asdm                               # dry run (minutes)

Table 1 (CondConv): bk-small and bk-tiny, each without and with CondConv-e2 in down.0/up.3
(expert 1 inherited, expert 2 random), distilled for STEPS steps each (BK-SDM losses).
Table 2 (progressive incubation): stage 1 = bk-base distilled STEPS steps; stage 2 = M1, M2,
M3 assembled from it and the teacher, teacher parts frozen (the default), SAS losses (mid-block
and perceptual, weight 1 each), STEPS more steps; against bk-base distilled 2 x STEPS steps
(the same total budget) and the teacher.
Table 3 (multi-U-Net): S1 = bk-base (stage 1) for the first 10/25 of the sampler's steps then
the teacher, S2 = teacher 15/25 then bk-base, S3 = teacher 10/25 then bk-base, against each
single U-Net; all rows of Table 3 sample SAMPLE_STEPS steps.
Distillation settings are the demo's (`slimdiff demo`): batch 64, AdamW lr 1e-3, cosine with
warm-up, normalized feature KD, the exact latent/text cache, 600 steps per stage. `--reuse NAME=DIR`
takes an already distilled student (the demo's, bench_kd's) for NAME after checking that its
recipe's settings are the bench's (else a one-line error).
Table 4 (issue 10 item 6): the fast architectures of bench_asdm_speed.py (per step at sd15-arch
512px: bk-tiny; with GRI in place of the 64x64 and 32x32 self-attention, 1.95x; without the
highest-resolution attention, SnapFusion's finding, 2.41x; and with GRI at the next level, 2.59x) and LAPTOP-Diff searched under an sd15-arch latency budget (-60%: the
toy criterion, SD-scale costs, see Bench.laptop), each distilled with the same budget, against
distilled bk-small: which stay within bk-small's CI?
Each table is one `slimdiff.eval.compare` (the same NUM_IMAGES test prompts and initial noise for
every model, 95% bootstrap CIs, `*` where the paired difference from the first row excludes 0, and
paired contrasts between named rows). Work is resumable: a finished model (work/NAME) or table
(work/eval/TABLE.json) is reused when made with the same settings (`slimdiff.stages`).
Results: OUT.md and OUT.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

from slimdiff.demo import DEMO_DISTILL, DEMO_DISTILL_STEPS, demo_distill_settings
from slimdiff.distill import DistillConfig, distill
from slimdiff.eval.compare import compare
from slimdiff.io import atomic_write, read_json, write_json
from slimdiff.modules import CondConvSettings, GRISettings, apply_condconv, apply_gri
from slimdiff.profile import LatencyLUT
from slimdiff.prune.calibration import CalibrationConfig, toy_calibration
from slimdiff.prune.criteria import OutputLossCriterion, removable_units
from slimdiff.prune.laptop import Budget, BudgetAccount, laptop_select
from slimdiff.recipe import read_recipe
from slimdiff.sample import multi_unet_pipeline
from slimdiff.stages import Stage, differences, run_or_reuse
from slimdiff.unet import apply_preset, list_units, load_unet, remove_units, save_student, to_slim
from slimdiff.sample import load_pipeline
from slimdiff.unet.assemble import assemble_saved


# Table 2's stage-2 students: {name: (blocks taken from the compressed student, SAS weights)}.
# A-SDM 2.5: mid-block and perceptual supervision, weight 1 each; M2-mid drops the perceptual term.
INCUBATION = {"M1": ("M1", dict(lambda_mid=1.0, lambda_perc=1.0)),
              "M2": ("M2", dict(lambda_mid=1.0, lambda_perc=1.0)),
              "M3": ("M3", dict(lambda_mid=1.0, lambda_perc=1.0)),
              "M2-mid": ("M2", dict(lambda_mid=1.0))}


LUT = "docs/bench/presets_latency_lut.json"  # sd15-arch 512px per-unit latency (bench_presets_latency.py)
LAPTOP_RATIO = 0.6  # LAPTOP's latency budget in Table 4: remove 60% (2.5x predicted per step)


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--teacher", default="toy")
    # the distillation settings of `slimdiff demo` (slimdiff.demo.DEMO_DISTILL)
    p.add_argument("--distill-steps", type=int, default=DEMO_DISTILL_STEPS,
                   help="distillation budget per stage and model")
    p.add_argument("--batch-size", type=int, default=DEMO_DISTILL["batch_size"], help="distillation batch size")
    p.add_argument("--learning-rate", type=float, default=DEMO_DISTILL["learning_rate"],
                   help="AdamW learning rate, cosine")
    p.add_argument("--feat-loss", default=DEMO_DISTILL["feat_loss"], help="feature KD form")
    p.add_argument("--reuse", nargs="*", default=[], metavar="NAME=DIR",
                   help="already distilled students with the same settings, e.g. bk-small-kd=runs/demo/distill")
    p.add_argument("--num-images", type=int, default=256, help="images per evaluation")
    p.add_argument("--sample-steps", type=int, default=25, help="sampler steps (A-SDM Table 3 splits 10 + 15)")
    p.add_argument("--incubation", nargs="+", default=["M1", "M2", "M3", "M2-mid"], choices=list(INCUBATION),
                   help="Table 2's assembled students (each ~20 min at 600 steps with the perceptual term; "
                        "M2-mid: M2 with the mid-block term only, which separates the perceptual term's effect)")
    p.add_argument("--tables", nargs="+", type=int, default=[1, 2, 3, 4], choices=[1, 2, 3, 4])
    p.add_argument("--seed", type=int, default=DEMO_DISTILL["seed"])
    p.add_argument("--work", default="runs/bench_asdm", help="models and evaluations (resumable)")
    p.add_argument("--out", default="docs/bench/asdm", help="writes OUT.md and OUT.json")
    return p.parse_args()


class Bench:
    def __init__(self, args: argparse.Namespace):
        self.args, self.work = args, Path(args.work)
        self.reuse = {}
        for item in args.reuse:
            name, sep, path = item.partition("=")
            if not sep or not (Path(path) / "recipe.json").is_file():
                raise ValueError(f"--reuse {item!r} is invalid: NAME=DIR with DIR a distilled student (recipe.json)")
            self.reuse[name] = path

    def settings(self, steps: int) -> dict:
        """The DistillConfig fields every model of the bench shares: the demo's (slimdiff.demo)."""
        a = self.args
        return dict(teacher=a.teacher, cache_dir=str(self.work / "cache"),
                    **demo_distill_settings(steps, batch_size=a.batch_size, learning_rate=a.learning_rate,
                                            feat_loss=a.feat_loss, seed=a.seed))

    def stage(self, name: str, settings: dict, make) -> str:
        """work/NAME made by `make(out)`, or reused when made with the same `settings` (slimdiff.stages)."""
        out = self.work / name
        run_or_reuse(Stage(name, settings, lambda: make(out), output=out), self.work, lambda m: print(m, flush=True))
        return str(out)

    def reused(self, name: str) -> str:
        """work/NAME's stand-in from --reuse, checked to be distilled with the bench's settings."""
        path = self.reuse[name]
        saved = read_recipe(path)["distill"]["config"]
        want = {k: v for k, v in self.settings(self.args.distill_steps).items() if k not in ("cache_dir", "cpu")}
        differ = differences(saved, want)
        if differ:
            raise ValueError(f"--reuse {name}={path} was distilled with other settings ({'; '.join(differ)})")
        return path

    # ------------------------------------------------------------------ models
    def prune(self, name: str, preset: str, condconv: bool = False) -> str:
        """A preset student (with CondConv-e2 in down.0/up.3) of the teacher, saved in work/NAME."""
        teacher_name, seed = self.args.teacher, self.args.seed

        def make(out: Path):
            teacher = load_unet(teacher_name)
            student, info = apply_preset(teacher, preset)
            if condconv:
                cc = CondConvSettings(experts=2, init="e2", seed=seed)
                student, info = apply_condconv(student, teacher, cc), {**info, "condconv": cc.to_dict()}
            save_student(student, out, source=teacher_name, recipe=info)

        return self.stage(name, {"teacher": teacher_name, "preset": preset, "condconv": condconv,
                                 "seed": seed if condconv else None}, make)

    def distill(self, name: str, student: str, **losses) -> str:
        """`student` distilled for --distill-steps steps into work/NAME (resumes a killed run)."""
        if name in self.reuse and not losses:
            return self.reused(name)
        a = self.args

        def make(out: Path):
            resume = "latest" if (out / "checkpoints").is_dir() and any((out / "checkpoints").iterdir()) else None
            cfg = DistillConfig(student=student, out=str(out), resume=resume,
                                checkpoint_every=max(1, a.distill_steps // 4), **self.settings(a.distill_steps),
                                **losses)
            t0 = time.time()
            distill(cfg, progress=False)
            print(f"{name}: distilled {a.distill_steps} steps in {time.time() - t0:.0f} s", flush=True)

        settings = {k: v for k, v in self.settings(a.distill_steps).items() if k != "cache_dir"}
        return self.stage(name, {"student": student, **settings, **losses}, make)

    def assemble(self, name: str, student: str, take: str) -> str:
        return self.stage(name, {"student": student, "teacher": self.args.teacher, "take": take},
                          lambda out: assemble_saved(student, self.args.teacher, take, str(out)))

    def fast(self, name: str, gri_levels: tuple = (1,), drop_level0: bool = True) -> str:
        """The fast architectures of bench_asdm_speed.py, at toy scale: bk-tiny, (drop_level0) without the
        attention of the highest resolution (SnapFusion), with GRI at `gri_levels`. The toy latent is 8x8
        (level 0) and 4x4 (level 1): window 2 (a quarter / half of the side, as 16 at SD's 64x64 / 32x32),
        reduction 2 (a 4x4 / 2x2 pooled set)."""
        teacher_name = self.args.teacher

        def make(out: Path):
            student, recipe = apply_preset(load_unet(teacher_name), "bk-tiny")
            if drop_level0:
                units = [u.name for u in list_units(student) if u.kind == "attn" and u.level == 0]  # the 8x8 ones
                student, recipe = remove_units(student, units), {**recipe, "removed_after_preset": units}
            if gri_levels:
                settings = GRISettings(window=2, reduction=2, levels=tuple(gri_levels))
                student, recipe = apply_gri(student, settings), {**recipe, "gri": dataclasses.asdict(settings)}
            save_student(student, out, source=teacher_name, recipe=recipe)

        return self.stage(name, {"teacher": teacher_name, "gri_levels": list(gri_levels), "drop_level0": drop_level0},
                          make)

    def laptop(self, name: str, ratio: float) -> str:
        """LAPTOP-Diff searched for SD-scale speed: the toy teacher's output-loss scores are the criterion
        (32 calibration prompts, as bench_laptop.py), each unit's cost is its latency in sd15-arch at 512px
        (the committed table of bench_presets_latency.py, LUT), and the exact knapsack removes at least
        RATIO of that latency at the least summed score. The toy U-Net has sd15-arch's topology, so the
        unit names are the same; bench_asdm_speed.py times the same removal on sd15-arch."""
        teacher_name, seed = self.args.teacher, self.args.seed

        def make(out: Path):
            teacher = to_slim(load_unet(teacher_name)).eval()
            candidates = removable_units(teacher)
            account = BudgetAccount.build(load_unet("sd15-arch"), "latency", candidates, LatencyLUT.load(LUT))
            calib = toy_calibration(load_pipeline(teacher_name), CalibrationConfig(size=32, seed=seed))
            student, res = laptop_select(teacher, OutputLossCriterion(calib), Budget("latency", ratio),
                                         candidates=candidates, account=account, measure=False)
            save_student(student, out, source=teacher_name,
                         recipe={"search": {**res.to_recipe(), "costs_from": f"sd15-arch, {LUT}"}})

        return self.stage(name, {"teacher": teacher_name, "ratio": ratio, "seed": seed, "lut": LUT}, make)

    # ------------------------------------------------------------------ evaluation
    def compare(self, table: str, models: dict, steps=None, contrasts=(), teacher: int | None = None) -> dict:
        """`slimdiff.eval.compare` of `models` {label: model} on the same test prompts and noise, the first
        row the baseline of the paired differences; work/eval/TABLE.json, reused with the same settings."""
        a = self.args
        key = {"models": list(models), "num_images": a.num_images, "steps": steps, "seed": a.seed,
               "distill_steps": a.distill_steps}

        def make(path: Path):
            t0 = time.time()
            result = compare(list(models.values()), names=list(models), num_images=a.num_images, steps=steps,
                             seed=a.seed, teacher=teacher, contrasts=contrasts, progress=False)
            write_json(path, result)
            print(f"{table}: compared {len(models)} models in {time.time() - t0:.0f} s", flush=True)

        path = self.work / "eval" / f"{table}.json"
        run_or_reuse(Stage(table, key, lambda: make(path), output=path), path.parent, lambda m: print(m, flush=True))
        return read_json(path)


def table1(b: Bench) -> dict:
    models = {}
    for preset in ("bk-small", "bk-tiny"):
        for cc in (False, True):
            name = f"{preset}{'-cc-e2' if cc else ''}"
            models[name] = b.distill(f"{name}-kd", b.prune(name, preset, condconv=cc))
    return b.compare("table1", models, contrasts=[("bk-small-cc-e2", "bk-small"), ("bk-tiny-cc-e2", "bk-tiny")])


def table2(b: Bench) -> dict:
    base_kd = b.distill("bk-base-kd", b.prune("bk-base", "bk-base"))
    models = {"teacher": b.args.teacher, "bk-base (2 x budget)": b.distill("bk-base-kd2", base_kd)}
    labels = []
    for m in b.args.incubation:
        take, sas = INCUBATION[m]
        label = f"{m} (teacher parts frozen{', mid-block SAS only' if 'lambda_perc' not in sas else ''})"
        models[label] = b.distill(f"{m}-kd", b.assemble(take, base_kd, take), **sas)
        labels.append(label)
    contrasts = [(m, "bk-base (2 x budget)") for m in labels]
    if "M2" in b.args.incubation and "M2-mid" in b.args.incubation:
        contrasts.append((labels[b.args.incubation.index("M2-mid")], labels[b.args.incubation.index("M2")]))
    return b.compare("table2", models, teacher=0, contrasts=contrasts)


def table3(b: Bench) -> dict:
    steps, teacher = b.args.sample_steps, b.args.teacher
    small = b.distill("bk-base-kd", b.prune("bk-base", "bk-base"))
    k10, k15 = round(steps * 10 / 25), round(steps * 15 / 25)
    schedules = {"S1: bk-base first, teacher after": [(small, k10), (teacher, steps - k10)],
                 "S2: teacher first, bk-base after": [(teacher, k15), (small, steps - k15)],
                 "S3: teacher first (fewer), bk-base after": [(teacher, k10), (small, steps - k10)]}
    models = {"teacher": teacher, "bk-base": small}
    for name, sched in schedules.items():
        models[f"{name} ({sched[0][1]} + {sched[1][1]})"] = multi_unet_pipeline(sched, base=teacher, steps=steps)
    labels = list(models)
    return b.compare("table3", models, steps=steps, teacher=0, contrasts=[(m, "bk-base") for m in labels[2:]])


def table4(b: Bench) -> dict:
    """The fastest candidates against distilled bk-small (issue 10 item 6: within its CI?)."""
    tiny_gri01 = b.fast("tiny-gri01", gri_levels=(0, 1), drop_level0=False)
    laptop = b.laptop("laptop-lat", LAPTOP_RATIO)
    models = {"bk-small (1.61x)": b.distill("bk-small-kd", b.prune("bk-small", "bk-small")),
              "bk-tiny (1.77x)": b.distill("bk-tiny-kd", b.prune("bk-tiny", "bk-tiny")),
              "bk-tiny + GRI at 64x64 and 32x32 (1.95x)": b.distill("tiny-gri01-kd", tiny_gri01),
              "bk-tiny - 64x64 attn (2.41x)": b.distill("fast-noattn-kd", b.fast("fast-noattn", gri_levels=())),
              "bk-tiny - 64x64 attn + GRI at 32x32 (2.59x)": b.distill("fast-kd", b.fast("fast")),
              f"LAPTOP, sd15-arch latency -{LAPTOP_RATIO:.0%} (2.23x)": b.distill("laptop-lat-kd", laptop)}
    labels = list(models)
    contrasts = [(labels[2], labels[1]), (labels[3], labels[1]), (labels[4], labels[3]), (labels[5], labels[0])]
    result = b.compare("table4", models, contrasts=contrasts)
    # the LAPTOP architecture, for bench_asdm_speed.py to time on sd15-arch
    search = read_recipe(laptop)["search"]
    result["laptop"] = {"removed": search["removed"], "costs_from": search["costs_from"],
                        "ratio": search["budget"]["ratio"], "predicted_ratio": search["budget"]["predicted_ratio"]}
    return result


TITLES = {1: "Table 1: CondConv-e2 (A-SDM Table 1)", 2: "Table 2: progressive incubation (A-SDM Table 2)",
          3: "Table 3: multi-U-Net schedules (A-SDM Table 3)",
          4: "Table 4: the fastest architectures vs distilled bk-small (per-step speed-ups at sd15-arch 512px: "
             "bk-small's from bench_presets_latency.py, the others from bench_asdm_speed.py)"}


def report(results: dict, args: argparse.Namespace, seconds: float, kept=frozenset()) -> str:
    lines = ["# A-SDM on the toy world (`bench/bench_asdm.py`)", "",
             f"Teacher {args.teacher}; distillation {args.distill_steps} steps per stage, batch {args.batch_size}, "
             f"AdamW lr {args.learning_rate} cosine, {args.feat_loss} feature KD (the demo's settings); "
             f"reused: {', '.join(args.reuse) or 'none'}; "
             f"{args.num_images} test-split images per model, seed {args.seed}; {round(seconds)} s.", ""]
    for t, result in results.items():
        lines += [f"## {TITLES[int(t)]}", "", result["markdown"], ""]
        if t in kept:
            when = f"the run of {result['written']}" if result.get("written") else "an earlier run"
            reused = f"; that run reused {', '.join(result['reused'])}" if result.get("reused") else ""
            lines[-1:-1] = ["", f"(Kept from {when}{reused}: not rerun by this invocation.)"]
        if result.get("markdown_contrasts"):
            lines += ["Paired differences a - b:", "", result["markdown_contrasts"], ""]
    return "\n".join(lines)


def main() -> None:
    args = parse_args()
    t0 = time.time()
    bench = Bench(args)
    tables = {1: table1, 2: table2, 3: table3, 4: table4}
    results = {}
    for t in args.tables:
        results[str(t)] = {k: v for k, v in tables[t](bench).items() if k != "prompts"}
        results[str(t)]["written"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
        results[str(t)]["reused"] = list(args.reuse)
    kept = {}
    if Path(args.out + ".json").is_file():  # tables not rerun now are kept from the earlier run, and say so
        old = read_json(args.out + ".json")
        for t, r in old.get("results", {}).items():
            if t not in results and old.get("settings", {}).get("distill_steps") == args.distill_steps:
                kept[t] = {**r, "written": r.get("written"), "reused": r.get("reused", old["settings"].get("reuse", []))}
    results = dict(sorted({**kept, **results}.items()))
    write_json(args.out + ".json", {"settings": vars(args), "results": results})
    atomic_write(args.out + ".md", report(results, args, time.time() - t0, kept=set(kept)))
    print(f"wrote {args.out}.md and {args.out}.json")


if __name__ == "__main__":
    main()
