"""`DistillConfig`: every setting of a knowledge-distillation run, validated when built.

`slimdiff.train.TrainConfig` (optimisation, bookkeeping, perceptual term) plus the models, data,
KD losses, trainable set and speed options. Written as JSON into the output's `recipe.json`
(under `distill.config`) and into every checkpoint. Defaults follow BK-SDM (METHODS.md
section 2) unless a comment says otherwise.
"""

from __future__ import annotations

import dataclasses
import math
from typing import ClassVar

from slimdiff.train.config import TrainConfig

FEAT_LOSSES = ("plain", "normalized")  # BK-SDM sum_k MSE | LAPTOP-Diff sum_k ||dF||^2 / ||F_T||^2
FEAT_KINDS = ("block", "self_attn")  # the default feature map: BK-SDM's block outputs | KOALA's self-attentions


KD_WEIGHTS = ("lambda_task", "lambda_out", "lambda_feat", "lambda_mid", "lambda_perc")  # the KD loss terms


@dataclasses.dataclass
class DistillConfig(TrainConfig):
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
    feat_loss: str = "plain"  # "plain" (BK-SDM) | "normalized" (LAPTOP-Diff); also used by the mid loss
    feat_map: dict[str, str] | None = None  # student name -> teacher name; None: block map (recipe/inheritance)
    feat_presampler: str = "proj_out"  # blocks differing in sampler (bk-tiny down.2): "proj_out" (BK-SDM) | "unit"
    # default feature map: "block" every down/up block's output (BK-SDM) | "self_attn" every Transformer
    # block's self-attention output, paired through the inheritance (KOALA, arXiv 2312.04005, section 3.2)
    feat_kind: str = "block"

    # --- trainable set ---------------------------------------------------------------------
    # units/layers/blocks kept fixed (incubation); None: the student recipe's `assemble.freeze`
    # (an assembled student's teacher-sourced parts, A-SDM 2.2), else nothing; []: nothing
    freeze: list[str] | None = None
    stochastic_depth: float = 0.0  # SnapFusion robust training: skip prob. per removable ResNet/attn unit per step

    # --- optimisation (the rest: TrainConfig) ------------------------------------------------
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_epsilon: float = 1e-8
    ema_decay: float | None = None  # EMA of the student weights (e.g. 0.9999); None: off
    gradient_checkpointing: bool = False  # recompute student activations in backward (less memory)

    # --- speed (slimdiff.train.speed; docs/bench/distill_throughput.md) ---------------------------
    teacher_inference_mode: bool = True  # teacher under torch.inference_mode, no autograd state (exact)
    teacher_dtype: str = "fp32"  # teacher autocast "fp32" | "bf16" | "fp16" (bf16/fp16 change numerics)
    compile: bool = False  # torch.compile student and teacher (changes numerics slightly; pays compile time)
    compile_backend: str = "inductor"  # torch.compile backend (inductor needs a C++ compiler on the CPU)
    channels_last: bool = False  # NHWC weights and inputs (float32, rounding-level); off: no gain measured on CPU
    adamw: str = "fused"  # AdamW implementation "loop" | "foreach" | "fused" (same rule, rounding level)
    log_every: int = 1  # steps between host syncs that read the losses (the log still has every step)
    profile_steps: int = 0  # time each phase of this many steps (after the first) -> out/profile.{json,md}

    PATH_FIELDS: ClassVar[tuple[str, ...]] = ("teacher", "student", "pipeline", "data", "perceptual_weights")
    RESUMABLE_CHANGES: ClassVar[tuple[str, ...]] = (
        "out", "resume", "checkpoint_every", "checkpoints_keep", "num_workers", "cache_dir", "batch_size", "cpu",
        "max_steps", "prefetch_factor", "pin_memory", "memory_cache", "memory_cache_mb", "teacher_inference_mode",
        "log_every", "profile_steps")

    def __post_init__(self):
        super().__post_init__()
        bad = self.invalid
        if not isinstance(self.data, str) or not self.data:
            bad("data", "give 'toy', an image folder or webdataset .tar shard(s)")
        for name in ("lambda_task", "lambda_out", "lambda_feat", "lambda_mid", "adam_epsilon", "caption_dropout",
                     "stochastic_depth"):
            if not math.isfinite(getattr(self, name)):
                bad(name, "a finite number")
        for name in ("lambda_task", "lambda_out", "lambda_feat", "lambda_mid"):
            if getattr(self, name) < 0:
                bad(name, "loss weights must be >= 0")
        self._check_loss_weights()
        if self.feat_loss not in FEAT_LOSSES:
            bad("feat_loss", f"choose one of {list(FEAT_LOSSES)}")
        if self.feat_presampler not in ("proj_out", "unit"):
            bad("feat_presampler", "choose 'proj_out' (BK-SDM) or 'unit'")
        if self.feat_kind not in FEAT_KINDS:
            bad("feat_kind", f"choose one of {list(FEAT_KINDS)} (block outputs, BK-SDM; self-attention outputs, KOALA)")
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
        self.check_ints(("toy_size", "prefetch_factor", "log_every"), 1)
        self.check_ints(("num_workers", "memory_cache_mb", "profile_steps"), 0)
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
        if not (0 <= self.adam_beta1 < 1 and 0 <= self.adam_beta2 < 1):
            bad("adam_beta1" if not 0 <= self.adam_beta1 < 1 else "adam_beta2", "in [0, 1)")
        if self.ema_decay is not None and not 0.0 < self.ema_decay < 1.0:
            bad("ema_decay", "None or in (0, 1), e.g. 0.9999")

    def _check_loss_weights(self) -> None:
        """At least one loss term is on (a subclass with its own loss overrides this)."""
        if not any(getattr(self, n) > 0 for n in KD_WEIGHTS):
            raise ValueError(f"{type(self).__name__}: every loss weight is 0; set at least one of lambda_task, "
                             f"lambda_out, lambda_feat, lambda_mid, lambda_perc > 0")

    def _refuse_kd_weights(self, names: tuple[str, ...], why: str) -> None:
        """For a trainer with its own loss: the KD weights `names` must all be 0 (`why`: what it trains on)."""
        extra = {n: getattr(self, n) for n in names}
        if any(v != 0 for v in extra.values()):
            raise ValueError(f"{type(self).__name__}: {extra} must all be 0; {why}")

    def _check_guidance_range(self, hint: str = "") -> None:
        """`guidance_min`/`guidance_max` (both or neither, 1 <= min <= max) and `guidance` (None or >= 1), for the
        few-step trainers that have them."""
        lo, hi = self.guidance_min, self.guidance_max
        if (lo is None) != (hi is None) or (lo is not None and not 1.0 <= lo <= hi):
            raise ValueError(f"{type(self).__name__} guidance range [{lo}, {hi}] is invalid: give both or neither, "
                             f"1 <= guidance_min <= guidance_max{hint}")
        if self.guidance is not None and self.guidance < 1.0:
            raise ValueError(f"{type(self).__name__}.guidance={self.guidance!r} is invalid: None or >= 1 "
                             f"(1: no guidance)")

    @property
    def needs_teacher(self) -> bool:
        """Whether any loss term needs the teacher's forward pass."""
        return any(w > 0 for w in (self.lambda_out, self.lambda_feat, self.lambda_mid, self.lambda_perc))
