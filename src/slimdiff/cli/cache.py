"""`slimdiff cache`: encode a whole data set once (VAE latent moments + text embeddings) for distill.

    slimdiff cache --teacher toy --data toy --cache-dir runs/cache
    slimdiff distill --teacher toy --student runs/bk-small --data toy --cache-dir runs/cache ...

The cache is the one `slimdiff distill --cache-dir` reads and writes (same key: data set,
resolution, encoders and dtype), so give the same --data/--resolution/--toy-size/--mixed-precision.
"""

from __future__ import annotations

import argparse

from slimdiff.cli.distill import add_options, option_values

_OPTIONS = [
    ("--pipeline", "pipeline", dict(metavar="DIR", help="tokenizer/text encoder/VAE source (default: the teacher)")),
    ("--caption-column", "caption_column", dict(help="caption column / .json key (default text)")),
    ("--image-column", "image_column", dict(help="imagefolder image column (default file_name)")),
    ("--resolution", "resolution", dict(type=int, help="image size in pixels (default: U-Net sample size x VAE factor)")),
    ("--toy-size", "toy_size", dict(type=int, help="--data toy: number of train scenes (default 4096)")),
    ("--batch-size", "batch_size", dict(type=int, help="items encoded per batch (default 8)")),
    ("--mixed-precision", "mixed_precision", dict(choices=["no", "fp16", "bf16"], help="encoder dtype, as in distill")),
    ("--seed", "seed", dict(type=int, help="data set seed, as in distill (default 0)")),
    ("--cpu", "cpu", dict(action="store_true", default=None, help="run on the CPU")),
]


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("cache", help="precompute the latent + text cache of a data set for distill",
                              description="Encode every item of --data once into --cache-dir (a progress bar); "
                                          "`slimdiff distill --cache-dir` then skips image loading and the encoders.")
    p.add_argument("--teacher", required=True, help="toy, a pipeline dir or a UNet dir (with --pipeline)")
    p.add_argument("--data", required=True, help="toy | image folder (metadata.jsonl/.csv) | .tar shard(s)")
    p.add_argument("--cache-dir", required=True, help="cache directory")
    add_options(p, _OPTIONS)
    p.set_defaults(func=run, outputs=("cache_dir",),
                   inputs=("teacher", "pipeline", "data"))


def run(args: argparse.Namespace) -> int:
    from slimdiff.distill import DistillConfig
    from slimdiff.train.parts import precompute_cache

    cfg = DistillConfig(teacher=args.teacher, data=args.data, cache_dir=args.cache_dir,
                        **option_values(args, _OPTIONS))
    done, where = precompute_cache(cfg, progress=not args.quiet)
    print(f"encoded {done} items into {where}")
    return 0
