"""`slimdiff distill`: train a pruned student to imitate its teacher (BK-SDM, LAPTOP-Diff, A-SDM).

    slimdiff distill --teacher toy --student runs/bk-small --data toy --out runs/kd --max-steps 2000
    accelerate launch --multi_gpu --num_processes 2 -m slimdiff distill ...   # DDP (FSDP: accelerate config)
    accelerate launch --multi_gpu --num_processes 2 -m slimdiff distill --cpu ...   # 2 CPU processes (gloo)

(`accelerate launch --cpu --num_processes 2` starts a single process unless mpirun is set up; the
`--cpu` of `slimdiff distill` after the module name is what puts torchrun's workers on the CPU.)
"""

from __future__ import annotations

import argparse

# options of every training command (fields of both DistillConfig and VaeDistillConfig)
COMMON_OPTIONS = [
    ("--grad-accum", "grad_accum", dict(type=int, help="micro-steps per optimiser step (default 1)")),
    ("--lr-scheduler", "lr_scheduler", dict(help="diffusers schedule name (default constant)")),
    ("--lr-warmup-steps", "lr_warmup_steps", dict(type=int, help="warm-up steps (default 0)")),
    ("--max-grad-norm", "max_grad_norm", dict(type=float, help="gradient clipping norm (default 1; 0: off)")),
    ("--mixed-precision", "mixed_precision", dict(choices=["no", "fp16", "bf16"], help="default no (float32)")),
    ("--seed", "seed", dict(type=int, help="default 0")),
    ("--cpu", "cpu", dict(action="store_true", default=None, help="run on the CPU")),
    ("--checkpoint-every", "checkpoint_every", dict(type=int, help="steps between checkpoints (default 500; 0: none)")),
    ("--checkpoints-keep", "checkpoints_keep", dict(type=int, help="checkpoints kept (default 2)")),
    ("--resume", "resume", dict(metavar="CKPT", help="'latest' or a checkpoint directory")),
]
# speed options (slimdiff.train.speed; docs/bench/distill_throughput.md); defaults: DistillConfig
_ON_OFF = dict(action=argparse.BooleanOptionalAction)
SPEED_OPTIONS = [
    ("--prefetch-factor", "prefetch_factor", dict(type=int, help="batches per worker loaded ahead")),
    ("--pin-memory", "pin_memory", dict(help="page-locked batches for GPU copies", **_ON_OFF)),
    ("--memory-cache", "memory_cache", dict(choices=["auto", "off"], help="encodings in RAM when data is revisited")),
    ("--memory-cache-mb", "memory_cache_mb", dict(type=int, help="RAM cap of the memory cache (MiB)")),
    ("--teacher-inference-mode", "teacher_inference_mode", dict(help="teacher under inference_mode", **_ON_OFF)),
    ("--teacher-dtype", "teacher_dtype", dict(choices=["fp32", "bf16", "fp16"], help="teacher autocast dtype")),
    ("--compile", "compile", dict(help="torch.compile student and teacher", **_ON_OFF)),
    ("--compile-backend", "compile_backend", dict(help="torch.compile backend (default inductor)")),
    ("--channels-last", "channels_last", dict(help="NHWC weights and inputs", **_ON_OFF)),
    ("--adamw", "adamw", dict(choices=["loop", "foreach", "fused"], help="AdamW implementation")),
    ("--log-every", "log_every", dict(type=int, help="steps between host syncs that read the losses")),
    ("--profile-steps", "profile_steps", dict(type=int, metavar="N", help="time the phases of N steps")),
]
# (flag, DistillConfig field, argparse kwargs); defaults and meanings: slimdiff.distill.config
OPTIONS = [
    ("--pipeline", "pipeline", dict(metavar="DIR", help="tokenizer/text encoder/VAE/scheduler source "
                                    "(default: the teacher, when it is a pipeline dir or toy)")),
    ("--caption-column", "caption_column", dict(help="caption column / .json key (default text)")),
    ("--image-column", "image_column", dict(help="imagefolder image column (default file_name)")),
    ("--resolution", "resolution", dict(type=int, help="image size in pixels (default: U-Net sample size x VAE factor)")),
    ("--toy-size", "toy_size", dict(type=int, help="--data toy: number of train scenes (default 4096)")),
    ("--caption-dropout", "caption_dropout", dict(type=float, help="share of empty captions (default 0.1)")),
    ("--cache-dir", "cache_dir", dict(metavar="DIR", help="cache VAE latents and text embeddings here")),
    ("--num-workers", "num_workers", dict(type=int, help="DataLoader workers (default 0)")),
    ("--lambda-task", "lambda_task", dict(type=float, help="task loss weight (default 1)")),
    ("--lambda-out", "lambda_out", dict(type=float, help="output KD weight (default 1)")),
    ("--lambda-feat", "lambda_feat", dict(type=float, help="feature KD weight (default 1)")),
    ("--lambda-mid", "lambda_mid", dict(type=float, help="A-SDM mid-block loss weight (default 0)")),
    ("--lambda-perc", "lambda_perc", dict(type=float, help="A-SDM perceptual loss weight (default 0)")),
    ("--feat-loss", "feat_loss", dict(choices=["plain", "normalized"], help="plain MSE (BK-SDM, default) or "
                                      "normalized ||dF||^2/||F_T||^2 (LAPTOP-Diff)")),
    ("--feat-map", "feat_map", dict(nargs="+", metavar="S=T", help="student=teacher module names for feature KD "
                                    "(a name alone: same on both); default: every down/up block")),
    ("--feat-presampler", "feat_presampler", dict(choices=["proj_out", "unit"], help="bk-tiny down.2 feature: "
                                                  "proj_out (BK-SDM, default) or the last unit's output")),
    ("--feat-kind", "feat_kind", dict(choices=["block", "self_attn"], help="default feature map: block outputs "
                                      "(BK-SDM, default) or every Transformer block's self-attention (KOALA)")),
    ("--perceptual-net", "perceptual_net", dict(choices=["auto", "judge", "vgg16"], help="default auto: the judge "
                                                "on the toy world, else vgg16")),
    ("--perceptual-weights", "perceptual_weights", dict(metavar="FILE", help="torchvision-format VGG16 weights")),
    ("--freeze", "freeze", dict(nargs="+", metavar="NAME", help="units/layers/blocks to keep fixed (default: an "
                                "assembled student's teacher parts; 'none': train everything)")),
    ("--stochastic-depth", "stochastic_depth", dict(type=float, metavar="P", help="SnapFusion robust training: "
                                                    "skip each removable ResNet/attention unit with probability P")),
    ("--max-steps", "max_steps", dict(type=int, help="optimiser steps (default 1000)")),
    ("--batch-size", "batch_size", dict(type=int, help="per process and micro-step (default 8)")),
    ("--lr", "learning_rate", dict(type=float, help="AdamW learning rate (default 5e-5)")),
    ("--weight-decay", "adam_weight_decay", dict(type=float, help="AdamW weight decay (default 0.01)")),
    ("--ema-decay", "ema_decay", dict(type=float, help="EMA of the student weights, e.g. 0.9999 (default off)")),
    ("--gradient-checkpointing", "gradient_checkpointing", dict(action="store_true", default=None)),
    *COMMON_OPTIONS,
    *SPEED_OPTIONS,
]


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "distill", help="distill a teacher U-Net into a (pruned) student",
        description="Knowledge distillation: task + output KD + feature KD (plain or normalized) + A-SDM SAS; "
                    "freezing, stochastic depth, caching, EMA, checkpoints and --resume. Writes the student, "
                    "recipe.json, train_log.jsonl, loss_curves.png and OUT/pipeline/.")
    p.add_argument("--teacher", required=True, help="toy, a pipeline dir or a UNet dir")
    p.add_argument("--student", required=True, help="a `slimdiff prune` output, a UNet dir or a pipeline dir")
    p.add_argument("--data", required=True, help="toy | image folder (metadata.jsonl/.csv) | .tar shard(s)")
    p.add_argument("--out", required=True, help="output directory")
    add_options(p, OPTIONS)
    p.set_defaults(func=run, outputs=("out",),
                   inputs=("teacher", "student", "pipeline", "data", "perceptual_weights"))


def add_options(p: argparse.ArgumentParser, options: list) -> None:
    """Register `(flag, config field, kwargs)` options (default None: the config's own) and --quiet."""
    for flag, field, kwargs in options:
        p.add_argument(flag, dest=field, **{"default": None, **kwargs})
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def option_values(args: argparse.Namespace, options: list) -> dict:
    """The config fields of `options` given on the command line (--max-grad-norm 0: None, no clipping)."""
    values = {field: getattr(args, field) for _, field, _ in options if getattr(args, field) is not None}
    if values.get("max_grad_norm") == 0:
        values["max_grad_norm"] = None
    return values


def parse_feat_map(pairs: list[str]) -> dict[str, str]:
    """["up.0=up.1", "down.0"] -> {"up.0": "up.1", "down.0": "down.0"}."""
    out = {}
    for pair in pairs:
        s, sep, t = pair.partition("=")
        if not s or (sep and not t):
            raise ValueError(f"--feat-map {pair!r}: expected STUDENT=TEACHER (or one name for both)")
        out[s] = t if sep else s
    return out


def config_from_args(args: argparse.Namespace):
    from slimdiff.distill import DistillConfig

    values = {"teacher": args.teacher, "student": args.student, "data": args.data, "out": args.out,
              **option_values(args, OPTIONS)}
    if "feat_map" in values:
        values["feat_map"] = parse_feat_map(values["feat_map"])
    if values.get("freeze") == ["none"]:
        values["freeze"] = []
    return DistillConfig(**values)


def run(args: argparse.Namespace) -> int:
    from slimdiff.distill import distill

    result = distill(config_from_args(args), progress=not args.quiet)
    if result.num_processes == 1 or is_main_process():
        terms = ", ".join(f"{k} {v:.4g}" for k, v in result.losses.items())
        print(f"distilled {result.steps} steps at {result.steps_per_sec:.2f} steps/s ({terms})")
        print(f"student: {result.out}" + (f"  pipeline: {result.pipeline_dir}" if result.pipeline_dir else ""))
    return 0


def is_main_process() -> bool:
    """Whether this is the main process of an `accelerate launch` run (the one that prints)."""
    from accelerate.state import PartialState

    return PartialState().is_main_process
