"""A-SDM speed at sd15-arch 512px (issue 10 item 6): GRI vs plain attention, CondConv's cost,
the U-Net and pipeline speed-ups of the A-SDM configuration (and speed-only candidates).

    python bench/bench_asdm_speed.py                                  # 512px (latent 64), ~6 min CPU time
    python bench/bench_asdm_speed.py --latent-size 16 --out /tmp/a    # quick smoke run

Steps: (1) units at SD widths, batch 2 (classifier-free guidance): a 3x3 conv vs CondConv-e2
in both implementations (grouped / mixed), a ResNet unit vs its CondConv-e2 version, and the
Transformer unit of down.0 (64x64, 320 ch) and down.1 (32x32, 640 ch) with plain vs GRI
self-attention for several (window, reduction); FLOPs counted per unit. (2) whole U-Nets at
batch 2 (one denoising step with guidance): sd15-arch, bk-base (stage 1), M2 (A-SDM Table 2's
best: bk-base down.0-1 + up.2-3 in the teacher), M2 + CondConv-e2 in down.0/up.3, M2 +
CondConv-e2 + GRI at levels 0-1 (= every attention of the student part: the A-SDM
configuration), speed-only candidates built from bk-tiny, and the LAPTOP-Diff architecture that
bench_asdm.py's Table 4 searched under an sd15-arch latency budget (read from --asdm). (3) the
pipeline: text encoder (CLIP ViT-L/14 architecture) once, STEPS U-Net steps, VAE decoder (SD's architecture) once:
pipeline time = text + STEPS x U-Net + VAE, each measured. Everything random-weighted
(architecture only). Round-robin rounds (each model once per round), medians; clock: process
CPU time with one thread (a shared machine's other jobs are left out). Quality is not measured
here (bench_asdm.py does it on the toy world).
"""

from __future__ import annotations

import argparse
import datetime
import gc
import os
import platform
import time

import torch

from slimdiff.io import atomic_write, read_json, write_json
from slimdiff.modules import CondConv2d, CondConvResnetBlock2D, CondConvSettings, GRISettings, apply_condconv, apply_gri
from slimdiff.modules.gri import GRITransformer2DModel
from slimdiff.profile import UnitFlopCounter, make_unet_inputs
from slimdiff.profile.latency import median, num_threads, time_rounds
from slimdiff.unet import apply_preset, assemble, get_module, list_units, load_unet, remove_units

CPU = torch.device("cpu")


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--latent-size", type=int, default=64, help="latent side (64 = 512px)")
    p.add_argument("--steps", type=int, default=25, help="denoising steps of the pipeline (A-SDM uses 30, SD 25-50)")
    p.add_argument("--gri", nargs=2, type=int, default=[16, 4], metavar=("WINDOW", "REDUCTION"),
                   help="GRI settings of the whole-U-Net configurations (default 16 4)")
    p.add_argument("--unit-repeats", type=int, default=2, help="timed rounds of the unit timings")
    p.add_argument("--model-repeats", type=int, default=2, help="timed rounds of the whole U-Nets")
    p.add_argument("--only", nargs="+", metavar="NAME", help="time only these U-Net candidates (exact names) and "
                   "skip the units; the other rows of an existing OUT.json are kept (and say so)")
    p.add_argument("--asdm", default="docs/bench/asdm.json", help="bench_asdm.py's results: the units its "
                   "LAPTOP-Diff search removed (Table 4), timed here as a candidate when present")
    p.add_argument("--out", default="docs/bench/asdm_speed", help="writes OUT.md and OUT.json")
    return p.parse_args()


def flops_of(fn) -> int:
    with UnitFlopCounter({}) as fc, torch.inference_mode():
        fn()
    return fc.total


def timed(calls: dict, repeats: int) -> dict[str, dict]:
    """Round-robin: one untimed round (FLOPs counted there), then `repeats` timed rounds."""
    flops = {n: flops_of(fn) for n, fn in calls.items()}
    times = time_rounds(calls, 0, repeats, CPU, clock="cpu")
    return {n: {"ms": median(t), "samples_ms": t, "gflops": flops[n] / 1e9} for n, t in times.items()}


def unit_calls(teacher, size: int) -> dict:
    """1. units at SD widths, batch 2: convs, resnets, transformer units (plain vs GRI)."""
    calls = {}
    text = torch.randn(2, 77, 768)
    for c, s in ((320, size), (640, size // 2)):
        x = torch.randn(2, c, s, s)
        conv = torch.nn.Conv2d(c, c, 3, padding=1)
        calls[f"conv3x3 {c}ch @{s}"] = lambda m=conv, x=x: m(x)
        for impl in ("grouped", "mixed"):
            cc = CondConv2d(c, c, num_experts=2, impl=impl)
            calls[f"CondConv-e2 {impl} {c}ch @{s}"] = lambda m=cc, x=x: m(x)
    res = get_module(teacher, "down.0.layer.0.resnet")
    kw = dict(in_channels=320, out_channels=320, temb_channels=1280, groups=32, eps=1e-5)
    cc_res = CondConvResnetBlock2D(num_experts=2, **kw)
    x, temb = torch.randn(2, 320, size, size), torch.randn(2, 1280)
    calls[f"resnet 320ch @{size}"] = lambda m=res, x=x: m(x, temb)
    calls[f"CondConv-e2 resnet 320ch @{size}"] = lambda m=cc_res, x=x: m(x, temb)
    for name, c, s in (("down.0.layer.0.attn", 320, size), ("down.1.layer.0.attn", 640, size // 2)):
        plain = get_module(teacher, name)
        x = torch.randn(2, c, s, s)
        calls[f"attn {c}ch @{s} plain"] = lambda m=plain, x=x: m(x, encoder_hidden_states=text)
        kw = dict(num_attention_heads=8, attention_head_dim=c // 8, in_channels=c, num_layers=1,
                  cross_attention_dim=768, norm_num_groups=32)
        for w, r in ((8, 4), (16, 4), (16, 8), (16, None)):
            if s % w or (r and s % r):
                continue
            gri = GRITransformer2DModel(gri_window=w, gri_reduction=r, **kw)
            gri.load_state_dict(plain.state_dict())
            calls[f"attn {c}ch @{s} GRI w{w} r{r}"] = lambda m=gri, x=x: m(x, encoder_hidden_states=text)
    return calls


def candidates(teacher, gri: GRISettings, asdm_json: str) -> dict:
    """2. name -> builder of each U-Net compared with the teacher (see the module docstring).
    Built one at a time (SD-scale copies are 2-3 GB each), intermediates dropped at once."""
    gri_at = lambda m, levels: apply_gri(m, GRISettings(gri.window, gri.reduction, levels=levels))  # noqa: E731

    def m2():
        return assemble(apply_preset(teacher, "bk-base")[0], teacher, "M2")

    def asdm():  # CondConv-e2 in down.0/up.3 and GRI at levels 0-1 of bk-base, then M2
        cc = apply_condconv(apply_preset(teacher, "bk-base")[0], teacher, CondConvSettings(experts=2, init="e2"))
        return assemble(gri_at(cc, (0, 1)), teacher, "M2")

    def tiny():
        return apply_preset(teacher, "bk-tiny")[0]

    def tiny_no64():  # SnapFusion: the highest-resolution (64x64, level 0) attention removed
        m = tiny()
        return remove_units(m, [u.name for u in list_units(m) if u.kind == "attn" and u.level == 0])

    def tiny_gri():  # speed-only candidate: no attention at 64x64, GRI at 32x32
        return gri_at(tiny_no64(), (1,))

    def tiny_gri01():  # GRI in place of the 64x64 and 32x32 self-attention
        return gri_at(tiny(), (0, 1))

    found = {"M2": m2, "A-SDM: M2 + CondConv-e2 + GRI": asdm, "bk-tiny": tiny,
             "bk-tiny, GRI at 64x64 and 32x32": tiny_gri01, "bk-tiny, no 64x64 attention": tiny_no64,
             "bk-tiny, no 64x64 attention, GRI at 32x32": tiny_gri}
    laptop = laptop_search(asdm_json)
    if laptop:  # the toy world's search, same unit names in sd15-arch (same topology)
        found[f"LAPTOP-Diff, sd15-arch latency -{laptop['ratio']:.0%} (bench_asdm Table 4)"] = \
            lambda: remove_units(teacher, laptop["removed"])
    return found


def laptop_search(asdm_json: str) -> dict | None:
    """bench_asdm.py's Table 4 LAPTOP-Diff search ({removed, ratio, ...}), or None when not run."""
    if not os.path.isfile(asdm_json):
        return None
    return read_json(asdm_json)["results"].get("4", {}).get("laptop")


def pipeline_parts(latent: int) -> dict:
    """3. text encoder (CLIP ViT-L/14 text tower) and VAE decoder (SD's AutoencoderKL) architectures."""
    from diffusers import AutoencoderKL
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(0)
    te = CLIPTextModel(CLIPTextConfig(hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                                      num_attention_heads=12, max_position_embeddings=77, projection_dim=768,
                                      hidden_act="quick_gelu")).eval()
    vae = AutoencoderKL(block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=4,
                        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4).eval()
    ids, z = torch.randint(0, 49408, (2, 77)), torch.randn(1, 4, latent, latent)
    return {"text encoder (2 x 77 tokens)": lambda: te(ids), "VAE decoder": lambda: vae.decode(z)}


def main() -> None:
    args = parse_args()
    t0, load0 = time.time(), os.getloadavg()[0]
    units_kept = None  # the date of the units table when --only keeps it from an earlier run
    size = args.latent_size
    with num_threads(1):
        teacher = load_unet("sd15-arch")
        builders = candidates(teacher, GRISettings(*args.gri), args.asdm)
        order = ["sd15-arch", *builders]  # the report's row order
        if args.only:
            unknown = sorted(set(args.only) - set(builders))
            if unknown:
                raise SystemExit(f"--only {unknown} unknown; candidates are {list(builders)} (the LAPTOP-Diff one "
                                 f"needs --asdm FILE with bench_asdm.py's Table 4; {args.asdm!r} has none)")
            builders = {n: b for n, b in builders.items() if n in args.only}
        units = {} if args.only else timed(unit_calls(teacher, size), args.unit_repeats)
        # each candidate timed round-robin with the teacher, then freed (memory)
        whole: dict[str, dict] = {}
        n_teacher = sum(p.numel() for p in teacher.parameters()) / 1e6
        teacher_call = lambda x=make_unet_inputs(teacher, size, 768, batch=2): x(teacher)  # noqa: E731
        for name, build in builders.items():
            model = build()
            x = make_unet_inputs(model, size, 768, batch=2)
            pair = timed({"sd15-arch": teacher_call, name: lambda m=model, x=x: x(m)}, args.model_repeats)
            pair[name]["params_m"] = sum(p.numel() for p in model.parameters()) / 1e6
            pair[name]["unet_speedup"] = pair["sd15-arch"]["ms"] / pair[name]["ms"]
            pair[name]["teacher_ms"] = pair["sd15-arch"]["ms"]
            whole.setdefault("sd15-arch", {**pair["sd15-arch"], "params_m": n_teacher, "unet_speedup": 1.0,
                                           "teacher_ms": pair["sd15-arch"]["ms"]})
            whole[name] = {**pair[name], "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
            del model, x, pair
            gc.collect()
        parts = timed(pipeline_parts(size), 2)
    fixed = sum(p["ms"] for p in parts.values())
    for row in whole.values():  # against the teacher timed in the same rounds
        row["pipeline_ms"] = fixed + args.steps * row["ms"]
        row["pipeline_speedup"] = (fixed + args.steps * row["teacher_ms"]) / row["pipeline_ms"]
    if args.only and os.path.isfile(args.out + ".json"):  # rows not rerun: kept from the earlier run (marked)
        old = read_json(args.out + ".json")
        units, units_kept = old["units"], old.get("units_kept") or old["settings"]["date"]
        kept = {n: {**u, "kept": u.get("kept") or u.get("date") or old["settings"]["date"]} for n, u in old["unets"].items()}
        merged = {**kept, **whole}
        whole = {n: merged[n] for n in order if n in merged}
    result = {"settings": {**vars(args), "resolution": size * 8, "batch": 2, "threads": 1, "clock": "cpu",
                           "torch": torch.__version__, "cpu": platform.processor() or platform.machine(),
                           "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                           "seconds": round(time.time() - t0), "load_start": load0, "load_end": os.getloadavg()[0]},
              "units": units, "unets": whole, "pipeline_parts": parts}
    if units_kept:
        result["units_kept"] = units_kept
    write_json(args.out + ".json", result)
    atomic_write(args.out + ".md", report(result))
    print(report(result))


def report(r: dict) -> str:
    s = r["settings"]
    lines = [
        "# A-SDM speed (`bench/bench_asdm_speed.py`)", "",
        f"sd15-arch architecture, {s['resolution']}px (latent {s['latent_size']}), batch 2 (classifier-free guidance), "
        f"float32, CPU ({s['cpu']}), 1 thread, torch {s['torch']}, clock: process CPU time. Round-robin medians: "
        f"units {s['unit_repeats']} rounds, U-Nets {s['model_repeats']}, text encoder and VAE 2. FLOPs = 2 x MACs, "
        f"attention matmuls included. GRI of the U-Net rows: window {s['gri'][0]}, reduction {s['gri'][1]}. "
        f"Run {s['date']}, {s['seconds']} s; load average {s['load_start']:.2f} -> {s['load_end']:.2f} on "
        f"{os.cpu_count()} cores.", "",
        "## Units (batch 2)", "",
    ]
    if r.get("units_kept"):
        lines += [f"(Kept from the run of {r['units_kept'][:16]}: not rerun by this invocation.)", ""]
    lines += ["| unit | GFLOPs | ms |", "|---|---:|---:|"]
    lines += [f"| {n} | {u['gflops']:.2f} | {u['ms']:.1f} |" for n, u in r["units"].items()]
    lines += ["", f"## U-Net per step and pipeline ({s['steps']} steps)", "",
              "| model | params (M) | GFLOPs / step | U-Net ms / step | U-Net speed-up | pipeline s | pipeline speed-up |",
              "|---|---:|---:|---:|---:|---:|---:|"]
    lines += [f"| {n}{' (kept from ' + u['kept'][:16] + ')' if u.get('kept') else ''} | {u['params_m']:.1f} | "
              f"{u['gflops']:.0f} | {u['ms']:.0f} | {u['unet_speedup']:.2f}x | "
              f"{u['pipeline_ms'] / 1e3:.1f} | {u['pipeline_speedup']:.2f}x |" for n, u in r["unets"].items()]
    parts = ", ".join(f"{n} {p['ms']:.0f} ms" for n, p in r["pipeline_parts"].items())
    lines += ["", "- Each candidate was timed round-robin with the teacher (pairs: SD-scale copies do not all fit in "
              "memory); its speed-ups are against the teacher of its own rounds; the teacher row is its first pair. Rows "
              "kept from an earlier run may come from another machine: compare their speed-ups, not their ms.",
              f"- Pipeline = text encoder + {s['steps']} x U-Net step + VAE decoder, each measured ({parts}).",
              "- The paper (A-SDM): U-Net 22% faster, pipeline 19% faster (GPU, its own configuration).",
              "- Speed only: quality of these configurations on the toy world is `bench/bench_asdm.py`'s job.", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
