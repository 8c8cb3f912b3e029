"""`slimdiff prune MODEL --search laptop|evolve ... --out DIR`: choose what to remove automatically.

    slimdiff prune toy --search laptop --budget params=0.5 --criterion output --out runs/laptop
    slimdiff prune toy --search evolve --target-latency 8.0 --out runs/evolve

`cli/prune.py` registers these options (`add_search_arguments`) and hands over to `run_search`
when `--search` is given. DIR gets the student and `recipe.json` (as for presets) with the
search's scores, choices and predicted vs measured budget, plus `search.md` and `unit_scores.png`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

SEARCHES = ("laptop", "evolve")


def add_search_arguments(parser: argparse.ArgumentParser, group=None) -> None:
    """Add the search options; `--search` joins `group` (e.g. prune's --preset/--remove group)."""
    from slimdiff.prune.criteria import CRITERIA

    (group or parser).add_argument("--search", choices=SEARCHES, help="choose the units to remove automatically")
    s = parser.add_argument_group("search (--search)")
    s.add_argument("--budget", default="params=0.5", metavar="METRIC=RATIO",
                   help="laptop: pruning ratio of params, flops or latency to remove (default params=0.5)")
    s.add_argument("--criterion", choices=list(CRITERIA), default="output",
                   help="laptop: unit score (output: LAPTOP-Diff output loss; magnitude, random: baselines)")
    s.add_argument("--calib-size", type=int, default=32, metavar="N", help="calibration triples (default 32)")
    s.add_argument("--calib-prompts", metavar="FILE", help="calibration prompts, one per line (non-toy pipelines)")
    s.add_argument("--target-latency", type=float, metavar="MS", help="evolve: latency target (lookup-table ms)")
    s.add_argument("--lut", metavar="FILE", help="latency lookup table (default: built on the teacher)")
    s.add_argument("--stochastic-depth", type=float, metavar="P",
                   help="evolve: robust-train the model first with this skip probability (default: none, "
                        "the model is taken as robust-trained already)")
    s.add_argument("--robust-steps", type=int, default=200, metavar="N", help="evolve: robust training steps")
    s.add_argument("--score-images", type=int, default=32, metavar="N", help="evolve: images per toy alignment score")
    s.add_argument("--score-steps", type=int, default=20, metavar="N", help="evolve: sampler steps per image")
    s.add_argument("--max-rounds", type=int, default=100, metavar="N", help="evolve: architecture actions at most")
    s.add_argument("--search-seed", type=int, default=0, metavar="S", help="calibration / random criterion seed")


def _criterion(args, teacher):
    from slimdiff.prune import calibration as cal
    from slimdiff.prune.criteria import MagnitudeCriterion, OutputLossCriterion, RandomCriterion

    if args.criterion == "magnitude":
        return MagnitudeCriterion()
    if args.criterion == "random":
        return RandomCriterion(args.search_seed)
    prompts = Path(args.calib_prompts).read_text().splitlines() if args.calib_prompts else None
    config = cal.CalibrationConfig(size=args.calib_size, seed=args.search_seed)
    return OutputLossCriterion(cal.calibration_for(args.model, teacher, config, prompts), progress=True)


def _laptop(args, teacher):
    from slimdiff.prune.laptop import Budget, context_length_for, latency_table, laptop_select

    budget = Budget.parse(args.budget)
    ctx = context_length_for(args.model)
    lut = latency_table(teacher, args.lut, ctx) if budget.metric == "latency" else None
    student, result = laptop_select(teacher, _criterion(args, teacher), budget, lut=lut, context_length=ctx,
                                    wallclock=lut is not None)
    r = result
    print(f"laptop ({r.criterion['name']}, {r.budget}): removed {len(r.removed)} of {len(r.candidates)} units; "
          f"{budget.metric} removed: predicted {r.predicted_ratio:.3f}, measured {r.measured_ratio:.3f}")
    return student, result.to_recipe()


def _evolve(args, teacher):
    from slimdiff.eval.runner import is_toy_pipeline, resolve_pipeline
    from slimdiff.prune.evolve import EvolveConfig, evolve, robust_train, toy_alignment_score
    from slimdiff.prune.laptop import context_length_for, latency_table, lut_wallclock_ms

    if args.target_latency is None:
        raise ValueError("--search evolve needs --target-latency MS (see `slimdiff profile` for the teacher's)")
    if not is_toy_pipeline(resolve_pipeline(args.model)):
        raise ValueError(f"--search evolve scores with the toy judge; {args.model!r} is not the toy world "
                         "(call slimdiff.prune.evolve.evolve with your own score_fn)")
    config = EvolveConfig(target_latency_ms=args.target_latency, max_rounds=args.max_rounds)
    lut = latency_table(teacher, args.lut, context_length_for(args.model))
    if args.stochastic_depth:
        teacher = robust_train(teacher, args.stochastic_depth, Path(args.out) / "robust", pipeline=args.model,
                               max_steps=args.robust_steps, seed=args.search_seed)
    score = toy_alignment_score(args.model, num_images=args.score_images, steps=args.score_steps,
                                seed=args.search_seed)
    student, result = evolve(teacher, score, lut, config,
                             progress=lambda a: print(f"round {a.round}: {a.action} {a.unit} -> "
                                                      f"{a.latency_after:.3f} ms"))
    result.measured_latency_ms = lut_wallclock_ms({"student": student}, lut)["student"]
    print(f"evolve: {result.initial_latency:.3f} -> {result.final_latency:.3f} ms predicted "
          f"({result.measured_latency_ms:.3f} measured; target {config.target_latency_ms}); "
          f"{len(result.actions)} actions; {result.stop_reason}")
    robust = {"stochastic_depth": args.stochastic_depth, "steps": args.robust_steps if args.stochastic_depth else 0}
    return student, {**result.to_recipe(), "robust_training": robust}


def run_search(args: argparse.Namespace) -> int:
    """Load the teacher, run the search, write the student, recipe.json and the report."""
    from slimdiff.prune.report import write_search_report
    from slimdiff.unet import load_unet, save_student, to_slim

    if not args.model or not args.out:
        raise ValueError("MODEL and --out DIR are required")
    # 1. teacher, in the editable representation
    teacher = to_slim(load_unet(args.model)).eval()
    # 2. search
    student, search = (_laptop if args.search == "laptop" else _evolve)(args, teacher)
    # 3. student + recipe.json, then the readable report beside them
    written = save_student(student, args.out, source=args.model, recipe={"search": search})
    units = teacher.units()
    write_search_report(args.out, {"search": search}, [u.name for u in units], {u.name: u.kind for u in units})
    for what, where in written.items():
        print(f"{what}: {where}")
    print(f"report: {Path(args.out) / 'search.md'}")
    return 0
