"""`TrainConfig`: the settings every trainer shares, validated when built.

A method's config subclasses it, adds its own fields (models, data, losses) and may override a
default (e.g. `out`, `learning_rate`). Written as JSON into the output's `recipe.json` and into
every checkpoint, so a run says how it was made and a resumed run can check it continues the
same one (`resume_mismatches`).

The loop also reads a few options a method may offer as fields (`DistillConfig` does: EMA,
logging cadence, profiling); the class attributes below are the loop's behaviour where a method's
config does not declare them.
"""

from __future__ import annotations

import dataclasses
import math
import os
from typing import Any, ClassVar

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


@dataclasses.dataclass
class TrainConfig:
    # --- student and outputs ---------------------------------------------------------------
    out: str = "runs/train"  # output directory: weights, recipe.json, log, plot, checkpoints
    student: str | None = None  # the model to train (a prune output dir); None when passed in memory
    resolution: int | None = None  # image size in pixels; None: the method's default (from the models)

    # --- perceptual term (A-SDM SAS; SnapFusion's decoder) --------------------------------------
    lambda_perc: float = 0.0  # perceptual loss weight (0: off)
    perceptual_net: str = "auto"  # "auto" (the judge on the toy world, else vgg16) | "judge" | "vgg16"
    perceptual_weights: str | None = None  # torchvision-format VGG16 state dict (.pth/.bin/.safetensors)

    # --- optimisation ----------------------------------------------------------------------
    max_steps: int = 1000  # optimiser steps
    batch_size: int = 8  # per process and micro-step; global batch = batch_size x processes x grad_accum
    grad_accum: int = 1  # micro-steps per optimiser step
    learning_rate: float = 5e-5  # AdamW (BK-SDM)
    adam_weight_decay: float = 1e-2  # AdamW default
    lr_scheduler: str = "constant"  # diffusers.optimization name (BK-SDM: constant)
    lr_warmup_steps: int = 0  # linear warm-up, in optimiser steps
    max_grad_norm: float | None = 1.0  # gradient clipping by global norm; None: off
    mixed_precision: str = "no"  # accelerate: "no" (float32, the safe default) | "fp16" | "bf16"
    seed: int = 0  # every random draw of the run derives from it (batches are functions of (seed, step))
    cpu: bool = False  # force the CPU even where an accelerator is available

    # --- bookkeeping -----------------------------------------------------------------------
    checkpoint_every: int = 500  # optimiser steps between checkpoints (0: none)
    checkpoints_keep: int = 2  # newest checkpoints kept on disk
    resume: str | None = None  # "latest" (newest under out/checkpoints) or a checkpoint directory

    # --- loop options a method's config may declare as fields (not fields here) ------------------
    ema_decay: ClassVar[float | None] = None  # EMA of the trainable weights; None: off
    log_every: ClassVar[int] = 1  # steps between host syncs that read the losses
    profile_steps: ClassVar[int] = 0  # time the phases of this many steps -> out/profile.{json,md}

    # settings that may change when a run is resumed (every other one must match the checkpoint's),
    # and the fields compared as real paths
    RESUMABLE_CHANGES: ClassVar[tuple[str, ...]] = ("out", "resume", "checkpoint_every", "checkpoints_keep", "cpu",
                                                    "max_steps")
    PATH_FIELDS: ClassVar[tuple[str, ...]] = ("student", "perceptual_weights")

    def __post_init__(self):
        if not self.out:
            self.invalid("out", "give an output directory")
        for name in ("lambda_perc", "learning_rate", "adam_weight_decay"):
            if not math.isfinite(getattr(self, name)):
                self.invalid(name, "a finite number")
        if self.lambda_perc < 0:
            self.invalid("lambda_perc", "loss weights must be >= 0")
        if self.perceptual_net not in PERCEPTUAL_NETS:
            self.invalid("perceptual_net", f"choose one of {list(PERCEPTUAL_NETS)}")
        self.check_ints(("max_steps", "batch_size", "grad_accum"), 1)
        self.check_ints(("lr_warmup_steps", "checkpoint_every"), 0)
        if self.checkpoints_keep < 1:
            self.invalid("checkpoints_keep", "an integer >= 1")
        if self.resolution is not None and (self.resolution < 8 or self.resolution % 8):
            self.invalid("resolution", "None or a multiple of 8 (pixels)")
        if self.learning_rate <= 0:
            self.invalid("learning_rate", "a positive number")
        if self.lr_scheduler not in LR_SCHEDULERS:
            self.invalid("lr_scheduler", f"choose one of {list(LR_SCHEDULERS)}")
        if self.max_grad_norm is not None and not (math.isfinite(self.max_grad_norm) and self.max_grad_norm > 0):
            self.invalid("max_grad_norm", "a finite positive number, or None for no clipping")
        if self.mixed_precision not in MIXED_PRECISION:
            self.invalid("mixed_precision", f"choose one of {list(MIXED_PRECISION)}")

    def invalid(self, field: str, valid: str):
        """Raise the one-line error of a bad setting: its name, its value and what is valid."""
        raise ValueError(f"{type(self).__name__}.{field}={getattr(self, field)!r} is invalid: {valid}")

    def check_ints(self, names: tuple[str, ...], minimum: int) -> None:
        """Each of `names` is an int >= `minimum`."""
        for name in names:
            if not isinstance(getattr(self, name), int) or getattr(self, name) < minimum:
                self.invalid(name, f"an integer >= {minimum}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]):
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"unknown {cls.__name__} fields {unknown}; valid: {sorted(names)}")
        return cls(**d)

    def resume_mismatches(self, saved: dict[str, Any]) -> list[str]:
        """Fields that differ from a checkpoint's config and would change the run's trajectory.

        `max_steps` may change only with a schedule that does not depend on the total.
        """
        return config_mismatches(self.to_dict(), saved, self.RESUMABLE_CHANGES, self.PATH_FIELDS, self.lr_scheduler)


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
