"""`slimdiff distill-vae --teacher toy --student DIR --out DIR`: distill a pruned VAE decoder.

    slimdiff prune-vae toy --ratio 0.5 --out runs/vae-half
    slimdiff distill-vae --teacher toy --student runs/vae-half --out runs/vae-half-kd --max-steps 2000
    slimdiff evaluate toy --vae runs/vae-half-kd          # or: slimdiff evaluate runs/vae-half-kd

The student learns the teacher decoder's images of latents the teacher U-Net generates from
prompts (SnapFusion; `--latents unet`, the default), of the teacher encoder's latents of data
images (`--latents data`), or both. Multi-GPU: `accelerate launch -m slimdiff distill-vae ...`.
"""

from __future__ import annotations

import argparse

from slimdiff.cli.distill import COMMON_OPTIONS, add_options, option_values

# (flag, VaeDistillConfig field, argparse kwargs); defaults and meanings: slimdiff.vae.distill
_OPTIONS = [
    ("--latents", "latents", dict(choices=["unet", "data", "both"], help="unet: U-Net generations (default, "
                                  "SnapFusion); data: encoder latents of --data images; both")),
    ("--num-latents", "num_latents", dict(type=int, help="training latents per source (default 256)")),
    ("--eval-latents", "eval_latents", dict(type=int, help="held-out latents per source for PSNR (default 16)")),
    ("--prompts", "prompts", dict(metavar="FILE", help="prompts for the U-Net latents (default: toy captions)")),
    ("--gen-steps", "gen_steps", dict(type=int, help="sampler steps of the U-Net latents (default: 20 toy, else 25)")),
    ("--guidance", "guidance", dict(type=float, help="CFG scale of the U-Net latents (default: 5 toy, else 7.5)")),
    ("--data", "data", dict(help="--latents data: toy | image folder | .tar shard(s) (default toy)")),
    ("--toy-size", "toy_size", dict(type=int, help="--data toy: number of train scenes (default 4096)")),
    ("--resolution", "resolution", dict(type=int, help="data image size (default: the VAE's sample_size)")),
    ("--lambda-mse", "lambda_mse", dict(type=float, help="image MSE weight (default 1)")),
    ("--lambda-perc", "lambda_perc", dict(type=float, help="perceptual loss weight (default 0)")),
    ("--perceptual-net", "perceptual_net", dict(choices=["auto", "judge", "vgg16"], help="default auto")),
    ("--perceptual-weights", "perceptual_weights", dict(metavar="FILE", help="torchvision-format VGG16 weights")),
    ("--max-steps", "max_steps", dict(type=int, help="optimiser steps (default 1000)")),
    ("--batch-size", "batch_size", dict(type=int, help="latents per process and micro-step (default 8)")),
    ("--lr", "learning_rate", dict(type=float, help="AdamW learning rate (default 1e-4)")),
    *COMMON_OPTIONS,
]


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "distill-vae", help="distill a pruned VAE decoder from its teacher decoder",
        description="Train a pruned decoder (slimdiff prune-vae) on the teacher decoder's images. Writes the VAE, "
                    "recipe.json (with PSNR vs the teacher before/after), latents.safetensors, train_log.jsonl, "
                    "loss_curves.png and, for a pipeline teacher, OUT/pipeline/.")
    p.add_argument("--teacher", required=True, help="toy or a pipeline directory (a VAE dir with --latents data)")
    p.add_argument("--student", required=True, help="a `slimdiff prune-vae` output or a VAE directory")
    p.add_argument("--out", required=True, help="output directory")
    add_options(p, _OPTIONS)
    p.set_defaults(func=run, outputs=("out",),
                   inputs=("teacher", "student", "data", "prompts", "perceptual_weights"))


def run(args: argparse.Namespace) -> int:
    from slimdiff.vae.distill import VaeDistillConfig, distill_vae

    values = {"teacher": args.teacher, "student": args.student, "out": args.out, **option_values(args, _OPTIONS)}
    result = distill_vae(VaeDistillConfig(**values), progress=not args.quiet)
    terms = ", ".join(f"{k} {v:.4g}" for k, v in result.losses.items())
    print(f"distilled {result.steps} steps at {result.steps_per_sec:.2f} steps/s ({terms}); decoder PSNR vs "
          f"teacher {result.psnr_before:.2f} -> {result.psnr_after:.2f} dB")
    print(f"vae: {result.out}" + (f"  pipeline: {result.pipeline_dir}" if result.pipeline_dir else ""))
    return 0
