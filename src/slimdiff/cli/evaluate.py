"""`slimdiff evaluate MODEL`: generate from a prompt set and score (toy judge, FID, IS, CLIP)."""

from __future__ import annotations

import argparse
from pathlib import Path

from slimdiff.cli.checks import nonnegative_float, nonnegative_int, positive_int
from slimdiff.cli.generate import SCHEDULER_NAMES, add_sampling_options

from slimdiff.cli.names import JUDGES
from slimdiff.toy.world import SPLITS  # light: numpy only


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "evaluate",
        help="evaluate a model (toy judge, or FID / IS / CLIP from local weights)",
        description=(
            "Generate num-images images with fixed seeds and score them. On the toy world: alignment score, "
            "all-correct, alignment, per-attribute accuracy, KID and judge-FID against the rendered scenes, "
            "each with a 95%% bootstrap CI, plus an image grid (several models at once: slimdiff compare). Any model: FID "
            "(--inception-weights and --ref-images), IS (--inception-weights), CLIP score (--clip-dir)."
        ),
    )
    p.add_argument("model", help="'toy', a diffusers pipeline directory, or a prune/distill output directory")
    p.add_argument("--split", default="test", choices=SPLITS, help="toy-world prompt split (default: test)")
    p.add_argument("--num-images", type=positive_int, default=256,
                   help="images to generate and score (default: 256; judge-FID needs >= 160)")
    add_sampling_options(p)
    p.add_argument("--seed", type=nonnegative_int, default=0, help="scene sampling and image i's seed + i (default: 0)")
    p.add_argument("--scheduler", choices=SCHEDULER_NAMES, help="sampler (default: the pipeline's own)")
    p.add_argument("--batch-size", type=positive_int, default=16, help="prompts per pipeline call (default: 16)")
    p.add_argument("--world", choices=("auto", "toy", "prompts"), default="auto",
                   help="toy-world scoring or your own --prompts (default: auto, from the tokenizer)")
    p.add_argument("--prompts", help="prompts file, one per line (models outside the toy world)")
    p.add_argument("--reference", action="store_true", help="also score rendered images (the toy ceiling)")
    p.add_argument("--judge", choices=JUDGES, help="the toy judge's version (default: the package's; "
                   "recorded in the results' settings)")
    p.add_argument("--inception-weights", help="FID Inception weights file (pt_inception-2015-12-05-6726825d.pth)")
    p.add_argument("--ref-images", help="folder of reference images for FID")
    p.add_argument("--fid-dims", type=int, default=2048, choices=(64, 192, 768, 2048),
                   help="Inception feature layer for FID (default: 2048, the standard pool3)")
    p.add_argument("--clip-dir", help="local transformers CLIP directory for the CLIP score")
    p.add_argument("--device", help="run on this device, e.g. cuda (default: cpu)")
    p.add_argument("--base", help="pipeline to host a U-Net-only MODEL directory (default: its recipe's teacher)")
    p.add_argument("--vae", metavar="DIR", help="decode with this VAE (a prune-vae / distill-vae output)")
    p.add_argument("--unets", metavar="A:K,B:N", help="A-SDM multi-U-Net schedule in MODEL's pipeline: U-Net A for "
                   "the first K steps, B for the next N (e.g. runs/bk-small:10,toy:15); --steps defaults to K+N")
    p.add_argument("--json", help="write the results as JSON to this file")
    p.add_argument("--grid", help="image grid PNG (default: next to --json, else ./evaluate_grid.png)")
    p.add_argument("--no-grid", action="store_true", help="do not write the image grid")
    p.add_argument("--save-images", metavar="DIR", help="also write every generated image as PNG")
    p.set_defaults(func=run, outputs=("json", "grid", "save_images"),
                   inputs=("model", "base", "vae", "prompts", "inception_weights", "ref_images", "clip_dir"))
    return p


def run(args) -> int:
    from slimdiff.sample import read_prompts, resolve_pipeline
    from slimdiff.eval.evaluation import evaluate, summary_rows
    from slimdiff.sample.peers import apply_accelerator, parse_accelerator
    from slimdiff.io import write_json
    from slimdiff.report.tables import text_table

    # 1. where the grid goes, and the prompts of a non-toy model
    grid = None
    if not args.no_grid:
        grid = args.grid or (str(Path(args.json).with_suffix("")) + "_grid.png" if args.json else "evaluate_grid.png")
    toy = {"auto": None, "toy": True, "prompts": False}[args.world]
    prompts = read_prompts(args.prompts) if args.prompts else None
    # 2. the pipeline (an A-SDM multi-U-Net schedule, a training-free accelerator); generate and score
    model = args.model
    if args.accelerate:
        parse_accelerator(args.accelerate)  # a bad spec fails before loading
    if args.unets:  # A-SDM multi-U-Net schedule, hosted in MODEL's pipeline
        from slimdiff.sample import multi_unet_pipeline

        model = multi_unet_pipeline(args.unets, base=args.model, steps=args.steps)
        args.steps = model.config.total_steps
    if args.accelerate:
        model = resolve_pipeline(model, base=args.base)
        apply_accelerator(model, args.accelerate)
    result = evaluate(
        model, split=args.split, num_images=args.num_images, steps=args.steps, guidance=args.guidance,
        seed=args.seed, batch_size=args.batch_size, scheduler=args.scheduler, toy=toy, prompts=prompts,
        ref_images=args.ref_images, inception_weights=args.inception_weights, clip_dir=args.clip_dir,
        grid=grid, reference=args.reference, base=args.base, device=args.device, fid_dims=args.fid_dims,
        images_dir=args.save_images, vae=args.vae, judge_version=args.judge,
    )
    if args.accelerate:
        result["settings"].update(model=args.model, accelerate=args.accelerate)
    if args.unets:
        result["settings"]["model"], result["settings"]["unets"] = args.model, args.unets
    # 3. report
    print(text_table(summary_rows(result)))
    if args.json:
        write_json(args.json, result)
        print(f"results: {args.json}")
    if grid:
        print(f"image grid: {grid}")
    return 0
