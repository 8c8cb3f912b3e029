"""Peak memory of DMD2's one-step training (issue 21 item 3): measured on the toy, estimated for SD-1.5 at 512 px.

    python bench/bench_onestep_memory.py --toy-run runs/dmd2 --out docs/bench/onestep_memory.md

The toy: the peak resident memory its training run recorded (`recipe.json` one_step_distill.peak_memory; the
whole process: three U-Nets, their optimiser states, the text encoder, the VAE, the cached data).
SD-1.5 at 512 px (64x64 latents), estimated as
    states (`slimdiff.distill.dmd.state_memory_gb`: generator and fake score in float32 with gradients and
            AdamW moments, the teacher in fp16) + batch x 2 x A,
A = the activations one training forward + backward of the SD-1.5 U-Net keeps at batch 1 and 64x64 latents:
measured on the CPU at smaller latents (`--latents`, default 16 and 32: a random-weight U-Net of
`slimdiff.unet.builtins.SD15_CONFIG`, float32; the peak resident memory of the call above the weights and
gradients) and extrapolated by the line through them in the latent's pixel count (activations grow linearly with
the pixels; attention through torch's SDPA keeps no h*w x h*w matrix). Two: the generator's graph stays alive
while the fake score trains on its samples. fp16 activations with gradient checkpointing are smaller; this is the
plain float32 figure.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import resource
import shlex
import sys
import time
from pathlib import Path

import torch

from slimdiff.distill.dmd import state_memory_gb
from slimdiff.io import atomic_write


def rss_gb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1e9


def peak_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9


def sd15_activations_gb(latents: list[int]) -> tuple[dict[int, float], int, float]:
    """({latent side: activation GB of one float32 training forward + backward at batch 1}, parameters, seconds)."""
    from diffusers import UNet2DConditionModel

    from slimdiff.unet.builtins import SD15_CONFIG

    torch.manual_seed(0)
    unet = UNet2DConditionModel(**SD15_CONFIG).train()
    for p in unet.parameters():
        p.grad = torch.zeros_like(p)
    base, found, t0 = rss_gb(), {}, time.perf_counter()
    for side in sorted(latents):  # smallest first: the process's peak only grows
        x = torch.randn(1, 4, side, side)
        text = torch.randn(1, 77, unet.config.cross_attention_dim)
        unet(x, torch.tensor([500]), encoder_hidden_states=text).sample.square().mean().backward()
        found[side] = max(peak_gb() - base, 0.0)
    return found, unet.num_parameters(), time.perf_counter() - t0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--toy-run", required=True, help="a DMD2 output directory (its recipe.json)")
    p.add_argument("--latent", type=int, default=64, help="SD-1.5 latent side of the estimate (512 px / 8)")
    p.add_argument("--latents", type=int, nargs=2, default=[16, 32], help="latent sides measured")
    p.add_argument("--batch", type=int, nargs="+", default=[1, 8, 32], help="batch sizes of the estimate")
    p.add_argument("--out", default="docs/bench/onestep_memory.md")
    args = p.parse_args()
    torch.set_num_threads(1)
    recipe = json.loads((Path(args.toy_run) / "recipe.json").read_text())
    run = recipe["one_step_distill"]
    measured, params, secs = sd15_activations_gb(args.latents)
    (s1, a1), (s2, a2) = sorted(measured.items())
    act = a1 + (a2 - a1) * (args.latent ** 2 - s1 ** 2) / (s2 ** 2 - s1 ** 2)  # the line in the pixel count
    states = state_memory_gb(params, params, params)
    lines = [f"# DMD2 peak memory (issue 21 item 3)\n",
             f"`python bench/bench_onestep_memory.py {shlex.join(sys.argv[1:])}`  ",
             f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, load average "
             f"{os.getloadavg()[0]:.2f} (1 min), torch threads 1\n",
             f"- toy (measured): peak resident memory of the training run `{args.toy_run}` "
             f"(batch {run['config']['batch_size']}, fake ratio {run['config']['fake_ratio']}): "
             f"{run['peak_memory']['peak_rss_mb'] / 1024:.2f} GiB (the whole process: teacher, generator, fake score, "
             f"optimiser states, text encoder, VAE, data cache).",
             f"- SD-1.5 U-Net: {params:,} parameters; weights + gradients + AdamW of the generator and the fake score "
             f"(float32) and the fp16 teacher: {states:.1f} GB.",
             f"- SD-1.5 activations of one float32 training forward + backward at batch 1, measured on the CPU "
             f"({secs:.0f} s): " + ", ".join(f"{s * 8} px {a:.2f} GB" for s, a in sorted(measured.items()))
             + f"; at {args.latent * 8} px (the line through them): {act:.2f} GB.",
             "- SD-1.5 estimate (states + batch x 2 x activations): " + ", ".join(
                 f"batch {b}: {states + 2 * b * act:.0f} GB" for b in args.batch)
             + " (float32, no gradient checkpointing; DMD2 trains SD-1.5 on several GPUs with a sharded or mixed-"
               "precision set-up).\n"]
    atomic_write(Path(args.out), "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
