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

`VaeTrainer` is a method trainer on the training core (`slimdiff.train.loop`: accelerate,
optimiser steps with accumulation, JSONL log, progress bar, loss plot, atomic checkpoints, exact
resume); the latent pool is `slimdiff.vae.latents`'. Batches are pure functions of (seed, step),
so a resumed run sees the batches an uninterrupted one would.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import ClassVar

import torch
from safetensors.torch import load_file
from torch import nn

from slimdiff import __version__
from slimdiff.data.toy import is_toy_source
from slimdiff.distill.losses import mse, perceptual_loss
from slimdiff.distill.perceptual import load_perceptual_net
from slimdiff.train.config import TrainConfig
from slimdiff.train.loop import Trainer, plot_losses
from slimdiff.io import is_pipeline_source
from slimdiff.train.parts import check_path, load_checked, source_path
from slimdiff.vae.latents import LATENT_SOURCES, ensure_pool
from slimdiff.recipe import read_recipe, validate_recipe
from slimdiff.vae.model import check_same_latent_space, load_vae, save_pipeline_with_vae, save_vae
from slimdiff.eval.stats import psnr_per_image


@dataclasses.dataclass
class VaeDistillConfig(TrainConfig):
    """`TrainConfig` (optimisation, bookkeeping, perceptual term) plus the models and latents."""

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

    # --- losses (lambda_perc, perceptual_net, perceptual_weights: TrainConfig) ------------------
    lambda_mse: float = 1.0  # MSE(student image, teacher image), images in [-1, 1]

    # --- optimisation (the rest: TrainConfig) ------------------------------------------------
    learning_rate: float = 1e-4  # AdamW (the paper gives none; 1e-4 is diffusers' VAE fine-tuning default)
    adam_weight_decay: float = 0.0  # no decay: the student starts from inherited weights

    PATH_FIELDS: ClassVar[tuple[str, ...]] = ("teacher", "student", "data", "prompts", "perceptual_weights")

    def __post_init__(self):
        super().__post_init__()
        if self.latents not in LATENT_SOURCES:
            self.invalid("latents", f"choose one of {list(LATENT_SOURCES)}")
        self.check_ints(("num_latents", "eval_latents", "toy_size"), 1)
        if self.gen_steps is not None and self.gen_steps < 1:
            self.invalid("gen_steps", "None or an integer >= 1")
        if self.lambda_mse < 0:
            self.invalid("lambda_mse", "loss weights must be >= 0")
        if self.lambda_mse == 0 and self.lambda_perc == 0:
            raise ValueError("VaeDistillConfig: lambda_mse and lambda_perc are both 0; set one > 0")


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


class Decoding(nn.Module):
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
    return float(psnr_per_image(a, b).mean())  # the project's one PSNR (slimdiff.eval.stats)


@torch.no_grad()
def decoded(decode, z: torch.Tensor, batch_size: int = 16) -> torch.Tensor:
    """`decode(z)` in batches, on CPU float32 (B, 3, H, W)."""
    return torch.cat([decode(z[i:i + batch_size]).float().cpu() for i in range(0, len(z), batch_size)])


def distill_vae(config: VaeDistillConfig, student: nn.Module | None = None, progress: bool = True) -> VaeDistillResult:
    """Distill the teacher decoder into `student` (or `config.student`) as `config` says."""
    return VaeTrainer(config, student, progress).run()


class VaeTrainer(Trainer):
    """Decoder distillation: a micro-batch is a list of rows of the training latents."""

    name = "distill-vae"

    def __init__(self, config: VaeDistillConfig, student=None, progress: bool = True):
        """Numbered-step orchestration of the set-up (each step checks its inputs)."""
        super().__init__(config, progress)
        cfg = self.cfg
        # 1-2. accelerate; outputs apart from the inputs; the resume point (a mismatched config fails first)
        self.start(inputs={f"--{k}": source_path(getattr(cfg, k)) for k in ("teacher", "student")}
                   | {"--data": cfg.data, "--prompts": cfg.prompts, "--perceptual-weights": cfg.perceptual_weights})
        # 3. teacher and student VAEs (checks: paths, a VAE each, same latent space and image channels)
        self._load_models(student)
        # 4. the latent pool: built once by the main process (U-Net generations / encoder latents)
        if self.accelerator.is_main_process:
            self.out.mkdir(parents=True, exist_ok=True)
            ensure_pool(cfg, self.teacher, self.device, self.out / "latents.safetensors", progress)
        self.accelerator.wait_for_everyone()
        pool = load_file(str(self.out / "latents.safetensors"))
        self.train_z, self.eval_z = pool["train"], pool["eval"]  # (N, C, h, w), (E, C, h, w)
        if len(self.train_z) < cfg.batch_size * self.world:
            raise ValueError(f"{len(self.train_z)} training latents, fewer than the global batch "
                             f"{cfg.batch_size * self.world}")
        self.dataset_size = len(self.train_z)
        # 5. perceptual network; 6. frozen teacher, trainable decoding path of the student
        self.perc_net = None
        if cfg.lambda_perc > 0:
            self.perc_net = load_perceptual_net(cfg.perceptual_net, cfg.perceptual_weights, is_toy_source(cfg.teacher))
            self.perc_net.to(self.device, self.dtype).requires_grad_(False).eval()
        self.teacher.requires_grad_(False).eval().to(self.device)
        if self.dtype != torch.float32:
            self.teacher.to(self.dtype)
        self.student.requires_grad_(False).to(self.device)
        decoding = Decoding(self.student).requires_grad_(True).train()
        self.teacher_eval = decoded(self._teacher_decode, self.eval_z)  # (E, 3, H, W)
        self.psnr_before = psnr(decoded(lambda z: decoding(z.to(self.device)), self.eval_z), self.teacher_eval)
        # 7. optimiser, LR schedule; wrap the decoding path; resume (the core's)
        self.prepare(decoding, list(decoding.parameters()))

    def _load_models(self, student) -> None:
        cfg = self.cfg
        check_path("--teacher", cfg.teacher)
        if student is None:
            check_path("--student", cfg.student)
        self.teacher = load_checked("--teacher", cfg.teacher, load_vae)
        if student is None:
            if cfg.student is None:
                raise ValueError("no student: set --student (a `slimdiff prune-vae` output) or pass student=")
            student = load_checked("--student", cfg.student, load_vae)
        if student is self.teacher:
            raise ValueError("teacher and student are the same object; load the student separately")
        if student.config["out_channels"] != self.teacher.config["out_channels"]:
            raise ValueError(f"teacher and student VAEs differ in out_channels: {self.teacher.config['out_channels']} "
                             f"vs {student.config['out_channels']}")
        check_same_latent_space(student.config, self.teacher.config, "the teacher", name="the student")
        self.student = student
        self.input_recipe = read_recipe(cfg.student) if cfg.student else {}

    @torch.no_grad()
    def _teacher_decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.teacher.decode(z.to(self.device, self.dtype)).sample

    def _micro_step(self, rows: list[int], position: int) -> dict[str, torch.Tensor]:
        """Loss terms of one micro-batch: latents z (b, C, h, w) -> images (b, 3, H, W) in [-1, 1]."""
        z = self.train_z[rows].to(self.device)
        with self.accelerator.autocast():
            img_s = self.model(z)
        img_t = self._teacher_decode(z).float()
        terms: dict[str, torch.Tensor] = {}
        if self.cfg.lambda_mse > 0:
            terms["loss_mse"] = mse(img_s, img_t)
        if self.cfg.lambda_perc > 0:
            with self.accelerator.autocast():
                terms["loss_perc"] = perceptual_loss(self.perc_net, (img_s + 1) / 2, (img_t.to(self.dtype) + 1) / 2)
        terms["loss"] = sum({"loss_mse": self.cfg.lambda_mse, "loss_perc": self.cfg.lambda_perc}[k] * v
                            for k, v in terms.items())
        return terms

    def _result(self, decoding: nn.Module, losses: dict, steps_per_sec: float, log_path: Path) -> VaeDistillResult:
        """The VAE + recipe.json, loss curves and, for a pipeline teacher, out/pipeline (main process)."""
        cfg = self.cfg
        student = self.student.eval()
        psnr_after = psnr(decoded(lambda z: decoding(z.to(self.device)), self.eval_z), self.teacher_eval)
        pipeline_dir = None
        if self.accelerator.is_main_process:
            recipe = {k: v for k, v in self.input_recipe.items() if k != "vae_class"}
            recipe["distill_vae"] = {
                "config": cfg.to_dict(), "teacher": cfg.teacher,
                "student_init": cfg.student if cfg.student is not None else "in memory",
                "train_latents": len(self.train_z), "eval_latents": len(self.eval_z),
                "psnr_vs_teacher_db": {"before": self.psnr_before, "after": psnr_after},
                "final_losses": losses, "steps": cfg.max_steps, "steps_per_sec": steps_per_sec,
                "num_processes": self.world, "global_batch": cfg.batch_size * self.world * cfg.grad_accum,
                "slimdiff_version": __version__,
            }
            save_vae(student, self.out, recipe=validate_recipe(recipe))
            plot_losses(log_path, self.out / "loss_curves.png", sorted(losses))
            if is_pipeline_source(cfg.teacher):
                pipeline_dir = save_pipeline_with_vae(cfg.teacher, student, self.out / "pipeline")
        return VaeDistillResult(student=student, out=self.out, steps=cfg.max_steps, losses=losses,
                                psnr_before=self.psnr_before, psnr_after=psnr_after, steps_per_sec=steps_per_sec,
                                log_path=log_path, pipeline_dir=pipeline_dir)
