"""`slimdiff generate MODEL PROMPT...`: images from prompts with fixed seeds (one PNG each, and a grid)."""

from __future__ import annotations

import argparse

from slimdiff.cli.checks import nonnegative_float, nonnegative_int, positive_int

SCHEDULER_NAMES = ("ddim", "dpm", "pndm", "euler", "ddpm")  # = slimdiff.sample.SCHEDULERS


def add_sampling_options(p: argparse.ArgumentParser) -> None:
    """--steps, --guidance, --accelerate: shared by generate and evaluate."""
    p.add_argument("--steps", type=positive_int, help="denoising steps (default: the model recipe's, else 20 on the "
                                                       "toy world, else 25)")
    p.add_argument("--guidance", type=nonnegative_float, help="classifier-free guidance scale (default: the model "
                                                              "recipe's, else 5.0 on the toy world, else 7.5)")
    p.add_argument("--accelerate", metavar="SPEC", help="training-free peer: deepcache:N (any U-Net), "
                                                        "deepcache-lib:N, tome:R (needs slimdiff[peers])")


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "generate",
        help="generate images from prompts",
        description="Generate one image per prompt; image i is seeded with SEED + i, whatever the batch size.",
    )
    p.add_argument("model", help="'toy', a diffusers pipeline directory, or a prune/distill output directory")
    p.add_argument("prompts", nargs="*", metavar="PROMPT", help="text prompts (quote each)")
    p.add_argument("--prompts-file", help="more prompts, one per line")
    add_sampling_options(p)
    p.add_argument("--seed", type=nonnegative_int, default=0, help="image i uses seed + i (default: 0)")
    p.add_argument("--scheduler", choices=SCHEDULER_NAMES, help="sampler (default: the pipeline's own)")
    p.add_argument("--batch-size", type=positive_int, default=8, help="prompts per pipeline call (default: 8)")
    p.add_argument("--height", type=positive_int, help="image height in pixels (default: the pipeline's)")
    p.add_argument("--width", type=positive_int, help="image width in pixels (default: the pipeline's)")
    p.add_argument("--device", help="run on this device, e.g. cuda (default: cpu)")
    p.add_argument("--base", help="pipeline to host a U-Net-only MODEL directory (default: its recipe's teacher)")
    p.add_argument("--vae", metavar="DIR", help="decode with this VAE (a prune-vae / distill-vae output)")
    p.add_argument("--unets", metavar="A:K,B:N", help="A-SDM multi-U-Net schedule in MODEL's pipeline: U-Net A for "
                   "the first K steps, B for the next N (e.g. runs/bk-small:10,toy:15); --steps defaults to K+N")
    p.add_argument("--out", default="images", help="output directory (default: ./images)")
    p.set_defaults(func=run, outputs=("out",),
                   inputs=("model", "base", "vae", "prompts_file"))
    return p


def run(args) -> int:
    from slimdiff.sample import generate, read_prompts, resolve_pipeline, save_images
    from slimdiff.sample.peers import apply_accelerator, parse_accelerator

    # 1. prompts from the command line and the file
    prompts = list(args.prompts) + (read_prompts(args.prompts_file) if args.prompts_file else [])
    if not prompts:
        raise ValueError("no prompts: give PROMPT arguments or --prompts-file FILE")
    # 2. the pipeline (an A-SDM multi-U-Net schedule, a training-free accelerator if asked)
    if args.accelerate:
        parse_accelerator(args.accelerate)  # a bad spec fails before loading
    model = args.model
    if args.unets:
        from slimdiff.sample import multi_unet_pipeline

        model = multi_unet_pipeline(args.unets, base=args.model, steps=args.steps)
        args.steps = model.config.total_steps
    model = resolve_pipeline(model, base=args.base)
    apply_accelerator(model, args.accelerate)
    # 3. generate and write
    images = generate(
        model, prompts, steps=args.steps, guidance=args.guidance, seed=args.seed, scheduler=args.scheduler,
        batch_size=args.batch_size, height=args.height, width=args.width, base=args.base,
        device=args.device, vae=args.vae,
    )
    paths = save_images(images, prompts, args.out)
    print(f"wrote {len(images)} image(s) to {args.out}" + (f" (grid: {paths[-1]})" if len(paths) > len(images) else ""))
    return 0
