"""`slimdiff toy ...`: train the toy world's pipeline and judge, render scenes.

    slimdiff toy train --out runs/toy-train [--stage vae|unet|judge|all] [--steps N] [--seed S] [--resume]
    slimdiff toy render --split test -n 16 --out grid.png

Evaluation is `slimdiff evaluate toy --split test --num-images 128 --seed 0 --reference`.
"""

from __future__ import annotations

import argparse

from slimdiff.cli.checks import nonnegative_int, positive_int


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("toy", help="the embedded toy world: train its pipeline and judge, render scenes (evaluate: `slimdiff evaluate toy`)")
    sub = p.add_subparsers(dest="toy_command", metavar="ACTION", required=True)

    t = sub.add_parser("train", help="train the toy pipeline (vae, unet + text encoder) and the judge")
    t.add_argument("--out", required=True, help="run directory (checkpoints, logs, pipeline/, judge/)")
    t.add_argument("--stage", default="all", choices=["vae", "unet", "judge", "all"])
    t.add_argument("--steps", type=positive_int, default=None, help="U-Net training steps (default: the recipe's)")
    t.add_argument("--seed", type=nonnegative_int, default=0)
    t.add_argument("--resume", action="store_true", help="continue from the checkpoints in --out")
    t.add_argument("--threads", type=positive_int, default=None,
                   help="torch threads (default: the recipe's; 1 is fastest when other jobs share the cores)")
    t.add_argument("--world", default="toy", choices=["toy", "toy-xl"],
                   help="toy (default: SD-1.5's topology) | toy-xl (SDXL's: two text encoders, time ids; not shipped "
                        "yet; put a VAE and its latents.pt in --out first, e.g. the toy's vae/ and --stage unet)")
    t.set_defaults(func=run_train)

    r = sub.add_parser("render", help="render scenes of a split with their captions")
    r.add_argument("--split", default="test")
    r.add_argument("-n", type=positive_int, default=16)
    r.add_argument("--seed", type=nonnegative_int, default=0)
    r.add_argument("--out", required=True, help="PNG grid to write; captions are printed")
    r.set_defaults(func=run_render)


def run_train(args: argparse.Namespace) -> int:
    from slimdiff.toy.train import TOY_XL, ToyTrainConfig, run

    overrides = {"seed": args.seed, **(TOY_XL if args.world == "toy-xl" else {})}
    if args.steps is not None:
        overrides["unet_steps"] = args.steps
    if args.threads is not None:
        overrides["threads"] = args.threads
    run(ToyTrainConfig(**overrides), args.out, stage=args.stage, resume=args.resume)
    return 0


def run_render(args: argparse.Namespace) -> int:
    from slimdiff.toy import world
    from slimdiff.toy.evaluate import save_grid

    scenes = world.sample_scenes(args.split, args.n, seed=args.seed)
    save_grid(world.to_tensor(world.render_batch(scenes)), args.out)
    for i, s in enumerate(scenes):
        print(f"{i:3d}  {world.caption(s)}")
    return 0
