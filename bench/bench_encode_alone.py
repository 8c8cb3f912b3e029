"""What encoding each item alone costs (the price of exact resume with the encoding cache).

    flock /work/notes/cpu.lock python bench/bench_encode_alone.py --rounds 10   # docs/bench/encode_alone.{md,json}

The toy world's VAE encoder and text encoder on `--batch` toy scenes at 64 px (the demo's data
and batch): `slimdiff.data.cache.BatchEncoder` (each item alone, a batch of one) against the
same encoders called once on the whole batch (how the encoder ran before). Rounds alternate the
two, so machine load hits both alike; reported: mean seconds per batch with its 95% bootstrap
interval (`eval.stats.mean_ci`). Only a cache's first fill and `--memory-cache off` runs encode;
later epochs read the cache. Also checks the largest difference between the two encodings.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=str(ROOT / "docs" / "bench" / "encode_alone"))
    args = ap.parse_args()
    import numpy as np
    import torch

    from slimdiff.data import build_dataset
    from slimdiff.data.cache import BatchEncoder
    from slimdiff.eval.stats import mean_ci
    from slimdiff.sample import load_pipeline

    torch.set_num_threads(args.threads)
    pipe = load_pipeline("toy")
    encoder = BatchEncoder(pipe.vae.eval(), pipe.tokenizer, pipe.text_encoder.eval())
    data = build_dataset("toy", 64, seed=0, toy_size=args.batch)
    items = [data[i] for i in range(args.batch)]
    pixels = torch.stack([it["pixel_values"] for it in items])  # (B, 3, 64, 64)
    captions = [it["caption"] for it in items]

    def batched():
        return encoder.encode_images(pixels), encoder.encode_text(captions)

    def alone():
        return encoder(items)

    times: dict[str, list[float]] = {"alone (BatchEncoder)": [], "whole batch (before)": []}
    fns = {"alone (BatchEncoder)": alone, "whole batch (before)": batched}
    alone(), batched()  # warm-up
    for _ in range(args.rounds):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    (m_a, t_a), (m_b, t_b) = alone(), batched()
    rows = {}
    for name, ts in times.items():
        ci = mean_ci(np.array(ts))  # {"value", "ci"}
        rows[name] = {"mean_s": ci["value"], "ci95": ci["ci"], "per_item_ms": 1000 * ci["value"] / args.batch,
                      "rounds": ts}
    ratio = rows["alone (BatchEncoder)"]["mean_s"] / rows["whole batch (before)"]["mean_s"]
    result = {"command": f"python bench/bench_encode_alone.py --rounds {args.rounds} --batch {args.batch} "
                         f"--threads {args.threads}",
              "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "load_average": os.getloadavg(),
              "machine": f"{platform.processor() or platform.machine()}, torch {torch.__version__}, "
                         f"{args.threads} thread(s)",
              "batch": args.batch, "rows": rows, "ratio_alone_over_batch": ratio,
              "max_abs_diff": {"moments": (m_a - m_b).abs().max().item(), "text": (t_a - t_b).abs().max().item()}}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [f"# Encoding each item alone: its cost\n", f"`{result['command']}` ({result['date']}, load average "
             f"{', '.join(f'{x:.2f}' for x in result['load_average'])}; {result['machine']})\n",
             f"The toy world's VAE + text encoder on {args.batch} toy scenes at 64 px, {args.rounds} alternating "
             f"rounds; mean seconds per batch, 95% bootstrap interval.\n",
             "| encoding | s per batch | 95% CI | ms per item |", "|---|---|---|---|"]
    for name, r in rows.items():
        lines.append(f"| {name} | {r['mean_s']:.3f} | [{r['ci95'][0]:.3f}, {r['ci95'][1]:.3f}] | "
                     f"{r['per_item_ms']:.2f} |")
    lines += ["", f"Alone / whole batch: {ratio:.2f}x. Largest difference between the two encodings: moments "
              f"{result['max_abs_diff']['moments']:.2e}, text {result['max_abs_diff']['text']:.2e} (why the "
              f"whole-batch encoding broke exact resume with the cache). Only a cache's first fill and "
              f"`--memory-cache off` runs pay it; later epochs read the cache."]
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
