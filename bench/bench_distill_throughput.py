"""Distillation throughput: the eager fp32 uncached baseline, then each speed option added one at a time.

    python bench/bench_distill_throughput.py --quick         # writes docs/bench/distill_throughput.{md,json}
    python bench/bench_distill_throughput.py --rounds 5 --steps 20 --proxy-steps 4

Worlds: the toy world at `slimdiff demo`'s settings (teacher `toy` -> its `bk-small` student, batch
64, lr 1e-3, BK-SDM losses, a latent/text cache) and a real-scale proxy: the `sd15-arch` U-Net
(random weights) -> its `bk-small` student at 256 px, batch 1, with SD-1.5's VAE (`sd15-arch`,
random) and a CLIP-L-sized text encoder (12 layers, width 768, 77 tokens, random) over the toy
tokenizer; the toy data set rendered at 256 px. Every run is a child process (its own peak RSS);
the runs of a round go through every setting in turn and rounds repeat, so machine load hits all
settings alike; steps/s is over the steps after the first (`time_s` in the log), median of rounds.
"Cache" runs read a cache precomputed for the data set (`slimdiff cache`), as the demo's cache is
after its first epoch. The loss after the same number of steps is reported for every setting.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import queue as queue_mod
import resource
import statistics
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EAGER = dict(teacher_inference_mode=False, channels_last=False, adamw="loop", memory_cache="off", log_every=1)
# (name, settings on top of the previous row): the ladder of the default-on options, then extras
LADDER = [
    ("eager fp32, uncached (baseline)", {}),
    ("+ teacher inference_mode", dict(teacher_inference_mode=True)),
    ("+ fused AdamW", dict(adamw="fused")),
    ("+ latent/text cache (= defaults)", dict(cache=True)),
]
EXTRAS = [  # each on top of the defaults, alone
    ("defaults + channels-last", dict(channels_last=True)),
    ("defaults, foreach AdamW instead", dict(adamw="foreach")),
    ("defaults + log_every 10", dict(log_every=10)),
    ("defaults + teacher bf16 (numerics)", dict(teacher_dtype="bf16")),
]
COMPILE = ("defaults + compile (inductor)", dict(compile=True))


def proxy_pipeline():
    """sd15-arch U-Net + SD VAE + CLIP-L-sized text encoder, all random (seed 0), in memory."""
    import torch
    from transformers import CLIPTextConfig, CLIPTextModel

    from slimdiff.toy import components
    from slimdiff.toy.tokenizer import build_tokenizer
    from slimdiff.unet import load_unet
    from slimdiff.vae import load_vae

    tok = build_tokenizer(77)
    torch.manual_seed(0)  # every child builds the same random weights (the cache keys on the encoders' weights)
    text = CLIPTextModel(CLIPTextConfig(vocab_size=len(tok), hidden_size=768, intermediate_size=3072,
                                        num_hidden_layers=12, num_attention_heads=12, max_position_embeddings=77,
                                        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                                        pad_token_id=tok.pad_token_id, hidden_act="quick_gelu"))
    unet, vae = load_unet("sd15-arch"), load_vae("sd15-arch")
    return components.assemble_pipeline(unet, vae, text, tokenizer=tok,
                                        scheduler=components.train_scheduler())


def load_world(world: str):
    from slimdiff.unet import apply_preset
    from slimdiff.sample import load_pipeline

    pipe = proxy_pipeline() if world == "proxy" else load_pipeline("toy")
    return pipe, apply_preset(pipe.unet, "bk-small")[0]


def run_one(settings: dict, queue) -> None:
    """Child process: one distillation; report steps/s, final loss, peak memory (and the profile)."""
    if settings.get("inductor_cache"):  # a fresh on-disk compile cache: the first step is a cold compile
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = settings.pop("inductor_cache")
    import torch

    from slimdiff.distill import DistillConfig, distill

    torch.set_num_threads(settings.pop("threads"))
    pipe, student = load_world(settings.pop("world"))
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    result = distill(DistillConfig(**settings), teacher=pipe.unet, student=student, pipeline=pipe, progress=False)
    records = [json.loads(line) for line in result.log_path.read_text().splitlines() if line.strip()]
    times = [r["time_s"] for r in records]
    peak = torch.cuda.max_memory_allocated() / 2 ** 20 if torch.cuda.is_available() else \
        resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB
    prof = Path(settings["out"]) / "profile.json"
    queue.put({"steps_per_s": (len(times) - 1) / (times[-1] - times[0]), "final_loss": records[-1]["loss"],
               "peak_mib": peak, "first_step_s": times[0],
               "profile": json.loads(prof.read_text()) if prof.is_file() else None})


def child(settings: dict) -> dict:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=run_one, args=(settings, queue))
    proc.start()
    while True:
        try:
            out = queue.get(timeout=5)
            break
        except queue_mod.Empty:
            if not proc.is_alive():
                break
    proc.join()
    if proc.exitcode:
        raise RuntimeError(f"benchmark child failed with exit code {proc.exitcode}")
    return out


def precompute(world: str, base: dict, cache_dir: Path) -> None:
    """Fill the cache the "cache" runs read (in a child, like them)."""
    ctx = mp.get_context("spawn")
    proc = ctx.Process(target=_precompute, args=(world, base, str(cache_dir)))
    proc.start()
    proc.join()


def _precompute(world, base, cache_dir) -> None:
    import torch

    from slimdiff.data import build_dataset
    from slimdiff.data.cache import BatchEncoder, EncodingCache, fill_cache

    torch.set_num_threads(base["threads"])
    pipe, _ = load_world(world)
    res = base.get("resolution") or pipe.unet.config.sample_size * 8
    data = build_dataset("toy", res, seed=0, toy_size=base["toy_size"])
    cache = EncodingCache(cache_dir, data.fingerprint, pipe.vae.eval(), pipe.text_encoder.eval())
    fill_cache(data, BatchEncoder(pipe.vae, pipe.tokenizer, pipe.text_encoder, cache), 16, progress=False)


def bench_world(world: str, base: dict, rows: list, rounds: int, work: Path, cold_compile: bool = False) -> dict:
    """Interleaved rounds over `rows` [(name, settings)]; returns name -> medians (+ all rounds).
    `cold_compile`: every run gets an empty inductor cache (its first step pays the whole compile)."""
    cache_dir = work / f"cache-{world}"
    if any(s.get("cache") for _, s in rows):
        precompute(world, base, cache_dir)
    results: dict[str, list] = {name: [] for name, _ in rows}
    for r in range(rounds):
        for k, (name, settings) in enumerate(rows):
            s = {**base, **{k2: v for k2, v in settings.items() if k2 != "cache"}, "world": world,
                 "out": str(work / f"{world}-{k}-{r}")}
            if settings.get("cache"):
                s["cache_dir"] = str(cache_dir)
            if cold_compile:
                s["inductor_cache"] = str(work / f"inductor-{world}-{k}-{r}")
            if r == 0 and k in (0, len(rows) - 1):
                s["profile_steps"] = max(1, base["max_steps"] - 1)  # profile: baseline and defaults
            res = child(s)
            results[name].append(res)
            print(f"  {world} round {r + 1}/{rounds} {name}: {res['steps_per_s']:.3f} steps/s, "
                  f"loss {res['final_loss']:.5f}", flush=True)
    ref = statistics.median(x["steps_per_s"] for x in results[rows[0][0]])
    out = {}
    for name, runs in results.items():
        sps = statistics.median(x["steps_per_s"] for x in runs)
        out[name] = {"steps_per_s": sps, "speedup": sps / ref, "rounds": [x["steps_per_s"] for x in runs],
                     "final_loss": runs[0]["final_loss"], "peak_mib": max(x["peak_mib"] for x in runs),
                     "first_step_s": statistics.median(x["first_step_s"] for x in runs),
                     "first_step_rounds": [x["first_step_s"] for x in runs],
                     "profile": next((x["profile"] for x in runs if x["profile"]), None)}
    return out


def ladder_settings(extras: bool = True) -> list:
    """The ladder, then the extras on top of the defaults (all; --quick: only channels-last)."""
    rows, acc = [], dict(EAGER)
    for name, extra in LADDER:
        acc = {**acc, **extra}
        rows.append((name, dict(acc)))
    return rows + [(name, {**acc, **extra}) for name, extra in (EXTRAS if extras else EXTRAS[:1])]


def report(args, results: dict, load: tuple[float, float]) -> list[str]:
    import torch

    lines = ["# Distillation throughput: speed options one at a time", "",
             f"Written by `python bench/bench_distill_throughput.py{' --quick' if args.quick else ''}"
             f"{' --compile' if args.compile else ''}{' --worlds ' + ' '.join(args.worlds) if getattr(args, 'worlds', None) else ''}"
             f"` on {time.strftime('%Y-%m-%d %H:%M')} (interleaved rounds, medians; each table lists its rounds).",
             f"Machine: {platform.machine()}, {os.cpu_count()} CPU cores, torch {torch.__version__}, "
             f"{args.threads} torch thread(s) per run; load average {load[0]:.1f} before and {load[1]:.1f} after "
             f"(the cores are shared with other jobs: absolute numbers vary, the ratios of one run are fair).", ""]
    for world, res in results.items():
        steps = args.proxy_steps if world == "proxy" else args.steps
        about = {"toy": "toy world at the demo's settings: teacher `toy` -> `bk-small`, batch 64, lr 1e-3, "
                        f"{args.toy_size} scenes",
                 "compile": "toy world, `--compile` (inductor) against the defaults, a cold compile cache every run",
                 "proxy": "real-scale proxy: `sd15-arch` -> `bk-small`, 256 px, batch 1 (random weights; see the "
                          "bench docstring)"}[world]
        lines += [f"## {about}", ""]
        if res.get("_written"):
            lines += [f"(Kept from the run of {res['_written']}: not rerun by this invocation.)", ""]
        lines += [f"{steps} steps per run; steps/s over steps 2..{steps}; loss after step {steps}; first step s: "
                  f"median (rounds).", "", "| setting | steps/s | vs baseline | rounds | loss | peak MiB | first step s |",
                  "|---|---:|---:|---|---:|---:|---:|"]
        res = {k: v for k, v in res.items() if not k.startswith("_")}
        for name, r in res.items():
            firsts = r.get("first_step_rounds") or []
            lines.append(f"| {name} | {r['steps_per_s']:.3f} | **{r['speedup']:.2f}x** | "
                         f"{', '.join(f'{x:.3f}' for x in r['rounds'])} | {r['final_loss']:.5f} | {r['peak_mib']:.0f} | "
                         f"{r['first_step_s']:.1f}{' (' + ', '.join(f'{x:.0f}' for x in firsts) + ')' if firsts else ''} |")
        if world == "toy" and any("compile" in n for n in res):
            lines += ["", "(The compile row of this table ran with inductor's on-disk cache warm from an earlier "
                          "compile on this machine: its first step is not a cold compile; the compile section is.)"]
        profiled = [(n, r["profile"]) for n, r in res.items() if r["profile"]]
        if profiled:
            lines += ["", "Per-phase medians (ms, `--profile-steps`), round 1:", "",
                      "| phase | " + " | ".join(n for n, _ in profiled) + " |", "|---|" + "---:|" * len(profiled)]
            phases = list(dict.fromkeys(p for _, prof in profiled for p in prof["phases"]))
            for p in phases:
                lines.append(f"| {p} | " + " | ".join(f"{prof['phases'].get(p, 0):.1f}" for _, prof in profiled) + " |")
            lines.append("| **step** | " + " | ".join(f"**{prof['total_ms']:.1f}**" for _, prof in profiled) + " |")
            lines.append("| largest phase | " + " | ".join(prof["largest_phase"] for _, prof in profiled) + " |")
        lines.append("")
    lines += ["## What the settings are", "",
              "- Exact (bit-for-bit, tests/distill/test_distill_speed.py): teacher `inference_mode`, `log_every`, "
              "and the cache (the same encoder outputs; the disk and RAM caches hold what the encoders gave when an "
              "item was first encoded).",
              "- Float32 with another summation order (loss curves equal within 1e-4 relative on the tiny fixture): "
              "fused and foreach AdamW, channels-last, compile with `aot_eager`.",
              "- Changes numerics: teacher bf16 (within 3e-2 relative on the tiny fixture), inductor compile.",
              "- Default on: inference_mode, fused AdamW (foreach where torch has no fused kernel for the device), "
              "the RAM cache when data is revisited "
              "(`--cache-dir` for a disk cache, `slimdiff cache` to precompute one). Off: channels-last (no gain "
              "measured here), bf16 teacher (slower here: autocast casts cost more than bf16 saves at the toy's "
              "sizes), compile (its compile time is the first-step column; it pays off only for runs far longer "
              "than the gain per step repays), "
              "log_every > 1 (no measurable gain on the CPU; on a GPU it removes a device sync per step).", ""]
    return lines


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="the ladder only: 2 rounds of 6 toy steps (256 scenes), "
                   "2 proxy steps (about 10 min on 2 loaded cores)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--steps", type=int, default=16, help="toy optimiser steps per run")
    p.add_argument("--proxy-steps", type=int, default=3, help="proxy steps per run (0: skip the proxy)")
    p.add_argument("--toy-size", type=int, default=1024, help="toy scenes (the demo: 4096; the cache is precomputed)")
    p.add_argument("--threads", type=int, default=1, help="torch threads per run")
    p.add_argument("--compile", action="store_true", help="also the compile world: defaults vs --compile (inductor, "
                   "a cold cache every run: minutes of compiling each)")
    p.add_argument("--worlds", nargs="+", choices=["toy", "compile", "proxy"], default=["toy", "proxy"],
                   help="what to run; the worlds of an existing OUT .json not run now are kept (and say so)")
    p.add_argument("--out", default=str(ROOT / "docs" / "bench" / "distill_throughput.md"))
    p.add_argument("--from-json", metavar="FILE", help="only re-render the markdown from a saved .json")
    args = p.parse_args(argv)
    if args.from_json:
        saved = json.loads(Path(args.from_json).read_text())
        args = argparse.Namespace(**{**saved["args"], "out": args.out})
        lines = report(args, saved["results"], tuple(saved.get("load", (float("nan"),) * 2)))
        from slimdiff.io import atomic_write

        atomic_write(Path(args.out), "\n".join(lines))
        return 0
    if args.quick:
        args.rounds, args.steps, args.proxy_steps, args.toy_size = 2, 6, 2, 256

    from slimdiff.demo import DEMO_DISTILL  # here, not at the top: children import torch after their settings

    work = Path(tempfile.mkdtemp(prefix="bench-distill-"))
    common = dict(data="toy", checkpoint_every=0, seed=0, threads=args.threads, cpu=True, lr_scheduler="cosine")
    toy = {**common, "teacher": "toy", "toy_size": args.toy_size, "batch_size": DEMO_DISTILL["batch_size"],
           "learning_rate": DEMO_DISTILL["learning_rate"], "max_steps": args.steps}  # the demo's batch and rate
    proxy = {**common, "teacher": None, "pipeline": None, "toy_size": 16, "batch_size": 1, "resolution": 256,
             "learning_rate": 5e-5, "max_steps": args.proxy_steps}
    load0 = os.getloadavg()[0]
    worlds = list(dict.fromkeys(args.worlds + (["compile"] if args.compile else [])))
    rows = ladder_settings(not args.quick)
    defaults = rows[len(LADDER) - 1]
    results = {}
    if "toy" in worlds:
        results["toy"] = bench_world("toy", toy, rows, args.rounds, work)
    if "compile" in worlds:
        results["compile"] = bench_world("compile", toy, [defaults, (COMPILE[0], {**defaults[1], **COMPILE[1]})],
                                         args.rounds, work, cold_compile=True)
    if "proxy" in worlds and args.proxy_steps > 1:
        results["proxy"] = bench_world("proxy", proxy, [rows[0], defaults], 1, work)
    for r in results.values():
        r["_written"] = None
    out = Path(args.out)
    if out.with_suffix(".json").is_file():  # worlds not run now: kept from the earlier run
        old = json.loads(out.with_suffix(".json").read_text())
        for world, r in old.get("results", {}).items():
            if world not in results:
                results[world] = {**r, "_written": r.get("_written") or old.get("written", "an earlier run")}
    results = {w: results[w] for w in ("toy", "compile", "proxy") if w in results}
    lines = report(args, results, (load0, os.getloadavg()[0]))

    from slimdiff.io import atomic_write, write_json

    atomic_write(out, "\n".join(lines))
    write_json(out.with_suffix(".json"), {"args": vars(args), "results": results, "load": [load0, os.getloadavg()[0]],
                                          "written": time.strftime("%Y-%m-%d %H:%M")})
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
