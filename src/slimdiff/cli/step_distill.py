"""`slimdiff step-distill`: fewer sampling steps (SnapFusion's step distillation, LCM, PCM, DMD2).

    slimdiff step-distill --teacher toy --student toy --method lcm --out runs/lcm        # samples at 1, 2, 4, 8
    slimdiff step-distill --teacher toy --student toy --method lcm --lora-rank 16 --out runs/lcm-lora
    slimdiff step-distill --teacher toy --student toy --method pcm --phases 4 --out runs/pcm4
    slimdiff step-distill --teacher toy --student toy --steps 8 --out runs/s8            # SnapFusion 32 -> 8
    slimdiff step-distill --teacher toy --student runs/bk-small-kd --steps 4 --schedule progressive --out runs/s4
    slimdiff step-distill --teacher toy --student toy --steps 8 --guidance-embed --cfg-prob 1 --out runs/s8w
    slimdiff step-distill --teacher toy --student runs/lcm --method dmd2 --steps 1 --out runs/dmd2  # one step
    slimdiff generate runs/s8 "a small red circle"      # the recipe's 8 steps and guidance

Models, data, optimisation and bookkeeping flags are `slimdiff distill`'s (same trainer).
"""

from __future__ import annotations

import argparse

from slimdiff.cli.distill import OPTIONS as DISTILL_OPTIONS
from slimdiff.cli.distill import add_options, is_main_process, option_values

_LOSS_FIELDS = {"lambda_task", "lambda_out", "lambda_feat", "lambda_mid", "lambda_perc", "feat_loss", "feat_map",
                "perceptual_net", "perceptual_weights"}
# (flag, config field, argparse kwargs); defaults and meanings: slimdiff.distill.step and slimdiff.distill.lcm
_SHARED = [
    ("--steps", "steps", dict(type=int, help="student sampling steps (snapfusion 8; lcm: the recipe's, 4; pcm: "
                                             "the phases)")),
    ("--guidance-range", "guidance_range", dict(type=float, nargs=2, metavar=("MIN", "MAX"),
                                                help="w ~ U[MIN, MAX] (snapfusion 2 14; lcm/pcm 2 8, a LoRA: the "
                                                     "world's guidance)")),
    ("--guidance-embed", "guidance_embed", dict(action="store_true", default=None,
                                                help="student reads w (time_cond_proj_dim): one U-Net call per step")),
    ("--guidance-embed-dim", "guidance_embed_dim", dict(type=int, help="w embedding width (default 256)")),
    ("--guidance", "guidance", dict(type=float, help="sampling guidance for the recipe (default: toy 5, else 7.5)")),
]
_SNAPFUSION = [
    ("--teacher-steps", "teacher_steps", dict(type=int, help="DDIM steps of the teacher schedule (default 32)")),
    ("--schedule", "schedule", dict(choices=["direct", "progressive"], help="direct (default): teacher_steps/steps "
                                    "teacher steps per student step; progressive: halve, 2 per step")),
    ("--cfg-prob", "cfg_prob", dict(type=float, metavar="P", help="share of CFG-aware examples (default 0.1; "
                                    "0: vanilla)")),
    ("--gamma", "lambda_task", dict(type=float, help="weight of the task loss (default 0.2)")),
    ("--teacher-prediction-type", "teacher_prediction_type",
     dict(choices=["epsilon", "v_prediction", "sample"], help="default: the pipeline scheduler's")),
    ("--student-prediction", "student_prediction",
     dict(choices=["epsilon", "v_prediction", "sample"], help="what the student predicts")),
]
_SOLVER_STEPS = ("--solver-steps", "solver_steps", dict(type=int, help="lcm/pcm: the teacher's DDIM grid; dmd2: "
                                                                       "LCMScheduler's grid (default 50)"))
_CONSISTENCY = [
    ("--phases", "phases", dict(type=int, help="pcm: number of phases = sampling steps (default 1)")),
    _SOLVER_STEPS,
    ("--lora-rank", "lora_rank", dict(type=int, metavar="R", help="lcm/pcm: train a rank-R LoRA (peft) instead of "
                                      "the whole U-Net")),
    ("--lora-alpha", "lora_alpha", dict(type=float, help="LoRA alpha (default: the rank)")),
    ("--loss", "loss", dict(choices=["huber", "l2"], help="lcm/pcm distance (default huber)")),
    ("--target-decay", "target_decay", dict(type=float, help="lcm/pcm target network EMA (default 0.95)")),
]
_DMD = [
    _SOLVER_STEPS,
    ("--fake-ratio", "fake_ratio", dict(type=int, help="dmd2: fake-score updates per generator step (default 5)")),
    ("--fake-lr", "fake_learning_rate", dict(type=float, help="dmd2: the fake score's learning rate (default --lr)")),
    ("--gan-weight", "lambda_gan", dict(type=float, help="dmd2: the generator's GAN term (default 0: no head)")),
    ("--gan-fake-weight", "lambda_gan_fake", dict(type=float, help="dmd2: the head's loss in the fake score's "
                                                                     "update (default 0.01)")),
    ("--reg-weight", "lambda_reg", dict(type=float, help="dmd2: DMD's regression term on the guided teacher's DDIM "
                                                         "noise -> image pairs (default 0: none)")),
    ("--reg-pairs", "reg_pairs", dict(type=int, help="dmd2: number of teacher pairs (default 2048)")),
    ("--reg-steps", "reg_steps", dict(type=int, help="dmd2: the teacher's DDIM steps per pair (default 16)")),
    ("--reg-file", "reg_file", dict(help="dmd2: the pairs' cache file, made when missing (default "
                                         "OUT/teacher_pairs.safetensors)")),
]
_OPTIONS = _SHARED + _SNAPFUSION + _CONSISTENCY + _DMD[1:] + [o for o in DISTILL_OPTIONS if o[1] not in _LOSS_FIELDS]
METHODS = ("snapfusion", "lcm", "pcm", "dmd2")
# each method's own flags; the others' are refused
_OWN = {"snapfusion": _SHARED + _SNAPFUSION, "lcm": _SHARED + _CONSISTENCY, "pcm": _SHARED + _CONSISTENCY,
        "dmd2": [o for o in _SHARED if o[1] != "guidance_embed"] + _DMD}


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "step-distill", help="distill a teacher's many sampling steps into a student's few",
        description="SnapFusion step distillation: the teacher's k DDIM steps become one student step (v-prediction "
                    "student; CFG-aware with probability --cfg-prob; direct or progressive schedule; optional "
                    "guidance embedding). Writes the student, recipe.json (steps, guidance), train_log.jsonl and "
                    "OUT/pipeline/ (a plain StableDiffusionPipeline with the trained DDIM schedule).")
    p.add_argument("--teacher", required=True, help="toy, a pipeline dir or a UNet dir")
    p.add_argument("--student", required=True, help="toy (the teacher itself), a prune/distill output or a UNet dir")
    p.add_argument("--data", default="toy", help="toy (default) | image folder | .tar shard(s)")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--method", choices=METHODS, default="snapfusion",
                   help="snapfusion (default): k teacher DDIM steps -> 1; lcm: latent consistency distillation "
                        "(LCMScheduler, any step count); pcm: phased consistency (--phases M, M steps); dmd2: "
                        "distribution matching, a one-step generator (--steps 1; 2, 4 by backward simulation)")
    add_options(p, _OPTIONS)
    p.set_defaults(func=run, outputs=("out",),
                   inputs=("teacher", "student", "pipeline", "data", "perceptual_weights"))


def config_from_args(args: argparse.Namespace):
    """The method's validated config; a flag of another method is refused in one line."""
    values = {"teacher": args.teacher, "student": args.student, "data": args.data, "out": args.out,
              **option_values(args, _OPTIONS)}
    own = {flag for flag, _, _ in _OWN[args.method]}
    every = _SHARED + _SNAPFUSION + _CONSISTENCY + _DMD
    foreign = sorted({flag for flag, f, _ in every if flag not in own and f in values})
    if foreign:
        raise ValueError(f"{', '.join(foreign)} do not apply to --method {args.method}")
    if "guidance_range" in values:
        values["guidance_min"], values["guidance_max"] = values.pop("guidance_range")
    if args.method == "snapfusion":
        from slimdiff.distill.step import StepDistillConfig

        return StepDistillConfig(**values)
    if args.method == "dmd2":
        from slimdiff.distill.onestep import OneStepConfig

        return OneStepConfig(**values)
    from slimdiff.distill.lcm import ConsistencyConfig

    if args.method == "pcm" and "steps" not in values:
        values["steps"] = values.get("phases", 1)
    return ConsistencyConfig(method=args.method, **values)


def run(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    if args.method == "snapfusion":
        from slimdiff.distill.step import step_distill as train
    elif args.method == "dmd2":
        from slimdiff.distill.onestep import one_step_distill as train
    else:
        from slimdiff.distill.lcm import consistency_distill as train

    result = train(config, progress=not args.quiet)
    if result.num_processes == 1 or is_main_process():
        terms = ", ".join(f"{k} {v:.4g}" for k, v in result.losses.items())
        print(f"step-distilled {result.steps} steps at {result.steps_per_sec:.2f} steps/s ({terms})")
        print(f"student: {result.out}  pipeline: {result.pipeline_dir}")
    return 0
