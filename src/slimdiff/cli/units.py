"""`slimdiff units MODEL`: every unit of a U-Net with its kind, parameters, channels, resolution.

    slimdiff units sd15-arch
    slimdiff units out/student --json units.json
"""

from __future__ import annotations

import argparse

from slimdiff.cli.checks import positive_int
from slimdiff.io import write_json


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "units",
        help="list a U-Net's units (name, kind, parameters, channels, resolution)",
        description="List every unit of a U-Net in forward order. `resolution` is the unit's input "
        "latent size for a --resolution image (512px -> 64x64 latent at level 0, 32x32 at level 1, ...).",
    )
    p.add_argument("model", metavar="MODEL", help="sd15-arch, sd21-arch, toy, a pipeline or UNet directory")
    p.add_argument("--resolution", type=positive_int, default=512, help="image side in pixels (default 512)")
    p.add_argument("--vae-factor", type=positive_int, default=8, help="image pixels per latent pixel (SD: 8)")
    p.add_argument("--json", metavar="FILE", help="also write the listing as JSON")
    p.add_argument("--inner", action="store_true",
                   help="also list the inner blocks of Transformer units of depth > 1 (SDXL: <unit>.tblock.k)")
    p.set_defaults(func=run, outputs=("json",),
                   inputs=("model",))


def run(args: argparse.Namespace) -> int:
    from slimdiff.unet import list_units, load_unet  # torch and diffusers: only once the command runs

    # 1. the model and its units (no copy of a diffusers model is made)
    if args.resolution % args.vae_factor:
        raise ValueError(f"--resolution {args.resolution} is not a multiple of --vae-factor {args.vae_factor}")
    latent = args.resolution // args.vae_factor
    model = load_unet(args.model)
    units = list_units(model, inner=args.inner)
    total = model.num_parameters()

    # 2. the table: one row per unit, then the totals
    header = ("name", "kind", "params", "in_ch", "out_ch", "resolution", "skip")
    rows = [
        (u.name, u.kind, f"{u.params:,}", str(u.in_channels), str(u.out_channels),
         f"{latent >> u.level}x{latent >> u.level}", u.skip or "")
        for u in units
    ]
    widths = [max(len(r[i]) for r in rows + [header]) for i in range(len(header))]
    for row in [header] + rows:
        print("  ".join(c.rjust(w) if i in (2, 3, 4) else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths))))
    in_units = sum(u.params for u in units if u.parent is None)  # inner blocks are inside their unit
    print(f"{sum(u.parent is None for u in units)} units, {in_units:,} parameters in units, {total:,} in total "
          f"({type(model).__name__}, {args.resolution}px image -> {latent}x{latent} latent)")
    if args.json:
        write_json(args.json, {"model": args.model, "resolution": args.resolution, "latent_size": latent,
                               "total_params": total, "units": units})
        print(f"wrote {args.json}")
    return 0
