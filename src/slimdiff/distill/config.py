"""`DistillConfig`: every setting of a distillation run, validated when built.

Written as JSON into the output's `recipe.json` (under `distill.config`) and into every
checkpoint, so a run says how it was made and a resumed run can check it continues the same one.
Defaults follow BK-SDM (METHODS.md section 2) unless a comment says otherwise.
"""

from __future__ import annotations

import dataclasses
import math
import os
from typing import Any

FEAT_LOSSES = ("plain", "normalized")  # BK-SDM sum_k MSE | LAPTOP-Diff sum_k ||dF||^2 / ||F_T||^2
PERCEPTUAL_NETS = ("auto", "judge", "vgg16")  # auto: the judge for the toy world, else vgg16
MIXED_PRECISION = ("no", "fp16", "bf16")
LR_SCHEDULERS = (  # diffusers.optimization.SchedulerType values
    "linear",
    "cosine",
    "cosine_with_restarts",
    "polynomial",
    "constant",
    "constant_with_warmup",
    "piecewise_constant",
)
PATH_FIELDS = ("teacher", "student", "pipeline", "data", "perceptual_weights")  # compared as real paths
# settings that may change when a run is resumed; every other one must match the checkpoint's
RESUMABLE_CHANGES = ("out", "resume", "checkpoint_every", "checkpoints_keep", "num_workers", "cache_dir",
                     "batch_size", "cpu", "max_steps", "prefetch_factor", "pin_memory", "memory_cache",
                     "memory_cache_mb", "teacher_inference_mode", "log_every", "profile_steps")


@dataclasses.dataclass
class DistillConfig:
    # --- models and data ------------------------------------------------------------------
    teacher: str | None = "toy"  # anything `load_unet` accepts; None when passed in memory
    student: str | None = None  # anything `load_unet` accepts (a prune output dir); None when in memory
    data: str = "toy"  # "toy" | image folder (metadata.jsonl/.csv) | *.tar shard(s) (file, dir, glob, {a..b})
    out: str = "runs/distill"  # output directory: student, recipe.json, log, plot, checkpoints, pipeline/
    pipeline: str | None = None  # tokenizer/text encoder/VAE/scheduler source; None: the teacher (pipeline dir or toy)
    caption_column: str = "text"  # metadata column (imagefolder) or .json key (webdataset) holding captions
    image_column: str = "file_name"  # imagefolder column with the image path (the HF imagefolder convention)
    resolution: int | None = None  # training image size in pixels; None: unet sample_size x VAE scale factor
    toy_size: int = 4096  # --data toy: number of distinct train-split scenes (rendered on the fly)
    caption_dropout: float = 0.1  # probability a caption is replaced by "" (SD-1.x trained CFG with 0.1; BK-SDM: 0)
    cache_dir: str | None = None  # cache VAE latent moments + text embeddings here; None: encode every step
    num_workers: int = 0  # DataLoader worker processes (0: load in the training process)
    prefetch_factor: int = 2  # batches each worker loads ahead (torch's default; used when num_workers > 0)
    pin_memory: bool = False  # page-locked host batches for faster copies to a GPU (no effect on the CPU)
    # keep the encodings in RAM when the run revisits the data and no cache_dir is given (exact: the
    # same values as --cache-dir); "off": encode every step; up to memory_cache_mb MiB per process
    memory_cache: str = "auto"
    memory_cache_mb: int = 2048

    # --- losses (METHODS.md sections 2-4) ---------------------------------------------------
    lambda_task: float = 1.0  # MSE(pred_S, target), target from the scheduler's prediction_type
    lambda_out: float = 1.0  # output KD: MSE(pred_S, pred_T)
    lambda_feat: float = 1.0  # feature KD at the mapped features (default: every down and up block output)
    lambda_mid: float = 0.0  # A-SDM SAS: loss on the mid-block output (0: off)
    lambda_perc: float = 0.0  # A-SDM SAS: perceptual loss on decoded x0 estimates (0: off)
    feat_loss: str = "plain"  # "plain" (BK-SDM) | "normalized" (LAPTOP-Diff); also used by the mid loss
    feat_map: dict[str, str] | None = None  # student name -> teacher name; None: block map (recipe/inheritance)
    feat_presampler: str = "proj_out"  # blocks differing in sampler (bk-tiny down.2): "proj_out" (BK-SDM) | "unit"
    perceptual_net: str = "auto"  # "auto" | "judge" (toy judge features) | "vgg16" (needs perceptual_weights)
    perceptual_weights: str | None = None  # torchvision-format VGG16 state dict (.pth/.bin/.safetensors)

    # --- trainable set ---------------------------------------------------------------------
    # units/layers/blocks kept fixed (incubation); None: the student recipe's `assemble.freeze`
    # (an assembled student's teacher-sourced parts, A-SDM 2.2), else nothing; []: nothing
    freeze: list[str] | None = None
    stochastic_depth: float = 0.0  # SnapFusion robust training: skip prob. per removable ResNet/attn unit per step

    # --- optimisation ----------------------------------------------------------------------
    max_steps: int = 1000  # optimiser steps
    batch_size: int = 8  # per process and micro-step; global batch = batch_size x processes x grad_accum
    grad_accum: int = 1  # micro-steps per optimiser step
    learning_rate: float = 5e-5  # BK-SDM
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_weight_decay: float = 1e-2  # AdamW default
    adam_epsilon: float = 1e-8
    lr_scheduler: str = "constant"  # diffusers.optimization name (BK-SDM: constant)
    lr_warmup_steps: int = 0  # linear warm-up, in optimiser steps
    max_grad_norm: float | None = 1.0  # gradient clipping by global norm; None: off
    mixed_precision: str = "no"  # accelerate: "no" (float32, the safe default) | "fp16" | "bf16"
    ema_decay: float | None = None  # EMA of the student weights (e.g. 0.9999); None: off
    gradient_checkpointing: bool = False  # recompute student activations in backward (less memory)
    seed: int = 0  # data order, noise, timesteps, caption dropout and stochastic depth derive from it
    cpu: bool = False  # force the CPU even where an accelerator is available

    # --- speed (slimdiff.distill.speed; docs/bench/distill_throughput.md) -------------------------
    teacher_inference_mode: bool = True  # teacher under torch.inference_mode, no autograd state (exact)
    teacher_dtype: str = "fp32"  # teacher autocast "fp32" | "bf16" | "fp16" (bf16/fp16 change numerics)
    compile: bool = False  # torch.compile student and teacher (changes numerics slightly; pays compile time)
    compile_backend: str = "inductor"  # torch.compile backend (inductor needs a C++ compiler on the CPU)
    channels_last: bool = False  # NHWC weights and inputs (float32, rounding-level); off: no gain measured on CPU
    adamw: str = "fused"  # AdamW implementation "loop" | "foreach" | "fused" (same rule, rounding level)
    log_every: int = 1  # steps between host syncs that read the losses (the log still has every step)
    profile_steps: int = 0  # time each phase of this many steps (after the first) -> out/profile.{json,md}

    # --- bookkeeping -----------------------------------------------------------------------
    checkpoint_every: int = 500  # optimiser steps between checkpoints (0: none)
    checkpoints_keep: int = 2  # newest checkpoints kept on disk
    resume: str | None = None  # "latest" (newest under out/checkpoints) or a checkpoint directory

    def __post_init__(self):
        def bad(field: str, valid: str):
            raise ValueError(f"DistillConfig.{field}={getattr(self, field)!r} is invalid: {valid}")

        if not isinstance(self.data, str) or not self.data:
            bad("data", "give 'toy', an image folder or webdataset .tar shard(s)")
        if not self.out:
            bad("out", "give an output directory")
        for name in ("lambda_task", "lambda_out", "lambda_feat", "lambda_mid", "lambda_perc", "learning_rate",
                     "adam_weight_decay", "adam_epsilon", "caption_dropout", "stochastic_depth"):
            if not math.isfinite(getattr(self, name)):
                bad(name, "a finite number")
        if self.max_grad_norm is not None and not math.isfinite(self.max_grad_norm):
            bad("max_grad_norm", "a finite positive number, or None for no clipping")
        for name in ("lambda_task", "lambda_out", "lambda_feat", "lambda_mid", "lambda_perc"):
            if getattr(self, name) < 0:
                bad(name, "loss weights must be >= 0")
        self._check_loss_weights()
        if self.feat_loss not in FEAT_LOSSES:
            bad("feat_loss", f"choose one of {list(FEAT_LOSSES)}")
        if self.feat_presampler not in ("proj_out", "unit"):
            bad("feat_presampler", "choose 'proj_out' (BK-SDM) or 'unit'")
        if self.perceptual_net not in PERCEPTUAL_NETS:
            bad("perceptual_net", f"choose one of {list(PERCEPTUAL_NETS)}")
        if self.feat_map is not None:
            if not isinstance(self.feat_map, dict) or not self.feat_map:
                bad("feat_map", "give a non-empty dict student name -> teacher name, or None for the block map")
            if not all(isinstance(k, str) and k and isinstance(v, str) and v for k, v in self.feat_map.items()):
                bad("feat_map", "names must be non-empty strings")
        if self.freeze is not None:
            if isinstance(self.freeze, str) or not all(isinstance(n, str) and n for n in self.freeze):
                bad("freeze", "give a list of unit, layer or block names, or None for the recipe's default")
            self.freeze = list(self.freeze)
        if not 0.0 <= self.stochastic_depth < 1.0:
            bad("stochastic_depth", "a probability in [0, 1)")
        if not 0.0 <= self.caption_dropout < 1.0:
            bad("caption_dropout", "a probability in [0, 1)")
        for name in ("max_steps", "batch_size", "grad_accum", "toy_size"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                bad(name, "an integer >= 1")
        for name in ("lr_warmup_steps", "checkpoint_every", "num_workers", "memory_cache_mb", "profile_steps"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 0:
                bad(name, "an integer >= 0")
        for name in ("prefetch_factor", "log_every"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                bad(name, "an integer >= 1")
        if self.memory_cache not in ("auto", "off"):
            bad("memory_cache", "choose 'auto' or 'off'")
        if self.teacher_dtype not in ("fp32", "bf16", "fp16"):
            bad("teacher_dtype", "choose one of ['fp32', 'bf16', 'fp16']")
        if self.teacher_dtype != "fp32" and self.mixed_precision != "no":
            bad("teacher_dtype", "use either --teacher-dtype or --mixed-precision (which casts the teacher too)")
        if self.adamw not in ("loop", "foreach", "fused"):
            bad("adamw", "choose one of ['loop', 'foreach', 'fused']")
        if not isinstance(self.compile_backend, str) or not self.compile_backend:
            bad("compile_backend", "a torch.compile backend name, e.g. 'inductor'")
        if self.checkpoints_keep < 1:
            bad("checkpoints_keep", "an integer >= 1")
        if self.resolution is not None and (self.resolution < 8 or self.resolution % 8):
            bad("resolution", "None or a multiple of 8 (pixels)")
        if self.learning_rate <= 0:
            bad("learning_rate", "a positive number")
        if not (0 <= self.adam_beta1 < 1 and 0 <= self.adam_beta2 < 1):
            bad("adam_beta1" if not 0 <= self.adam_beta1 < 1 else "adam_beta2", "in [0, 1)")
        if self.lr_scheduler not in LR_SCHEDULERS:
            bad("lr_scheduler", f"choose one of {list(LR_SCHEDULERS)}")
        if self.max_grad_norm is not None and self.max_grad_norm <= 0:
            bad("max_grad_norm", "a positive number, or None for no clipping")
        if self.mixed_precision not in MIXED_PRECISION:
            bad("mixed_precision", f"choose one of {list(MIXED_PRECISION)}")
        if self.ema_decay is not None and not 0.0 < self.ema_decay < 1.0:
            bad("ema_decay", "None or in (0, 1), e.g. 0.9999")

    def _check_loss_weights(self) -> None:
        """At least one loss term is on (a subclass with its own loss overrides this)."""
        if not any(getattr(self, n) > 0 for n in ("lambda_task", "lambda_out", "lambda_feat", "lambda_mid",
                                                   "lambda_perc")):
            raise ValueError(f"{type(self).__name__}: every loss weight is 0; set at least one of lambda_task, "
                             f"lambda_out, lambda_feat, lambda_mid, lambda_perc > 0")

    @property
    def needs_teacher(self) -> bool:
        """Whether any loss term needs the teacher's forward pass."""
        return any(w > 0 for w in (self.lambda_out, self.lambda_feat, self.lambda_mid, self.lambda_perc))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "DistillConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"unknown DistillConfig fields {unknown}; valid: {sorted(names)}")
        return cls(**d)

    def resume_mismatches(self, saved: dict[str, Any]) -> list[str]:
        """Fields that differ from a checkpoint's config and would change the run's trajectory.

        `max_steps` may change only with a schedule that does not depend on the total.
        """
        return config_mismatches(self.to_dict(), saved, RESUMABLE_CHANGES, PATH_FIELDS, self.lr_scheduler)


def config_mismatches(mine: dict[str, Any], saved: dict[str, Any], resumable: tuple[str, ...],
                      path_fields: tuple[str, ...], lr_scheduler: str) -> list[str]:
    """The settings of `mine` that differ from a checkpoint's `saved` ones, except `resumable`
    (`max_steps` only with a constant schedule); `path_fields` are compared as real paths."""
    allowed = set(resumable)
    if lr_scheduler not in ("constant", "constant_with_warmup"):
        allowed.discard("max_steps")

    def same(k):
        a, b = saved.get(k), mine[k]
        if k in path_fields and isinstance(a, str) and isinstance(b, str):
            return os.path.realpath(a) == os.path.realpath(b)
        return a == b

    return [f"{k}: checkpoint {saved.get(k)!r}, now {mine[k]!r}" for k in mine if k not in allowed and not same(k)]
