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
Every model is scored by `slimdiff.eval.runner.evaluate` on the toy test split with the same
NUM_IMAGES scenes and seeds; the tables show `summary_rows` (the runner's metrics with their
CIs). Work is resumable: a finished model (its recipe.json) or evaluation (its JSON) is reused.
Results: OUT.md and OUT.json.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from slimdiff.io import atomic_write, read_json, write_json


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--teacher", default="toy")
    p.add_argument("--distill-steps", type=int, default=600, help="distillation budget per stage and model (demo: 600)")
    p.add_argument("--batch-size", type=int, default=64, help="distillation batch size (demo: 64)")
    p.add_argument("--learning-rate", type=float, default=1e-3, help="AdamW learning rate, cosine (demo: 1e-3)")
    p.add_argument("--feat-loss", default="normalized", help="feature KD form (demo: normalized)")
    p.add_argument("--reuse", nargs="*", default=[], metavar="NAME=DIR",
                   help="already distilled students with the same settings, e.g. bk-small-kd=runs/demo/distill")
    p.add_argument("--num-images", type=int, default=256, help="images per evaluation")
    p.add_argument("--sample-steps", type=int, default=25, help="sampler steps (A-SDM Table 3 splits 10 + 15)")
    p.add_argument("--tables", nargs="+", type=int, default=[1, 2, 3], choices=[1, 2, 3])
    p.add_argument("--seed", type=int, default=0)
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
        """The DistillConfig fields every model of the bench shares (the demo's)."""
        a = self.args
        return dict(teacher=a.teacher, data="toy", max_steps=steps, batch_size=a.batch_size,
                    learning_rate=a.learning_rate, lr_scheduler="cosine", lr_warmup_steps=min(50, steps // 10),
                    feat_loss=a.feat_loss, seed=a.seed, cpu=True, cache_dir=str(self.work / "cache"))

    def reused(self, name: str) -> str:
        """work/NAME's stand-in from --reuse, checked to be distilled with the bench's settings."""
        path = self.reuse[name]
        saved = read_json(Path(path) / "recipe.json")["distill"]["config"]
        want = {k: v for k, v in self.settings(self.args.distill_steps).items() if k not in ("cache_dir", "cpu")}
        differ = {k: (saved.get(k), v) for k, v in want.items() if saved.get(k) != v}
        if differ:
            raise ValueError(f"--reuse {name}={path} was distilled with other settings {differ} (saved, bench)")
        return path

    # ------------------------------------------------------------------ models
    def prune(self, name: str, preset: str, condconv: bool = False) -> str:
        """A preset student (with CondConv-e2 in down.0/up.3) of the teacher, saved in work/NAME."""
        from slimdiff.modules import CondConvSettings, apply_condconv
        from slimdiff.unet import apply_preset, load_unet, save_student

        out = self.work / name
        if not (out / "recipe.json").is_file():
            teacher = load_unet(self.args.teacher)
            student, info = apply_preset(teacher, preset)
            if condconv:
                cc = CondConvSettings(experts=2, init="e2", seed=self.args.seed)
                student, info = apply_condconv(student, teacher, cc), {**info, "condconv": cc.to_dict()}
            save_student(student, out, source=self.args.teacher, recipe=info)
        return str(out)

    def distill(self, name: str, student: str, **losses) -> str:
        """`student` distilled for --distill-steps steps into work/NAME (resumes a killed run)."""
        from slimdiff.distill import DistillConfig, distill

        if name in self.reuse and not losses:
            return self.reused(name)
        out = self.work / name
        if (out / "recipe.json").is_file() and "distill" in read_json(out / "recipe.json"):
            return str(out)
        a = self.args
        resume = "latest" if (out / "checkpoints").is_dir() and any((out / "checkpoints").iterdir()) else None
        cfg = DistillConfig(student=student, out=str(out), resume=resume, checkpoint_every=max(1, a.distill_steps // 4),
                            **self.settings(a.distill_steps), **losses)
        t0 = time.time()
        distill(cfg, progress=False)
        print(f"{name}: distilled {a.distill_steps} steps in {time.time() - t0:.0f} s", flush=True)
        return str(out)

    def assemble(self, name: str, student: str, take: str) -> str:
        from slimdiff.unet.assemble import assemble_saved

        out = self.work / name
        if not (out / "recipe.json").is_file():
            assemble_saved(student, self.args.teacher, take, str(out))
        return str(out)

    # ------------------------------------------------------------------ evaluation
    def evaluate(self, name: str, model, steps: int | None = None) -> dict:
        """The runner's evaluation of `model` (a path or a pipeline), cached in work/eval/NAME.json."""
        from slimdiff.eval.runner import evaluate

        path = self.work / "eval" / f"{name}.json"
        if path.is_file():
            return read_json(path)
        a = self.args
        result = evaluate(model, split="test", num_images=a.num_images, steps=steps, seed=a.seed, grid=None,
                          progress=False)
        write_json(path, result)
        return result


def table1(b: Bench) -> dict:
    rows = {}
    for preset in ("bk-small", "bk-tiny"):
        for cc in (False, True):
            name = f"{preset}{'-cc-e2' if cc else ''}"
            rows[name] = b.evaluate(name, b.distill(f"{name}-kd", b.prune(name, preset, condconv=cc)))
    return rows


def table2(b: Bench) -> dict:
    base_kd = b.distill("bk-base-kd", b.prune("bk-base", "bk-base"))
    rows = {"teacher": b.evaluate("teacher", b.args.teacher)}
    rows["bk-base (2 x budget)"] = b.evaluate("bk-base-kd2", b.distill("bk-base-kd2", base_kd))
    sas = dict(lambda_mid=1.0, lambda_perc=1.0)  # A-SDM 2.5: mid-block and perceptual supervision
    for m in ("M1", "M2", "M3"):
        rows[f"{m} (teacher parts frozen)"] = b.evaluate(m, b.distill(f"{m}-kd", b.assemble(m, base_kd, m), **sas))
    return rows


def table3(b: Bench) -> dict:
    from slimdiff.sample import multi_unet_pipeline

    steps, teacher = b.args.sample_steps, b.args.teacher
    small = b.distill("bk-base-kd", b.prune("bk-base", "bk-base"))
    k10, k15 = round(steps * 10 / 25), round(steps * 15 / 25)
    schedules = {"S1: bk-base first, teacher after": [(small, k10), (teacher, steps - k10)],
                 "S2: teacher first, bk-base after": [(teacher, k15), (small, steps - k15)],
                 "S3: teacher first (fewer), bk-base after": [(teacher, k10), (small, steps - k10)]}
    rows = {"teacher": b.evaluate(f"teacher-{steps}", teacher, steps),
            "bk-base": b.evaluate(f"bk-base-{steps}", small, steps)}
    for name, sched in schedules.items():
        label = f"{name} ({sched[0][1]} + {sched[1][1]})"
        pipe = multi_unet_pipeline(sched, base=teacher, steps=steps)
        rows[label] = b.evaluate(name.split(":")[0] + f"-{steps}", pipe, steps)
    return rows


def report(results: dict, args: argparse.Namespace, seconds: float) -> str:
    from slimdiff.eval.runner import summary_rows
    from slimdiff.report.tables import text_table

    titles = {1: "Table 1: CondConv-e2 (A-SDM Table 1)", 2: "Table 2: progressive incubation (A-SDM Table 2)",
              3: "Table 3: multi-U-Net schedules (A-SDM Table 3)"}
    lines = ["# A-SDM on the toy world (`bench/bench_asdm.py`)", "",
             f"Teacher {args.teacher}; distillation {args.distill_steps} steps per stage, batch {args.batch_size}, "
             f"AdamW lr {args.learning_rate} cosine, {args.feat_loss} feature KD (the demo's settings); "
             f"reused: {', '.join(args.reuse) or 'none'}; "
             f"{args.num_images} test-split images per model, seed {args.seed}; {round(seconds)} s.", ""]
    for t, rows in results.items():
        # one row per model, one column per headline metric of the runner (values as it formats them)
        table = [{"model": name, **{r["metric"]: r["value"] for r in summary_rows(result)}}
                 for name, result in rows.items()]
        lines += [f"## {titles[int(t)]}", "", "```", text_table(table), "```", ""]
    return "\n".join(lines)


def main() -> None:
    args = parse_args()
    t0 = time.time()
    bench = Bench(args)
    tables = {1: table1, 2: table2, 3: table3}
    results = {str(t): tables[t](bench) for t in args.tables}
    write_json(args.out + ".json", {"settings": vars(args), "results": results})
    atomic_write(args.out + ".md", report(results, args, time.time() - t0))
    print(f"wrote {args.out}.md and {args.out}.json")


if __name__ == "__main__":
    main()
