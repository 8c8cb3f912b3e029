"""`slimdiff demo`: profile -> prune -> distill -> evaluate -> report, on the toy world."""

from __future__ import annotations

from slimdiff.cli.names import PRESETS
from slimdiff.cli.checks import nonnegative_float, nonnegative_int, positive_float, positive_int


def add_parser(subparsers) -> None:

    p = subparsers.add_parser(
        "demo",
        help="the whole flow on the toy world, with an HTML report",
        description="Profile the toy teacher, prune it with a preset, distill the student, evaluate all "
        "three on the same prompts and noise (alignment score, all-correct, KID, fidelity to the teacher, each "
        "with a 95%% CI; params, FLOPs, latency) and write a report. Rerunning with the "
        "same --out resumes: finished stages are kept, distillation continues from its checkpoint.",
    )
    p.add_argument("--out", default="runs/demo", help="output directory (default: runs/demo)")
    p.add_argument("--model", default="toy", help="teacher pipeline: toy (default) or a local pipeline directory")
    p.add_argument("--preset", default="bk-small", choices=list(PRESETS), help="pruning preset (default: bk-small)")
    p.add_argument("--quick", action="store_true", help="a ~3-minute version: fewer steps and images")
    p.add_argument("--distill-steps", type=positive_int, default=None, help="optimiser steps (default 600; quick 100)")
    # None: the demo's distillation settings (slimdiff.demo.DEMO_DISTILL), defined there once
    p.add_argument("--batch-size", type=positive_int, default=None, help="distillation batch (default 64)")
    p.add_argument("--learning-rate", type=positive_float, default=None, help="AdamW learning rate (default 1e-3)")
    p.add_argument("--feat-loss", choices=["plain", "normalized"], default=None,
                   help="feature KD: BK-SDM plain or LAPTOP-Diff normalized (default)")
    p.add_argument("--num-images", type=positive_int, default=None, help="test prompts per model (default 256; quick 32)")
    p.add_argument("--steps", type=positive_int, default=None, help="sampler steps (default: the toy pipeline's)")
    p.add_argument("--guidance", type=nonnegative_float, default=None, help="CFG scale (default: the toy pipeline's)")
    p.add_argument("--seed", type=nonnegative_int, default=0, help="seed for data, noise and evaluation (default 0)")
    steps = p.add_mutually_exclusive_group()
    steps.add_argument("--step-distill", type=positive_int, default=None, metavar="N",
                       help="distill the student to N sampling steps (--step-method; default 8, ~5 min)")
    steps.add_argument("--no-step-distill", action="store_true",
                       help="leave the step-distillation stage out (the three-model demo)")
    p.add_argument("--step-method", choices=["lcm", "snapfusion"], default=None,
                   help="how: lcm (default: latent consistency distillation, one U-Net call a step) or snapfusion")
    p.add_argument("--step-distill-train-steps", type=positive_int, default=None,
                   help="optimiser steps of that stage (default 400; quick 20)")
    p.set_defaults(func=run, outputs=("out",),
                   inputs=("model",))


def run(args) -> int:
    from slimdiff.demo import DEFAULT_STEP_DISTILL, DemoConfig, run_demo

    given = ("batch_size", "learning_rate", "feat_loss")  # the others: DemoConfig's defaults
    distill = {k: getattr(args, k) for k in given if getattr(args, k) is not None}
    config = DemoConfig(
        out=args.out, model=args.model, preset=args.preset, quick=args.quick, distill_steps=args.distill_steps,
        num_images=args.num_images, steps=args.steps, guidance=args.guidance, seed=args.seed,
        step_distill=None if args.no_step_distill else (args.step_distill or DEFAULT_STEP_DISTILL),
        step_distill_train_steps=args.step_distill_train_steps,
        **({"step_method": args.step_method} if args.step_method else {}), **distill,
    )
    summary = run_demo(config)
    from slimdiff.report.tables import format_ci

    print(f"{'model':<14} {'alignment score [95% CI]':>26} {'all correct [95% CI]':>24} {'params':>10} {'UNet ms':>8}")
    for name in (n for n in ("teacher", "pruned", "distilled", "step-distilled") if n in summary):
        m = summary[name]
        print(f"{name:<14} {format_ci(m['alignment_score'], m['ci'].get('alignment_score')):>26} "
              f"{format_ci(m['all_correct'], m['ci'].get('all_correct')):>24} {m['params']:>10,} "
              f"{m['unet_latency_ms']:>8.2f}")
    print(f"report: {summary['report_html']}")
    return 0
