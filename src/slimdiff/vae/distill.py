"""Decoder distillation: a pruned VAE decoder learns the teacher decoder's images.

    from slimdiff.vae.distill import VaeDistillConfig, distill_vae
    result = distill_vae(VaeDistillConfig(teacher="toy", student="runs/vae-half", out="runs/vae-half-kd"))
    result.psnr_before, result.psnr_after          # dB against the teacher decoder, held-out latents

SnapFusion (METHODS.md section 5) distils the pruned decoder on (latent from the U-Net generating
an image from a prompt -> the teacher decoder's image of it) pairs. `latents="unet"` does that:
`num_latents + eval_latents` latents are generated once with the teacher pipeline (image i from
prompt i with noise seeded `seed + i`, the pipeline's sampler and guidance) and stored in
`out/latents.safetensors`; `latents="data"` takes the teacher *encoder*'s latents of data images
instead (one posterior sample each, seeded); `"both"` pools the two. Loss per micro-batch of
latents z (B, C, h, w):
    L = lambda_mse * MSE(D_S(z), D_T(z)) + lambda_perc * sum_l MSE(phi_l(x_S), phi_l(x_T))
on images in [-1, 1] (phi: the toy judge's features on the toy world, else VGG16 from a local file,
on images in [0, 1]). The student's post_quant_conv and decoder are trained; its encoder is the
teacher's, frozen. The last `eval_latents` latents of the pool are held out and give the
decoder PSNR against the teacher before and after training.

The loop is the distillation trainer's (`slimdiff.distill.trainer`: accelerate, optimiser steps
with accumulation, JSONL log, progress bar, loss plot; `slimdiff.distill.checkpoint`: atomic
checkpoints, exact resume). Batches are pure functions of (seed, step), so a resumed run sees the
batches an uninterrupted one would.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from slimdiff.distill.config import LR_SCHEDULERS, MIXED_PRECISION, PERCEPTUAL_NETS, config_mismatches

LATENT_SOURCES = ("unet", "data", "both")
PATH_FIELDS = ("teacher", "student", "data", "prompts", "perceptual_weights")
RESUMABLE_CHANGES = ("out", "resume", "checkpoint_every", "checkpoints_keep", "cpu", "max_steps")


@dataclasses.dataclass
class VaeDistillConfig:
    # --- models and latents ---------------------------------------------------------------
    student: str | None = None  # a prune-vae output (anything load_vae takes); None when passed in memory
    teacher: str = "toy"  # pipeline (toy | directory): teacher VAE, and the U-Net/prompts for latents="unet"
    out: str = "runs/distill-vae"  # output: VAE, recipe.json, latents, log, plot, checkpoints, pipeline/
    latents: str = "unet"  # "unet" (SnapFusion: U-Net-generated) | "data" (encoder of data images) | "both"
    num_latents: int = 256  # training latents (per source); generated / encoded once
    eval_latents: int = 16  # held-out latents (per source) for the PSNR against the teacher decoder
    prompts: str | None = None  # latents="unet": prompts file (one a line); None: toy-world train captions
    gen_steps: int | None = None  # sampler steps for the U-Net latents; None: 20 on the toy world, else 25
    guidance: float | None = None  # CFG scale for them; None: 5.0 on the toy world, else 7.5
    data: str = "toy"  # latents="data": "toy" | image folder | webdataset shard(s)
    toy_size: int = 4096  # data="toy": distinct train-split scenes
    resolution: int | None = None  # data images' size; None: the teacher VAE's sample_size

    # --- losses ----------------------------------------------------------------------------
    lambda_mse: float = 1.0  # MSE(student image, teacher image), images in [-1, 1]
    lambda_perc: float = 0.0  # perceptual term on the two images (0: off)
    perceptual_net: str = "auto"  # "auto" (judge on the toy world, else vgg16) | "judge" | "vgg16"
    perceptual_weights: str | None = None  # torchvision-format VGG16 state dict for perceptual_net="vgg16"

    # --- optimisation ----------------------------------------------------------------------
    max_steps: int = 1000  # optimiser steps
    batch_size: int = 8  # latents per process and micro-step
    grad_accum: int = 1  # micro-steps per optimiser step
    learning_rate: float = 1e-4  # AdamW (the paper gives none; 1e-4 is diffusers' VAE fine-tuning default)
    adam_weight_decay: float = 0.0  # no decay: the student starts from inherited weights
    lr_scheduler: str = "constant"  # diffusers.optimization name
    lr_warmup_steps: int = 0  # linear warm-up, in optimiser steps
    max_grad_norm: float | None = 1.0  # gradient clipping by global norm; None: off
    mixed_precision: str = "no"  # accelerate: "no" (float32, the safe default) | "fp16" | "bf16"
    seed: int = 0  # latents (prompts, noise), batch order
    cpu: bool = False  # force the CPU even where an accelerator is available

    # --- bookkeeping -----------------------------------------------------------------------
    checkpoint_every: int = 500  # optimiser steps between checkpoints (0: none)
    checkpoints_keep: int = 2  # newest checkpoints kept
    resume: str | None = None  # "latest" or a checkpoint directory

    def __post_init__(self):
        def bad(field: str, valid: str):
            raise ValueError(f"VaeDistillConfig.{field}={getattr(self, field)!r} is invalid: {valid}")

        if self.latents not in LATENT_SOURCES:
            bad("latents", f"choose one of {list(LATENT_SOURCES)}")
        for name in ("num_latents", "eval_latents", "max_steps", "batch_size", "grad_accum", "toy_size"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                bad(name, "an integer >= 1")
        for name in ("lr_warmup_steps", "checkpoint_every"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 0:
                bad(name, "an integer >= 0")
        if self.gen_steps is not None and self.gen_steps < 1:
            bad("gen_steps", "None or an integer >= 1")
        if self.checkpoints_keep < 1:
            bad("checkpoints_keep", "an integer >= 1")
        for name in ("lambda_mse", "lambda_perc"):
            if getattr(self, name) < 0:
                bad(name, "loss weights must be >= 0")
        if self.lambda_mse == 0 and self.lambda_perc == 0:
            raise ValueError("VaeDistillConfig: lambda_mse and lambda_perc are both 0; set one > 0")
        if self.perceptual_net not in PERCEPTUAL_NETS:
            bad("perceptual_net", f"choose one of {list(PERCEPTUAL_NETS)}")
        if self.learning_rate <= 0:
            bad("learning_rate", "a positive number")
        if self.lr_scheduler not in LR_SCHEDULERS:
            bad("lr_scheduler", f"choose one of {list(LR_SCHEDULERS)}")
        if self.mixed_precision not in MIXED_PRECISION:
            bad("mixed_precision", f"choose one of {list(MIXED_PRECISION)}")
        if self.max_grad_norm is not None and self.max_grad_norm <= 0:
            bad("max_grad_norm", "a positive number, or None for no clipping")
        if self.resolution is not None and (self.resolution < 8 or self.resolution % 8):
            bad("resolution", "None or a multiple of 8 (pixels)")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def resume_mismatches(self, saved: dict[str, Any]) -> list[str]:
        return config_mismatches(self.to_dict(), saved, RESUMABLE_CHANGES, PATH_FIELDS, self.lr_scheduler)


@dataclasses.dataclass
class VaeDistillResult:
    student: nn.Module  # the distilled VAE (unwrapped, eval mode)
    out: Path
    steps: int  # optimiser steps done in total
    losses: dict[str, float]  # the last step's terms
    psnr_before: float  # dB, student vs teacher decoder on the held-out latents, before training
    psnr_after: float  # the same after
    steps_per_sec: float
    log_path: Path
    pipeline_dir: Path | None  # out/pipeline: the teacher pipeline with the distilled VAE


class _Decoding(nn.Module):
    """What decoding runs: z (B, C, h, w) -> post_quant_conv -> decoder -> image (B, 3, H, W).
    The one module the optimiser and accelerate see (the encoder is not in it)."""

    def __init__(self, vae):
        super().__init__()
        self.post_quant_conv, self.decoder = vae.post_quant_conv or nn.Identity(), vae.decoder

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.post_quant_conv(z))


def psnr(images: torch.Tensor, reference: torch.Tensor) -> float:
    """Mean PSNR in dB of images in [-1, 1] (clamped, as a pipeline shows them) against a reference."""
    a, b = ((images.float().clamp(-1, 1) + 1) / 2), ((reference.float().clamp(-1, 1) + 1) / 2)
    mse = ((a - b) ** 2).flatten(1).mean(1).clamp_min(1e-12)  # (B,)
    return float((10 * torch.log10(1.0 / mse)).mean())


@torch.no_grad()
def decoded(decode, z: torch.Tensor, batch_size: int = 16) -> torch.Tensor:
    """`decode(z)` in batches, on CPU float32 (B, 3, H, W)."""
    return torch.cat([decode(z[i:i + batch_size]).float().cpu() for i in range(0, len(z), batch_size)])


def distill_vae(config: VaeDistillConfig, student: nn.Module | None = None, progress: bool = True) -> VaeDistillResult:
    """Distill the teacher decoder into `student` (or `config.student`) as `config` says."""
    from slimdiff.vae.trainer import VaeTrainer  # accelerate is imported there

    return VaeTrainer(config, student, progress).run()
