"""SnapFusion's efficient VAE decoder (issue 11): what channel pruning of the decoder buys.

    python bench/bench_vae.py                                      # speed at SD-1.5's VAE, 512px output
    python bench/bench_vae.py --toy                                # + the toy world: PSNR and end-to-end metrics
    python bench/bench_vae.py --toy --toy-ratio 0.5 --distill-steps 2 --num-latents 8 --eval-images 4 \\
        --skip-speed --out /tmp/vae_dry                            # dry run of the toy part (minutes)

Speed (always unless --skip-speed): SD-1.5's VAE (`sd15-arch`, random weights) decoding one
64x64x4 latent into a 512x512 image, full and pruned at each `--ratios` (uniform, L1, GroupNorm
groups kept): decoder parameters, FLOPs (torch's FlopCounterMode on the meta device: 2 per
multiply-add) and latency (median ms of `--repeats` round-robin rounds, so every model sees the
same load, after one warm-up round; one CPU thread and process CPU time by default, as
bench_presets_latency.py, since this machine is shared), each also as a ratio to the full decoder. SnapFusion reports 50M -> 13M parameters, 369 -> 116 ms (iPhone 14 Pro).

Toy world (--toy): the toy pipeline's VAE pruned at `--toy-ratio`, then distilled with
`slimdiff distill-vae` (U-Net latents, `--distill-steps`). For the teacher decoder, the pruned
one and the distilled one: decoder PSNR against the teacher decoder on held-out U-Net latents,
and `slimdiff evaluate` of the toy pipeline decoding with each (same prompts and seeds; every
metric the runner reports, with its CIs where it gives them) plus end-to-end PSNR of each
image against the teacher's image of the same prompt and noise (mean, 95% bootstrap CI).
Results: OUT.md and OUT.json.
"""

from __future__ import annotations

import argparse
import copy
import datetime
import os
import platform
import tempfile

import numpy as np
import torch

from slimdiff.eval import stats
from slimdiff.eval.evaluation import evaluate
from slimdiff.io import atomic_write, write_json
from slimdiff.profile.latency import num_threads, time_rounds
from slimdiff.vae import (VaePruneConfig, build_builtin_vae, decoder_params, decoder_widths, load_vae, prune_decoder,
                          save_vae)
from slimdiff.vae.distill import VaeDistillConfig, distill_vae


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ratios", type=float, nargs="+", default=[0.5], help="decoder pruning ratios (speed part)")
    p.add_argument("--latent-size", type=int, default=64, help="latent side: 64 -> 512px images (SD-1.5)")
    p.add_argument("--repeats", type=int, default=3, help="timed round-robin rounds (after one warm-up)")
    p.add_argument("--threads", type=int, default=1, help="CPU threads (this machine is shared)")
    p.add_argument("--clock", choices=["wall", "cpu"], default="cpu",
                   help="cpu (default): process CPU time, i.e. an unloaded core's latency on this shared machine")
    p.add_argument("--skip-speed", action="store_true")
    p.add_argument("--toy", action="store_true", help="also the toy-world part")
    p.add_argument("--teacher", default="toy", help="toy-world pipeline")
    p.add_argument("--toy-ratio", type=float, default=0.5)
    p.add_argument("--distill-steps", type=int, default=2000)
    p.add_argument("--num-latents", type=int, default=512, help="U-Net latents to distill on")
    p.add_argument("--eval-latents", type=int, default=64, help="held-out latents for decoder PSNR")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--lambda-perc", type=float, default=0.0)
    p.add_argument("--eval-images", type=int, default=256)
    p.add_argument("--eval-steps", type=int, default=None, help="sampler steps (default: the toy sampler's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--work", help="directory for the pruned/distilled VAEs (default: a temporary one)")
    p.add_argument("--out", default="docs/bench/vae", help="writes OUT.md and OUT.json")
    return p.parse_args()


# ---------------------------------------------------------------------------------- speed


def decoder_flops(vae, latent_size: int) -> float:
    """FLOPs of `vae.decode` on one (1, C, s, s) latent, counted on the meta device (no compute)."""
    from torch.utils.flop_counter import FlopCounterMode

    meta = copy.deepcopy(vae).to("meta")
    z = torch.zeros(1, vae.config.latent_channels, latent_size, latent_size, device="meta")
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        meta.decode(z)
    return float(counter.get_total_flops())


def speed(args) -> list[dict]:
    teacher = build_builtin_vae("sd15-arch")
    models = {"full": teacher}
    for r in args.ratios:
        models[f"ratio {r:g}"] = prune_decoder(teacher, VaePruneConfig(ratio=r))[0]
    z = torch.randn(1, 4, args.latent_size, args.latent_size, generator=torch.Generator().manual_seed(0))
    calls = {name: (lambda m=m: m.decode(z)) for name, m in models.items()}
    with num_threads(args.threads):
        times = time_rounds(calls, warmup=1, repeats=args.repeats, device=torch.device("cpu"), clock=args.clock)
    rows = []
    for name, m in models.items():
        rows.append({"decoder": name, "widths": list(decoder_widths(m)), "params_M": decoder_params(m) / 1e6,
                     "gflops": decoder_flops(m, args.latent_size) / 1e9, "ms": float(np.median(times[name])),
                     "ms_all": times[name]})
    full = rows[0]
    for row in rows:
        for key in ("params_M", "gflops", "ms"):
            row[f"{key}_vs_full"] = row[key] / full[key]
    return rows


# ---------------------------------------------------------------------------------- toy world


def bootstrap_ci(values: np.ndarray, seed: int = 0) -> list[float]:
    """95% percentile bootstrap interval of the mean."""
    return [float(v) for v in stats.mean_ci(values, seed=seed)["ci"]]  # the project's one bootstrap


def image_psnr(images, reference) -> np.ndarray:
    """Per-image PSNR (dB) of PIL images against reference PIL images (8-bit)."""
    return stats.psnr_per_image(to_tensor(images), to_tensor(reference))  # the project's one PSNR


def toy(args, work: str) -> dict:
    # 1. prune the toy VAE's decoder; 2. distill it on U-Net latents
    teacher = load_vae(args.teacher)
    pruned, info = prune_decoder(teacher, VaePruneConfig(ratio=args.toy_ratio))
    save_vae(pruned, f"{work}/pruned", recipe={"teacher": args.teacher, **info})
    cfg = VaeDistillConfig(teacher=args.teacher, student=f"{work}/pruned", out=f"{work}/distilled",
                           num_latents=args.num_latents, eval_latents=args.eval_latents, batch_size=args.batch_size,
                           max_steps=args.distill_steps, learning_rate=args.lr, lambda_perc=args.lambda_perc,
                           checkpoint_every=max(1, args.distill_steps // 4), seed=args.seed, cpu=True)
    result = distill_vae(cfg, progress=True)
    out = {"ratio": args.toy_ratio, "widths": info["decoder_block_out_channels"], "decoder_params": {
        "teacher": decoder_params(teacher), "student": decoder_params(pruned)},
        "decoder_psnr_db": {"pruned": result.psnr_before, "distilled": result.psnr_after},
        "distill": {"steps": result.steps, "final_losses": result.losses, "steps_per_sec": result.steps_per_sec,
                    "config": cfg.to_dict()}}
    # 3. end to end: the toy pipeline decoding with each VAE, same prompts and seeds
    kw = dict(num_images=args.eval_images, steps=args.eval_steps, seed=args.seed, progress=True,
              return_images=True, grid=None)
    runs = {"teacher": None, "pruned": f"{work}/pruned", "distilled": f"{work}/distilled"}
    metrics, images = {}, {}
    for name, vae in runs.items():
        metrics[name], images[name] = evaluate(args.teacher, vae=vae, **kw)
        metrics[name].pop("prompts", None)
    for name in ("pruned", "distilled"):
        values = image_psnr(images[name], images["teacher"])
        metrics[name]["psnr_vs_teacher_db"] = float(values.mean())
        metrics[name]["psnr_vs_teacher_db_ci95"] = bootstrap_ci(values, args.seed)
    out["evaluate"] = metrics
    return out


# ---------------------------------------------------------------------------------- report


_CI_PARTS = ("mean", "value", "ci", "ci95", "low", "high", "lo", "hi")


def headline(result: dict) -> dict:
    """The runner's scalar metrics and their CIs (as `x_ci95` lists or `{mean, ci95, ...}` dicts)."""
    keep = {}
    for key, value in result.items():
        if isinstance(value, bool) or key in ("settings", "timing"):
            continue
        if isinstance(value, (int, float)) or (key.endswith(("_ci", "_ci95")) and isinstance(value, (list, tuple))):
            keep[key] = value
        elif isinstance(value, dict) and value and set(value) <= set(_CI_PARTS):
            keep.update({f"{key}.{k}": v for k, v in value.items()})
    return keep


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_fmt(v) for v in value) + "]"
    return str(value)


def markdown(report: dict) -> str:
    lines = ["# VAE decoder pruning (SnapFusion's efficient decoder)", "",
             f"Command: `{report['command']}`  ", f"Machine: {report['machine']}; clock {report['clock']}; load average "
             f"{', '.join(f'{x:.1f}' for x in report['load_average'])}; {report['date']}", ""]
    if "speed" in report:
        lines += ["## SD-1.5 VAE decoder, one 64x64x4 latent -> 512x512 image (random weights, CPU)", "",
                  "| decoder | widths | params (M) | x full | GFLOPs | x full | latency (ms, median) | x full |",
                  "|---|---|---|---|---|---|---|---|"]
        for r in report["speed"]:
            lines.append(f"| {r['decoder']} | {r['widths']} | {r['params_M']:.2f} | {r['params_M_vs_full']:.3f} | "
                         f"{r['gflops']:.0f} | {r['gflops_vs_full']:.3f} | {r['ms']:.0f} | {r['ms_vs_full']:.3f} |")
        lines += ["", "SnapFusion (iPhone 14 Pro): 50M -> 13M parameters (x0.26), 369 -> 116 ms (x0.31).", ""]
    if "toy" in report:
        t = report["toy"]
        lines += [f"## Toy world: decoder pruned at {t['ratio']:g} (widths {t['widths']['teacher']} -> "
                  f"{t['widths']['student']}), distilled {t['distill']['steps']} steps", "",
                  f"Decoder params {t['decoder_params']['teacher']:,} -> {t['decoder_params']['student']:,}. "
                  f"Decoder PSNR vs the teacher decoder (held-out U-Net latents): pruned "
                  f"{t['decoder_psnr_db']['pruned']:.2f} dB, distilled {t['decoder_psnr_db']['distilled']:.2f} dB.", "",
                  "| VAE | metric | value |", "|---|---|---|"]
        for name, res in t["evaluate"].items():
            for key, value in headline(res).items():
                lines.append(f"| {name} | {key} | {_fmt(value)} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    args = parse_args()
    report = {"command": "python bench/bench_vae.py " + " ".join(os.sys.argv[1:]),
              "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch "
                         f"{torch.__version__}, {args.threads} thread(s)",
              "clock": args.clock, "load_average": list(os.getloadavg()),
              "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}
    if not args.skip_speed:
        report["speed"] = speed(args)
    if args.toy:
        with tempfile.TemporaryDirectory() as tmp:
            report["toy"] = toy(args, args.work or tmp)
    write_json(args.out + ".json", report)
    atomic_write(args.out + ".md", markdown(report))
    print(markdown(report))


if __name__ == "__main__":
    main()
