"""`slimdiff prune-vae MODEL --ratio 0.5 --out DIR`: SnapFusion's efficient decoder, by channel pruning.

    slimdiff prune-vae sd15-arch --ratio 0.5 --out runs/vae-half      # SD-1.5's VAE, random weights
    slimdiff prune-vae toy --out runs/toy-vae-half                    # also writes DIR/pipeline/

DIR gets the VAE (a plain AutoencoderKL when the widths agree, else slimdiff's
SlimAutoencoderKL), `recipe.json` (teacher, ratio, widths, kept channels) and, for a pipeline
MODEL, `DIR/pipeline/` with the pruned VAE in place. Distill it with `slimdiff distill-vae`.
"""

from __future__ import annotations

import argparse

from slimdiff.cli.names import VAE_IMPORTANCES as IMPORTANCES


def add_parser(subparsers) -> None:

    p = subparsers.add_parser(
        "prune-vae",
        help="channel-prune a VAE decoder (uniform ratio, L1 importance)",
        description="Remove the same fraction of channels from every layer of a VAE's decoder "
                    "(GroupNorm groups, ResNet shortcuts, up-samplers and attention kept consistent).",
    )
    p.add_argument("model", metavar="MODEL", help="toy, sd15-arch, sd21-arch, a pipeline or a VAE directory")
    p.add_argument("--ratio", type=float, default=0.5,
                   help="fraction of each decoder layer's channels removed, in [0, 1) (default: 0.5, SnapFusion)")
    p.add_argument("--importance", choices=IMPORTANCES, default="l1",
                   help="channel importance (default: l1, the L1 norm of the filters producing a channel)")
    p.add_argument("--out", metavar="DIR", required=True, help="output directory")
    p.set_defaults(func=run, outputs=("out",),
                   inputs=("model",))


def run(args: argparse.Namespace) -> int:
    from slimdiff.vae.prune import VaePruneConfig, prune_vae

    config = VaePruneConfig(ratio=args.ratio, importance=args.importance)  # validated here
    written = prune_vae(args.model, args.out, config)
    params = written.pop("decoder_params")
    print(f"decoder: {params['student']:,} parameters ({params['student'] / params['teacher']:.1%} "
          f"of the teacher's {params['teacher']:,})")
    for what, where in written.items():
        print(f"{what}: {where}")
    return 0
