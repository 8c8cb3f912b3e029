"""MobileDiffusion's tricks at sd15-arch 512px (issue 22 item 4): each alone, the md / md-lite presets,
and the latency table's prediction for a replaced unit.

    python bench/bench_md.py --only md md-lite           # a chunk (rows are kept in OUT.json, resumable)
    python bench/bench_md.py --lut-only                  # the latency-table check on the toy (~1 min)
    python bench/bench_md.py --latent-size 16 --out /tmp/md   # quick smoke run

Steps: (1) each row's U-Net is built from the seeded random sd15-arch (architecture only, weights
random): one MobileDiffusion trick alone (`slimdiff.modules.mobilediffusion.MDTricks`), the md design's
structure with plain units, the presets md / md-lite whole, and the designs bench_md_search.py found
(their choices applied to sd15-arch); (2) parameters and FLOPs (counted on
the meta device: 2 x MACs, attention matmuls included; the seed's Table 1 convention = ours x
392 / 803.3, SD-1.5's row); (3) latency per step: batch 2 (classifier-free guidance), float32, CPU, 1
thread, process CPU time, the row's U-Net and sd15-arch timed round-robin in the same rounds (one
warm-up round, medians of the timed rounds), so each speed-up is against sd15-arch measured beside it;
(4) the latency table (`LatencyLUT`, toy U-Net at latent LUT_LATENT, process CPU time) extended with a replaced
unit predicts that unit's time in a fresh profile within 10%? (several units, medians; a second fresh profile
gives the measurement's own spread).
Quality rows (toy world, after the demo's distillation) are not run by this script (see docs/bench/md.md).
"""

from __future__ import annotations

import argparse
import datetime
import gc
import os
import platform
import time

import torch
from diffusers import UNet2DConditionModel

from slimdiff.io import atomic_write, read_json, to_jsonable, write_json
from slimdiff.modules import MDTricks, apply_md_tricks
from slimdiff.modules.mobilediffusion import MD_DESIGNS, md_blocks
from slimdiff.profile import LatencyLUT, ProfileSettings, make_unet_inputs, profile_unet
from slimdiff.profile.latency import median, num_threads, time_rounds
from slimdiff.prune.choices import apply_choices
from slimdiff.unet import apply_preset, load_unet, rebuild, slim_view, text_width, to_slim
from slimdiff.unet.builtins import SD15_CONFIG

CPU = torch.device("cpu")
SD15_TABLE = (392.0, 803.273441280)  # seed Table 1's SD-1.5 GFLOPs, slimdiff's count at batch 1 (GFLOPs)

# row name -> how it is built from the sd15-arch teacher
TRICKS = {
    "separable convs (every ResNet)": MDTricks(separable_levels=(0, 1, 2, 3)),
    "decoupled: no self-attention at 64x64": MDTricks(cross_only_levels=(0,)),
    "shared K/V (cross-attention)": MDTricks(shared_kv=True),
    "ReLU attention": MDTricks(relu=True),
    "feed-forward 3x": MDTricks(ff_mult=3.0),
    "swish (SwiGLU)": MDTricks(swish=True),
}
SEED_TABLE = {"md": (386, 182), "md-lite": (278, 153)}  # seed 001 Table 1: params (M), GFLOPs
NOTES = """FLOPs convention: slimdiff counts 2 x MACs of convs, linears and matmuls (attention included) per
forward; SD-1.5 is 803.3 GFLOPs at batch 1 that way and 392 in the seed's table, so the table counts about
one FLOP per multiply-add (0.488 of ours; SD-1.5's 401.6 G-MACs are 2.4% above its 392). Layout
(interpretations: the seed gives only the counts): 3 levels (320, 640, 0.8 / 0.7 x the teacher's third
width); 64x64: one ResNet down, two up, no transformer; 32x32: ResNet + cross-attention-only transformer
(down 1, up 2: the 3 CA without SA); 16x16: ResNets with separable convs and 15 (md: 3 down, 6 mid, 3 + 3
up) or 12 (md-lite: 3, 3, 3 + 3) full transformers; 11 ResNets in all (down 3, mid 2, up 6); every
transformer with shared K/V, FF 3x and swish; softmax attention (ReLU is a fine-tune after distillation,
its own row). Tensors inherited from sd15-arch where name and shape match (levels 0-1, the stem).
Rows after md-lite: designs searched by bench/bench_md_search.py (docs/bench/md_search.md), their choices
applied to sd15-arch. ReLU attention is slower here (0.58x): softmax runs in torch's fused
scaled_dot_product_attention, while ReLU attention (1/L) relu(Q K^T / sqrt(d)) V is two matmuls with the
(B, heads, N, L) score matrix materialised (at 64x64 self-attention: 2 x 8 x 4096 x 4096 floats, 1 GiB per
layer); its gain in seed 001 is on mobile accelerators where softmax itself is costly and low-bit. FF 3x
(1.01x) and swish (0.96x) are within this bench's noise (about +-10%: sd15-arch's own step varied 14.0-16.5 s
over these rows); at 512px the attention matmuls, not the feed-forward, dominate a CPU step."""
STRUCTURE = "md structure, plain units (fewer ResNets, transformers in the middle, 1024 ch)"
SEARCH = "docs/bench/md_search.json"  # bench_md_search.py's designs: {name: {"chosen": {unit: choice}}}
DESIGNS = read_json(SEARCH)["designs"] if os.path.isfile(SEARCH) else {}
ROWS = [*TRICKS, STRUCTURE, "md", "md-lite", *DESIGNS]


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--teacher", default="sd15-arch", help="the U-Net the rows are built from (toy: a smoke run)")
    p.add_argument("--latent-size", type=int, default=64, help="latent side (64 = 512px)")
    p.add_argument("--batch", type=int, default=2, help="images per step (2: classifier-free guidance)")
    p.add_argument("--repeats", type=int, default=2, help="timed rounds per row (plus one warm-up round)")
    p.add_argument("--only", nargs="+", metavar="ROW", help=f"time only these rows; others kept. Rows: {ROWS}")
    p.add_argument("--lut-only", action="store_true", help="only the latency-table check")
    p.add_argument("--out", default="docs/bench/md", help="writes OUT.md and OUT.json")
    return p.parse_args()


def build(name: str, teacher):
    if name in TRICKS:
        return apply_md_tricks(teacher, TRICKS[name])
    if name == STRUCTURE:
        return rebuild(slim_view(teacher), md_blocks(slim_view(teacher), MD_DESIGNS["md"]))
    if name in DESIGNS:  # a searched design: its keep / remove / replace choices applied to the teacher
        return apply_choices(teacher, DESIGNS[name]["chosen"])
    return apply_preset(teacher, name)[0]


def gflops_params(model, latent: int, batch: int) -> tuple[float, float]:
    """Counted on the meta device (moves `model` there: call it after timing)."""
    r = profile_unet(model.to("meta"), ProfileSettings(latent_size=latent, batch=batch, device="meta",
                                                       measure_latency=False))
    return r.total.flops / 1e9, r.total.params / 1e6


def time_pair(models: dict, latent: int, batch: int, repeats: int) -> dict[str, list[float]]:
    calls = {}
    for name, m in models.items():
        inputs = make_unet_inputs(m, latent, text_width(m), batch, 77)
        calls[name] = lambda inputs=inputs, m=m: inputs(m)
    with num_threads(1):
        return time_rounds(calls, 1, repeats, CPU, clock="cpu")


LUT_LATENT, LUT_REPEATS = 32, 30  # the check's toy U-Net input side and timed rounds


def lut_check() -> dict:
    """4. the table extended with a replaced unit vs a fresh profile of the edited network; a second fresh
    profile gives the measurement's own spread (the noise floor of the comparison)."""
    teacher = to_slim(load_unet("toy")).eval()
    settings = ProfileSettings(latent_size=LUT_LATENT, repeats=LUT_REPEATS, warmup=3, threads=1, clock="cpu",
                               context_length=8)
    lut = LatencyLUT.build(teacher, settings)
    rows = []
    for unit, tricks in (("down.0.layer.0.resnet", MDTricks(separable_levels=(0,))),
                         ("up.3.layer.2.resnet", MDTricks(separable_levels=(0,))),
                         ("down.1.layer.0.attn", MDTricks(shared_kv=True, ff_mult=3.0)),
                         ("down.0.layer.0.attn", MDTricks(cross_only_levels=(0,)))):
        student = apply_md_tricks(teacher, MDTricks(**{**tricks.to_dict(), "units": (unit,)})).eval()
        lut.extend(student)
        predicted = lut.breakdown(student)[unit]
        measured, again = ({r.name: r.latency_ms for r in profile_unet(student, settings).units}[unit]
                           for _ in range(2))
        rows.append({"unit": unit, "tricks": tricks.to_dict(), "predicted_ms": predicted, "measured_ms": measured,
                     "error": predicted / measured - 1, "remeasured_ms": again, "repeat_error": again / measured - 1})
    return {"settings": f"toy U-Net, latent {LUT_LATENT}, batch 1, 1 thread, process CPU time, {LUT_REPEATS} rounds "
                        "(medians), each unit timed on its captured inputs beside the whole forward", "rows": rows}


def main() -> None:
    """1. rows, 2. FLOPs/params, 3. latency beside sd15-arch, 4. LUT check; then OUT.json and OUT.md."""
    args = parse_args()
    t0, load0 = time.time(), os.getloadavg()[0]
    path = f"{args.out}.json"
    old = read_json(path) if os.path.exists(path) else {}
    results = {"rows": old.get("rows", {}), "lut": old.get("lut"), "runs": old.get("runs", [])}
    if args.lut_only:
        results["lut"] = {**lut_check(), "date": _now()}
    else:
        todo = args.only or ROWS
        bad = [r for r in todo if r not in ROWS]
        if bad:
            raise SystemExit(f"unknown rows {bad}; valid: {ROWS}")
        teacher = load_unet(args.teacher).eval()
        with torch.device("meta"):
            sd_gflops, sd_params = gflops_params(UNet2DConditionModel(**SD15_CONFIG), args.latent_size, args.batch)
        for name in todo:
            model = build(name, teacher).eval()
            times = time_pair({"sd15-arch": teacher, name: model}, args.latent_size, args.batch, args.repeats)  # ref
            gflops, params = gflops_params(model, args.latent_size, args.batch)
            ms, ref = median(times[name]), median(times["sd15-arch"])
            results["rows"][name] = {"params_m": params, "gflops": gflops, "ms": ms, "sd15_ms": ref,
                                     "speedup": ref / ms, "samples_ms": times[name], "sd15_samples_ms": times["sd15-arch"],
                                     "sd15_gflops": sd_gflops, "sd15_params_m": sd_params, "date": _now()}
            print(f"{name}: {params:.1f}M, {gflops:.0f} GFLOPs, {ms:.0f} ms vs sd15-arch {ref:.0f} ms: "
                  f"{ref / ms:.2f}x", flush=True)
            del model
            gc.collect()
            save(results, args, path)  # after every row: a chunk cut short keeps what it measured
    results["runs"].append({"date": _now(), "seconds": round(time.time() - t0), "load": [load0, os.getloadavg()[0]],
                            "latent": args.latent_size, "batch": args.batch, "repeats": args.repeats,
                            "rows": args.only or ("lut" if args.lut_only else ROWS), "torch": torch.__version__,
                            "cpu": platform.processor() or platform.machine()})
    save(results, args, path)


def save(results: dict, args: argparse.Namespace, path: str) -> None:
    write_json(path, results)
    atomic_write(f"{args.out}.md", markdown(results))


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def markdown(results: dict) -> str:
    lines = ["# MobileDiffusion's tricks at sd15-arch (`bench/bench_md.py`)", "",
             "Architecture only (seeded random weights). Batch 2 (classifier-free guidance), latent 64 (512px), "
             "float32, CPU, 1 thread, process CPU time; each row timed round-robin with sd15-arch in the same rounds "
             "(1 warm-up round, medians). GFLOPs per step = 2 x MACs at batch 2, attention matmuls included; the "
             "seed's Table 1 counts one image: its GFLOPs = ours / 2 (batch) x 392 / 803.3.", "",
             "| row | params (M) | GFLOPs / step | seed-convention GFLOPs | ms / step | sd15-arch ms (same rounds) | "
             "speed-up | date |", "|---|---:|---:|---:|---:|---:|---:|---|"]
    for name in ROWS:
        r = results["rows"].get(name)
        if r is None:
            lines.append(f"| {name} | | | | not yet run | | | |")
            continue
        seed = r["gflops"] / 2 * SD15_TABLE[0] / SD15_TABLE[1]
        lines.append(f"| {name} | {r['params_m']:.1f} | {r['gflops']:.0f} | {seed:.0f} | {r['ms']:.0f} | "
                     f"{r['sd15_ms']:.0f} | {r['speedup']:.2f}x | {r['date']} |")
    lines += ["", "## The presets against seed 001's Table 1 (one image, 64x64 latent)", "",
              "| preset | params (M) | seed | diff | GFLOPs (seed convention) | seed | diff |",
              "|---|---:|---:|---:|---:|---:|---:|"]
    for name, (params, gflops) in SEED_TABLE.items():
        r = results["rows"].get(name)
        if r is not None:
            ours = r["gflops"] / 2 * SD15_TABLE[0] / SD15_TABLE[1]
            lines.append(f"| {name} | {r['params_m']:.1f} | {params} | {100 * (r['params_m'] / params - 1):+.1f}% | "
                         f"{ours:.1f} | {gflops} | {100 * (ours / gflops - 1):+.1f}% |")
    lines += ["", NOTES]
    if results.get("lut"):
        lut = results["lut"]
        default = to_jsonable(MDTricks().to_dict())  # as the JSON holds it (tuples as lists)
        lines += ["", f"## Latency table vs a fresh profile ({lut['settings']}, {lut['date']})", "",
                  "Predicted: the table (`LatencyLUT`) built on the toy teacher, extended with the replaced unit's "
                  "new signature; measured: a fresh profile of the edited network; remeasured: a second fresh "
                  "profile (the spread of the measurement itself).", "",
                  "| replaced unit | tricks | predicted ms | measured ms | error | remeasured ms | remeasure vs measure |",
                  "|---|---|---:|---:|---:|---:|---:|"]
        for r in lut["rows"]:
            t = {k: v for k, v in to_jsonable(r["tricks"]).items() if v != default[k] and k != "units"}
            again = (f"{r['remeasured_ms']:.3f} | {100 * r['repeat_error']:+.1f}%" if "remeasured_ms" in r
                     else "- | -")
            lines.append(f"| {r['unit']} | {t} | {r['predicted_ms']:.3f} | {r['measured_ms']:.3f} | "
                         f"{100 * r['error']:+.1f}% | {again} |")
    lines += ["", "## Runs", ""]
    for run in results["runs"]:
        lines.append(f"- {run['date']}: rows {run['rows']}, latent {run['latent']}, batch {run['batch']}, "
                     f"{run['repeats']} timed rounds, {run['seconds']} s, load average {run['load'][0]:.2f} -> "
                     f"{run['load'][1]:.2f} on 2 cores, torch {run['torch']}")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
