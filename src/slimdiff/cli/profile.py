"""`slimdiff profile MODEL`: parameters, FLOPs and latency per block or unit; JSON, plot, LUT.

    slimdiff profile sd15-arch --resolution 512 --json prof.json --plot prof.png --lut lut.json
"""

from __future__ import annotations

import argparse

from slimdiff.cli.checks import nonnegative_int, positive_int


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "profile",
        help="per-unit/per-block parameters, FLOPs and measured latency",
        description=(
            "Profile a U-Net: parameters, FLOPs (2 x MACs, attention matmuls included) and measured "
            "latency (each unit alone on its real inputs; warm-up, then the median of repeats), per "
            "block or per unit, with shares of the whole."
        ),
    )
    p.add_argument("model", metavar="MODEL", help="sd15-arch, sd21-arch, toy, a pipeline or UNet directory")
    p.add_argument("--resolution", type=positive_int, default=512, help="image side in pixels (default 512)")
    p.add_argument(
        "--latent-size",
        type=positive_int,
        default=None,
        help="latent side; default resolution // VAE factor (the pipeline's VAE when MODEL has one, else 8)",
    )
    p.add_argument("--batch", type=positive_int, default=1, help="images per forward (default 1)")
    p.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    p.add_argument("--device", default="cpu", help="torch device (default cpu)")
    p.add_argument("--threads", type=positive_int, default=None, help="torch intra-op threads (default: torch's)")
    p.add_argument("--warmup", type=nonnegative_int, default=1, help="untimed calls before timing (default 1)")
    p.add_argument("--repeats", type=positive_int, default=3, help="timed calls; the median is reported (default 3)")
    p.add_argument(
        "--clock", choices=["wall", "cpu"], default="wall",
        help="wall: elapsed time (default); cpu: process CPU time, needs --threads 1: on a shared machine "
        "it leaves out the time other jobs hold the core",
    )
    p.add_argument("--context-length", type=positive_int, default=77, help="text tokens (default 77)")
    p.add_argument("--no-latency", action="store_true", help="parameters and FLOPs only (one forward)")
    p.add_argument("--by", choices=["block", "unit"], default="block", help="table and plot rows")
    p.add_argument("--json", metavar="FILE", help="write every number and the settings as JSON")
    p.add_argument("--plot", metavar="FILE.png", help="bar chart of latency and parameters")
    p.add_argument("--lut", metavar="FILE", help="write a latency lookup table built from this profile")
    p.set_defaults(func=run, outputs=("json", "plot", "lut"),
                   inputs=("model",))


def run(args: argparse.Namespace) -> int:
    from slimdiff.profile import LatencyLUT, ProfileSettings, profile_unet
    from slimdiff.profile.profiler import place, vae_scale_factor_of
    from slimdiff.profile.report import plot, print_table
    from slimdiff.unet import load_unet, resolve_source

    # 1. settings (validated) and the model, placed on the device in the dtype
    if args.lut and args.no_latency:
        raise ValueError("--lut needs latency; drop --no-latency")
    kind, path = resolve_source(args.model)  # toy, a built-in, a pipeline or a UNet directory
    settings = ProfileSettings(
        resolution=args.resolution,
        latent_size=args.latent_size,
        vae_scale_factor=vae_scale_factor_of(path if kind == "pipeline" else None) or 8,
        batch=args.batch,
        dtype=args.dtype,
        device=args.device,
        threads=args.threads,
        warmup=args.warmup,
        repeats=args.repeats,
        context_length=args.context_length,
        clock=args.clock,
        measure_latency=not args.no_latency,
    )
    model = place(load_unet(args.model), args.device, args.dtype)

    # 2. profile, then print and write what was asked
    result = profile_unet(model, settings, name=args.model, progress=True)
    print_table(result, args.by)
    if args.json:
        result.save_json(args.json)
        print(f"wrote {args.json}")
    if args.plot:
        plot(result, args.plot, by=args.by)
        print(f"wrote {args.plot}")
    if args.lut:
        LatencyLUT.from_profile(result).save(args.lut)
        print(f"wrote {args.lut}")
    return 0
