"""`slimdiff prune MODEL --search laptop|evolve ... --out DIR`: choose what to remove automatically.

    slimdiff prune toy --search laptop --budget params=0.5 --criterion output --out runs/laptop
    slimdiff prune toy --search evolve --target-latency 8.0 --out runs/evolve
    slimdiff prune toy --search laptop --budget latency=0.6 --replace separable cross_only trim --out runs/choices

`cli/prune.py` registers these options (`add_search_arguments`) and hands over to `run`
when `--search` is given, which maps them to a `slimdiff.prune.SearchConfig` and calls
`slimdiff.prune.run_search` and `save_search`. DIR gets the student and `recipe.json` (as for
presets) with the search's scores, choices, settings and predicted vs measured budget, plus
`search.md` and `unit_scores.png`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from slimdiff.cli.names import CRITERIA, REPLACEMENTS, SEARCHES


def add_search_arguments(parser: argparse.ArgumentParser, group=None) -> None:
    """Add the search options; `--search` joins `group` (e.g. prune's --preset/--remove group)."""

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
    s.add_argument("--stochastic-depth", type=float, default=0.0, metavar="P",
                   help="evolve: robust training (SnapFusion) with this skip probability, before the first round "
                        "and between rounds (default 0: none, the model is taken as robust-trained already)")
    s.add_argument("--robust-steps", type=int, default=200, metavar="N", help="evolve: robust training steps "
                   "before the first round (default 200)")
    s.add_argument("--robust-steps-per-round", type=int, default=50, metavar="N",
                   help="evolve: robust training steps before every later round (default 50)")
    s.add_argument("--score-images", type=int, default=32, metavar="N", help="evolve: images per toy alignment score")
    s.add_argument("--score-steps", type=int, default=20, metavar="N", help="evolve: sampler steps per image")
    s.add_argument("--score-tolerance", type=float, default=0.0, metavar="D",
                   help="evolve: a score loss at or below D counts as 0 (the score's noise level)")
    s.add_argument("--max-rounds", type=int, default=100, metavar="N", help="evolve: architecture actions at most")
    s.add_argument("--remove-only", action="store_true", help="evolve: never add copies of units")
    s.add_argument("--replace", nargs="+", choices=REPLACEMENTS, default=[], metavar="OPTION",
                   help=f"both: units may also become cheaper MobileDiffusion types ({', '.join(REPLACEMENTS)}); "
                        "laptop then solves keep / remove / replace as a multiple-choice knapsack")
    s.add_argument("--search-seed", type=int, default=0, metavar="S",
                   help="calibration, random criterion, score and robust-training seed")


def search_config(args: argparse.Namespace):
    """The `SearchConfig` the flags describe."""
    from slimdiff.prune.search import SearchConfig

    if not args.model or not args.out:
        raise ValueError("MODEL and --out DIR are required")
    prompts = Path(args.calib_prompts).read_text().splitlines() if args.calib_prompts else None
    return SearchConfig(
        model=args.model, method=args.search, out=args.out, seed=args.search_seed, lut=args.lut,
        budget=args.budget, criterion=args.criterion, calib_size=args.calib_size, calib_prompts=prompts,
        target_latency_ms=args.target_latency, max_rounds=args.max_rounds, allow_add=not args.remove_only,
        score_tolerance=args.score_tolerance, stochastic_depth=args.stochastic_depth or 0.0,
        robust_steps=args.robust_steps, robust_steps_per_round=args.robust_steps_per_round,
        score_images=args.score_images, score_steps=args.score_steps, replace=tuple(args.replace),
    )


def run(args: argparse.Namespace) -> int:
    """Run the search (`slimdiff.prune.run_search`) and write the student, recipe.json and report."""
    from slimdiff.prune.search import run_search, save_search

    config = search_config(args)
    student, recipe = run_search(config)
    for what, where in save_search(student, recipe, config).items():
        print(f"{what}: {where}")
    return 0
