"""`slimdiff compare MODEL...`: several models on the same prompts and seeds, one table with CIs."""

from __future__ import annotations

import argparse

from slimdiff.cli.names import JUDGES
from slimdiff.toy.world import SPLITS  # light: numpy only


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "compare",
        help="compare models on the toy world: the same prompts and seeds, 95%% CIs, paired differences",
        description=(
            "Generate num-images images per model from the same prompts and initial noise, score them with "
            "the toy judge (alignment score, all-correct, per attribute, KID, judge-FID, fidelity to the "
            "teacher), and print one table: value [95%% bootstrap CI], '*' where a model differs from the "
            "baseline (first model) beyond noise."
        ),
    )
    p.add_argument("models", nargs="+", help="'toy', pipeline directories, or prune/distill output directories")
    p.add_argument("--names", nargs="+", help="row names (default: the model arguments)")
    p.add_argument("--split", default="test", choices=SPLITS, help="toy-world prompt split (default: test)")
    p.add_argument("--num-images", type=int, default=256, help="images per model (default: 256)")
    p.add_argument("--steps", type=int, help="denoising steps (default: each model's own)")
    p.add_argument("--guidance", type=float, help="guidance scale (default: each model's own)")
    p.add_argument("--seed", type=int, default=0, help="scene sampling and image i's seed + i (default: 0)")
    p.add_argument("--batch-size", type=int, default=16, help="prompts per pipeline call (default: 16)")
    p.add_argument("--baseline", type=int, default=0, help="index of the row differences are taken from (default: 0)")
    p.add_argument("--teacher", default="0", help="index of the teacher row for fidelity, or 'none' (default: 0)")
    p.add_argument("--no-reference", action="store_true", help="leave out the rendered-images ceiling row")
    p.add_argument("--vae", nargs="+", metavar="DIR",
                   help="decode with this VAE (a prune-vae / distill-vae output): one for every model, or one per "
                        "model with '-' for the model's own")
    p.add_argument("--judge", choices=JUDGES, help="the toy judge's version (default: the package's)")
    p.add_argument("--json", help="write the full results as JSON to this file")
    p.add_argument("--md", help="write the markdown table to this file")
    p.set_defaults(func=run, outputs=("json", "md"),
                   inputs=("models", "vae"))
    return p


def run(args) -> int:
    from slimdiff.eval.compare import compare, write

    if args.teacher.lower() == "none":
        teacher = None
    elif args.teacher.lstrip("-").isdigit():
        teacher = int(args.teacher)
    else:
        raise ValueError(f"--teacher {args.teacher!r} is neither a model index nor 'none'")
    vae = args.vae
    if vae is not None:
        if len(vae) not in (1, len(args.models)):
            raise ValueError(f"--vae {' '.join(vae)}: give one VAE for all {len(args.models)} models or one per "
                             f"model ('-' for the model's own)")
        vae = [None if v == "-" else v for v in vae] if len(vae) > 1 else (None if vae[0] == "-" else vae[0])
    result = compare(args.models, names=args.names, split=args.split, num_images=args.num_images,
                     steps=args.steps, guidance=args.guidance, seed=args.seed, batch_size=args.batch_size,
                     baseline=args.baseline, teacher=teacher, reference=not args.no_reference, vae=vae,
                     judge=args.judge)
    print(result["markdown"])
    write(result, args.json, args.md)
    for label, path in (("results", args.json), ("table", args.md)):
        if path:
            print(f"{label}: {path}")
    return 0
