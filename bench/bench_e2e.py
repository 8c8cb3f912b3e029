"""End to end: a fast U-Net schedule with the pruned VAE decoder (issue 11 item 5, issue 9's goal).

    python bench/bench_e2e.py --student runs/bench_steps/bk-small-guidance-embedded-4 \\
        --vae runs/bench_vae/distilled --out docs/bench/e2e          # the committed run (~5 min)
    python bench/bench_e2e.py --student S --vae V --num-images 8 --repeats 1 --out /tmp/e2e   # smoke run

Rows: the reference (the teacher with its own sampler, --reference-steps steps, CFG), the
reference decoding with the pruned + distilled VAE, the step-distilled student as its recipe says
(its steps, guidance, sampler), and the student with the VAE. Quality: one `slimdiff.eval.compare`
(the same test prompts and initial noise for all rows, 95% bootstrap CIs, `*` where the paired
difference from the reference excludes 0, fidelity to the reference's image). Speed: one pipeline
call at batch 1 (text encoder + every U-Net call + VAE decode), the rows timed round-robin on the
same threads, medians, with the decoder alone timed the same way. Results: OUT.md, OUT.json.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import sys
from pathlib import Path

import torch

from slimdiff.eval.compare import compare
from slimdiff.sample import fill_sampling, resolve_pipeline, with_vae
from slimdiff.io import atomic_write, write_json
from slimdiff.profile.latency import median, num_threads, time_rounds
from slimdiff.report.tables import markdown_table


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--teacher", default="toy", help="the reference pipeline (default: toy)")
    p.add_argument("--reference-steps", type=int, default=25, help="the reference's sampler steps (default 25)")
    p.add_argument("--student", required=True, help="a step-distill output (its pipeline/ and recipe.json)")
    p.add_argument("--vae", required=True, help="a prune-vae / distill-vae output (slimdiff.load_vae)")
    p.add_argument("--num-images", type=int, default=256)
    p.add_argument("--repeats", type=int, default=10, help="timed rounds (default 10)")
    p.add_argument("--threads", type=int, default=1, help="torch threads while timing (default 1)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="docs/bench/e2e", help="writes OUT.md and OUT.json")
    return p.parse_args()


def main() -> None:
    args = parse_args()
    if not (Path(args.vae) / "config.json").is_file():
        raise SystemExit(f"--vae {args.vae!r} is not a VAE directory (config.json); make one with slimdiff prune-vae")
    teacher = resolve_pipeline(args.teacher)
    student_dir = Path(args.student) / "pipeline" if (Path(args.student) / "pipeline").is_dir() else Path(args.student)
    student = resolve_pipeline(str(student_dir))
    s_steps, s_guidance = fill_sampling(student, None, None)
    _, r_guidance = fill_sampling(teacher, None, None)
    rows = {  # name -> (pipeline, steps, guidance)
        f"reference ({args.reference_steps} steps)": (teacher, args.reference_steps, r_guidance),
        "reference + pruned VAE": (with_vae(teacher, args.vae), args.reference_steps, r_guidance),
        f"student ({s_steps} steps)": (student, s_steps, s_guidance),
        "student + pruned VAE": (with_vae(student, args.vae), s_steps, s_guidance),
    }
    for pipe, _, _ in rows.values():
        pipe.set_progress_bar_config(disable=True)

    # 1. quality: one paired comparison, fidelity to the reference's images
    result = compare([p for p, _, _ in rows.values()], names=list(rows), num_images=args.num_images,
                     steps=[n for _, n, _ in rows.values()], guidance=[g for _, _, g in rows.values()],
                     seed=args.seed, teacher=0, progress=False)

    # 2. speed: one batch-1 call per row and round, round-robin; the two decoders alone the same way
    prompt = result["prompts"][0]

    def call(pipe, steps, guidance):
        return lambda: pipe(prompt, num_inference_steps=steps, guidance_scale=guidance, output_type="pil",
                            generator=torch.Generator().manual_seed(args.seed))

    vae_new = rows["reference + pruned VAE"][0].vae
    latent = torch.randn(1, teacher.vae.config.latent_channels, teacher.unet.config.sample_size,
                         teacher.unet.config.sample_size, generator=torch.Generator().manual_seed(args.seed))
    calls = {name: call(*row) for name, row in rows.items()}
    calls["decoder: teacher"] = lambda: teacher.vae.decode(latent / teacher.vae.config.scaling_factor)
    calls["decoder: pruned"] = lambda: vae_new.decode(latent / vae_new.config.scaling_factor)
    load = os.getloadavg()[0]
    with num_threads(args.threads) as threads:
        times = time_rounds(calls, warmup=1, repeats=args.repeats, device=torch.device("cpu"))
    ms = {name: median(t) for name, t in times.items()}
    report(args, rows, result, ms, threads, load)


def report(args, rows: dict, result: dict, ms: dict, threads: int, load: float) -> None:
    ref = next(iter(rows))
    quality = {r["model"]: r for r in result["rows"]}
    table = []
    for name, (_, steps, guidance) in rows.items():
        table.append({"pipeline": name, "steps": steps, "guidance": guidance, "ms / image": round(ms[name], 1),
                      "speed-up": f"{ms[ref] / ms[name]:.2f}x"})
    decoder = (f"Decoder alone (batch 1): teacher {ms['decoder: teacher']:.1f} ms, pruned "
               f"{ms['decoder: pruned']:.1f} ms ({ms['decoder: teacher'] / ms['decoder: pruned']:.2f}x); share of "
               f"the student's pipeline: {ms['decoder: teacher'] / ms[list(rows)[2]]:.0%} with the teacher's "
               f"decoder, {ms['decoder: pruned'] / ms[list(rows)[3]]:.0%} with the pruned one.")
    header = (f"# End to end: step-distilled student + pruned VAE decoder\n\n"
              f"`python bench/bench_e2e.py {' '.join(sys.argv[1:])}`  \n"
              f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, {platform.machine()}, "
              f"{os.cpu_count()} cores, torch {torch.__version__}, {threads} thread(s) while timing, load average "
              f"{load:.1f} before timing; {args.repeats} timed rounds (round-robin, medians); quality on "
              f"{args.num_images} test prompts.\n\n")
    speed = markdown_table(table)
    body = (header + "## Speed (one pipeline call, batch 1)\n\n" + speed + "\n\n" + decoder + "\n\n"
            + "## Quality (the same prompts and noise; fidelity to the reference's image)\n\n" + result["markdown"]
            + "\n")
    atomic_write(Path(args.out + ".md"), body)
    write_json(args.out + ".json", {"args": vars(args), "ms": ms, "speed": table, "decoder": decoder,
                                    "quality": {k: v for k, v in quality.items()}})
    print(body)


if __name__ == "__main__":
    main()
