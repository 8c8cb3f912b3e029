"""Knowledge distillation (METHODS.md sections 2-5) as a method trainer on the training core.

    from slimdiff.distill import DistillConfig, distill
    result = distill(DistillConfig(teacher="toy", student="runs/bk-small", out="runs/kd", max_steps=2000))
    result.student, result.steps_per_sec, result.losses

One step: task loss + output KD + feature KD (plain | normalized) + A-SDM SAS (mid block,
perceptual), with frozen parts (incubation) and stochastic depth. The loop, resume, checkpoints,
EMA, log and multi-process are `slimdiff.train.loop`'s. The student is the only wrapped model;
the teacher is frozen, cast to the mixed-precision dtype and never wrapped; feature hooks sit on
unwrapped modules. A guidance-embedded teacher (LCM-style `time_cond_proj_dim`) and its student
both read emb(w - 1) with w ~ U[2, 14] drawn per example, as step distillation trains them. An SDXL
pipeline's pooled text and time ids reach teacher and student with the text (`text.kwargs()`).
"""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path
from typing import Any

import torch
from torch import nn

from slimdiff import __version__
from slimdiff.data import build_dataset
from slimdiff.data.toy import WORLD
from slimdiff.distill.config import DistillConfig
from slimdiff.distill.features import (FeatureRecorder, check_shapes, default_feature_map, resolve_block_map,
                                       self_attention_map)
from slimdiff.distill.losses import feature_distance, feature_kd, mse, perceptual_loss
from slimdiff.distill.perceptual import load_perceptual_net
from slimdiff.distill.stochastic_depth import StochasticDepth
from slimdiff.recipe import validate_recipe
from slimdiff.train import speed
from slimdiff.train.batches import LatentBatches
from slimdiff.train.loop import DEPTH_STREAM, Trainer, plot_losses, random_generator
from slimdiff.train.maths import GUIDANCE_RANGE, embed_dim, guidance_embedding, task_target, x0_estimate
from slimdiff.train.parts import CallerState, Parts, load_parts, noise_scheduler, save_pipeline, source_path
from slimdiff.unet import get_module, save_unet

@dataclasses.dataclass
class DistillResult:
    student: nn.Module  # the trained student, unwrapped, eval mode (EMA weights when EMA is on)
    out: Path  # output directory
    steps: int  # optimiser steps done, in total (a resumed run counts the earlier ones)
    losses: dict[str, float]  # the last logged step's terms
    steps_per_sec: float  # optimiser steps per second of this run's loop (set-up excluded)
    log_path: Path  # JSONL: one record per step with every loss term
    plot_path: Path | None  # loss-curve PNG
    pipeline_dir: Path | None  # out/pipeline when the teacher came with a pipeline
    feature_map: dict[str, str]  # student feature -> teacher feature used by feature KD
    trainable_params: int  # parameters (elements) the optimiser updated
    num_processes: int


def distill(config: DistillConfig, teacher: nn.Module | None = None, student: nn.Module | None = None,
            pipeline: Any = None, progress: bool = True) -> DistillResult:
    """Distill `teacher` into `student` as `config` says; write the outputs into `config.out`.

    `teacher`, `student` (U-Nets) and `pipeline` (a `StableDiffusionPipeline` providing tokenizer,
    text encoder, VAE and schedule) may be passed in memory; otherwise they are loaded from
    `config.teacher` / `config.student` / `config.pipeline`. An in-memory student is trained in
    place and returned in eval mode (its `requires_grad` flags as they were); an in-memory teacher
    and pipeline come back as they were (training flag, `requires_grad`, device), also when the
    run raises, and no feature hook or stochastic-depth patch is left on any model.
    Bad input raises ValueError/FileNotFoundError before the first step.
    """
    return KdTrainer(config, teacher, student, pipeline, progress).run()


class KdTrainer(Trainer):
    """One distillation run: `KdTrainer(config, ...).run()`. The caller's in-memory teacher and
    pipeline parts come back unchanged (mode, requires_grad, device) when `run()` returns or
    raises, and no hook or stochastic-depth patch outlives a failed set-up or run."""

    name = "distill"

    def __init__(self, config: DistillConfig, teacher=None, student=None, pipeline=None, progress: bool = True):
        super().__init__(config, progress)
        self._caller = CallerState([teacher, *(getattr(pipeline, k, None) for k in ("vae", "text_encoder",
                                                                                    "text_encoder_2"))], student)
        self.s_rec = self.t_rec = self.stochastic = None
        self.student = student
        try:
            self._setup(teacher, student, pipeline)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Remove the feature hooks and stochastic-depth patches; restore the caller's modules."""
        for m in (getattr(self, "teacher", None), self.student):
            if isinstance(m, nn.Module):
                self._finalize(m)  # the caller's modules come back unpatched and contiguous
                if self.cfg.compile:
                    m._compiled_call_impl = None  # undo nn.Module.compile(): plain eager calls again
        self._caller.restore()

    def _setup(self, teacher, student, pipeline) -> None:
        """Numbered-step orchestration of the set-up (each step checks its inputs; see the comments)."""
        cfg = self.cfg
        # 1-2. accelerate, outputs apart from the inputs, the resume point (the core's)
        self.start(find_unused_parameters=cfg.stochastic_depth > 0,  # skipped units get no gradient some steps
                   inputs={f"--{k}": source_path(getattr(cfg, k)) for k in ("teacher", "student", "pipeline")}
                   | {"--data": cfg.data if cfg.data != WORLD else None})
        speed.check_teacher_dtype(cfg.teacher_dtype, self.device)
        if cfg.compile:
            speed.check_compile_backend(cfg.compile_backend, self.device)
        # 3. models and pipeline parts (checks: paths, teacher/student compatibility)
        self._load_models(teacher, student, pipeline)
        # 4. data (checks: path, captions, size)
        base = build_dataset(cfg.data, self.resolution, seed=cfg.seed, toy_size=cfg.toy_size,
                             caption_column=cfg.caption_column, image_column=cfg.image_column)
        if len(base) < cfg.batch_size * self.world:
            raise ValueError(f"data {cfg.data!r} has {len(base)} items, fewer than the global batch "
                             f"{cfg.batch_size * self.world}")
        self.dataset_size = len(base)
        # 5. feature maps (checks: every name exists in its model)
        self._feature_maps()
        # 6. trainable set (checks: frozen names exist, something is left to train)
        self._trainable_set()
        # 7. frozen parts on the device: teacher in the mixed-precision dtype, encoders too
        p = self.parts
        self.teacher.requires_grad_(False).eval().to(self.device, self.dtype)
        for m in filter(None, (p.vae, p.text_encoder, p.text_encoder_2)):
            m.requires_grad_(False).eval().to(self.device, self.dtype)
        self.student.to(self.device).train()
        for m in (self.teacher, self.student):
            speed.set_channels_last(m, cfg.channels_last)
        if cfg.gradient_checkpointing:
            if not getattr(self.student, "_supports_gradient_checkpointing", False):
                raise ValueError(f"{type(self.student).__name__} does not support gradient checkpointing")
            self.student.enable_gradient_checkpointing()
        # 8. perceptual network (checks: weights file)
        self.perc_net = None
        if cfg.lambda_perc > 0:
            self.perc_net = load_perceptual_net(cfg.perceptual_net, cfg.perceptual_weights, p.toy_world)
            self.perc_net.to(self.device, self.dtype).requires_grad_(False).eval()
        # 9. encoders (+ cache) and a dry run: feature shapes, units stochastic depth may skip
        self.data = LatentBatches(cfg, base, p, self)
        self.dataset, self.empty_text = self.data.dataset, self.data.empty_text  # 1 row: the unconditional input
        self.stochastic = StochasticDepth(self.student, cfg.stochastic_depth) if cfg.stochastic_depth > 0 else None
        self._dry_run()
        # 10. optimiser (trainable parameters only), LR schedule, EMA; wrap the student; resume (the core's)
        self.prepare(self.student, self.trainable)
        if cfg.compile:  # in place: the same modules, hooks and names
            speed.compile_model(self.model, cfg.compile_backend)
            speed.compile_model(self.teacher, cfg.compile_backend)

    def _load_models(self, teacher, student, pipeline) -> None:
        """Teacher, student and pipeline parts; the noise schedule and the image size they imply."""
        self.parts: Parts = load_parts(self.cfg, teacher, student, pipeline)
        p = self.parts
        if self.dtype != torch.float32 and (teacher is not None or pipeline is not None):
            # the frozen parts are cast below; copy the caller's own modules so theirs stay float32
            p.teacher, p.vae, p.text_encoder, p.text_encoder_2 = (copy.deepcopy(m) for m in (
                p.teacher, p.vae, p.text_encoder, p.text_encoder_2))
        p.student = self._prepare_student(p.student)
        self.teacher, self.student = p.teacher, p.student
        self.guidance_dim = self._guidance_dim()
        self.noise_scheduler = noise_scheduler(p.scheduler_config)
        self.prediction_type = self.noise_scheduler.config.prediction_type
        self.alphas_cumprod = self.noise_scheduler.alphas_cumprod.to(self.device)
        self.num_train_timesteps = self.noise_scheduler.config.num_train_timesteps
        self.scaling_factor = p.vae.config.scaling_factor
        vae_scale = 2 ** (len(p.vae.config.block_out_channels) - 1)
        self.resolution = self.cfg.resolution or self.teacher.config.sample_size * vae_scale

    def _prepare_student(self, student: nn.Module) -> nn.Module:
        """Hook: the student to train, given the loaded one (before the optimiser sees it)."""
        return student

    def _guidance_dim(self) -> int | None:
        """The guidance-embedding width teacher and student both read (LCM-style `time_cond_proj_dim`), or None."""
        t_dim, s_dim = embed_dim(self.teacher), embed_dim(self.student)
        if t_dim != s_dim:
            raise ValueError(f"teacher and student differ in their guidance embedding (time_cond_proj_dim): teacher "
                             f"{t_dim}, student {s_dim}; distill needs both to read w or neither")
        return t_dim

    def _feature_maps(self) -> None:
        cfg = self.cfg
        self.block_map, self.block_map_source = resolve_block_map(self.student, self.teacher, self.parts.input_recipe)
        self.feat_map: dict[str, str] = {}
        if cfg.lambda_feat > 0:
            self.feat_map = dict(cfg.feat_map) if cfg.feat_map else self_attention_map(
                self.student, self.teacher, self.parts.input_recipe) if cfg.feat_kind == "self_attn" else \
                default_feature_map(self.block_map, self.student, self.teacher, cfg.feat_presampler)
            if not self.feat_map:
                raise ValueError(f"no student {'self-attention' if cfg.feat_kind == 'self_attn' else 'block'} has a "
                                 f"teacher counterpart (block map from "
                                 f"{self.block_map_source}: {self.block_map}); give --feat-map STUDENT=TEACHER ...")
        self.mid_map: dict[str, str] = {}
        if cfg.lambda_mid > 0:
            if "mid" not in self.block_map:
                raise ValueError("lambda_mid > 0 but the student or the teacher has no mid block "
                                 "(bk-small and bk-tiny remove it); set lambda_mid 0")
            self.mid_map = {"mid": self.block_map["mid"]}
        if self.feat_map or self.mid_map:
            self.s_rec = FeatureRecorder(self.student, [*self.feat_map, *self.mid_map], "student feature")
            self.t_rec = FeatureRecorder(self.teacher, [*self.feat_map.values(), *self.mid_map.values()],
                                         "teacher feature")

    def _trainable_set(self) -> None:
        self.student.requires_grad_(True)
        # None: an assembled student's recorded default (its teacher-sourced parts), else nothing
        cfg = self.cfg
        self.frozen = cfg.freeze if cfg.freeze is not None else \
            self.parts.input_recipe.get("assemble", {}).get("freeze", [])
        for name in self.frozen:
            try:
                get_module(self.student, name).requires_grad_(False)
            except ValueError as e:
                raise ValueError(f"--freeze {name!r} does not exist in the student: {e}") from None
        self.trainable = [q for q in self.student.parameters() if q.requires_grad]
        if not self.trainable:
            raise ValueError(f"--freeze {self.frozen} leaves no trainable parameter in the student")
        self.trainable_params = self.student.num_parameters(only_trainable=True)

    def _make_optimizer(self, params: list) -> torch.optim.Optimizer:
        cfg = self.cfg
        return speed.adamw(params, cfg.adamw, lr=cfg.learning_rate, betas=(cfg.adam_beta1, cfg.adam_beta2),
                           weight_decay=cfg.adam_weight_decay, eps=cfg.adam_epsilon)

    @torch.no_grad()
    def _dry_run(self) -> None:
        """One batch-1 forward of both models on random inputs: checks feature shapes and
        lets stochastic depth find the units it may skip."""
        g = torch.Generator().manual_seed(0)
        c = self.teacher.config.in_channels
        h = self.resolution // (2 ** (len(self.parts.vae.config.block_out_channels) - 1))
        x = torch.randn(1, c, h, h, generator=g).to(self.device)
        t = torch.tensor([self.num_train_timesteps // 2], device=self.device)
        text = self.data.probe_text.to(dtype=torch.float32)
        cond = self._guidance(torch.ones(1), x)  # w = 1
        with self.accelerator.autocast():
            if self.stochastic is not None:
                self.stochastic.probe(lambda: self.student(x, t, **text.kwargs(), **cond))
            else:
                self.student(x, t, **text.kwargs(), **cond)
        s_feats = self.s_rec.pop() if self.s_rec else {}
        if self.t_rec is not None:
            self.teacher(x.to(self.dtype), t, **text.to(dtype=self.dtype).kwargs(),
                         **{k: v.to(self.dtype) for k, v in cond.items()})
            t_feats = self.t_rec.pop()
            check_shapes(s_feats, t_feats, self.feat_map, "feature")
            check_shapes(s_feats, t_feats, self.mid_map, "mid-block")

    def _start_message(self) -> str:
        cfg = self.cfg
        start = f"resuming at step {self.start_step}" if self.resume_dir else \
            "no checkpoint yet: starting at step 0" if cfg.resume else "starting at step 0"
        return (f"{self.name}: {self.trainable_params:,} trainable parameters, {self.world} process(es), global "
                f"batch {cfg.batch_size * self.world * cfg.grad_accum}, feature map from "
                f"{self.block_map_source}; {start}")

    # ------------------------------------------------------------------------------ one step

    def batches(self, sampler):
        return self.data.loader(sampler)

    def _guidance(self, w: torch.Tensor, like: torch.Tensor) -> dict[str, torch.Tensor]:
        """The U-Net keyword a guidance-embedded model reads: {"timestep_cond": emb(w - 1) (b, dim)}; else {}."""
        return {} if self.guidance_dim is None else {"timestep_cond": guidance_embedding(w, self.guidance_dim).to(like)}

    def _micro_step(self, items: list[dict], position: int) -> dict[str, torch.Tensor]:
        """Loss terms of one micro-batch (this process's rows of global micro-batch `position`)."""
        cfg = self.cfg
        latents, noise, text, t, g, rows = self.data.sample(items, position)
        cond = {}
        if self.guidance_dim is not None:  # w ~ U[2, 14] per example (drawn after the others: same batches)
            lo, hi = GUIDANCE_RANGE
            w = (lo + (hi - lo) * torch.rand(latents.shape[0] * self.world, generator=g))[rows]
            cond = self._guidance(w, latents)  # {"timestep_cond": (b, dim)}
        x_t = self.noise_scheduler.add_noise(latents, noise, t)  # sqrt(ab) x0 + sqrt(1 - ab) eps
        x_t = speed.as_channels_last(x_t, cfg.channels_last)
        if self.stochastic is not None:
            self.stochastic.set_skipped(self.stochastic.sample(random_generator(cfg.seed, position, DEPTH_STREAM)))
        # 3. student (wrapped) and teacher (plain, no grad); hooks fill the recorders
        for rec in (self.s_rec, self.t_rec):
            if rec is not None:
                rec.pop()  # drop what gradient-checkpointing recomputation may have left
        with self.timer("student forward"):
            pred_s = self.model(x_t, t, **text.kwargs(), **cond).sample  # (b, C, h, w)
        s_feats = self.s_rec.pop() if self.s_rec else {}
        pred_t = t_feats = None
        if cfg.needs_teacher:
            with self.timer("teacher forward"):
                pred_t, t_feats = self._teacher_forward(x_t, t, text, cond)
        with self.timer("losses+hooks"):
            return self._loss_terms(latents, noise, x_t, t, pred_s, s_feats, pred_t, t_feats)

    def _teacher_forward(self, x_t, t, text, cond=None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The frozen teacher: output (b, C, h, w) float32 and its recorded features, no autograd state.
        `cond`: the guidance keyword of a guidance-embedded teacher ({} or None: none)."""
        cfg = self.cfg
        cond = {k: v.to(self.dtype) for k, v in (cond or {}).items()}
        with speed.teacher_context(self.device, cfg.teacher_inference_mode, cfg.teacher_dtype):
            pred_t = self.teacher(x_t.to(self.dtype), t, **text.to(dtype=self.dtype).kwargs(), **cond).sample
        t_feats = self.t_rec.pop() if self.t_rec else {}
        if cfg.teacher_inference_mode:  # tensors a loss may save for backward (inference tensors may not be)
            t_feats = {k: speed.to_normal_float(v, True) for k, v in t_feats.items()}
        return speed.to_normal_float(pred_t, cfg.teacher_inference_mode), t_feats

    def _loss_terms(self, latents, noise, x_t, t, pred_s, s_feats, pred_t, t_feats) -> dict[str, torch.Tensor]:
        cfg = self.cfg
        terms: dict[str, torch.Tensor] = {}
        if cfg.lambda_task > 0:
            target = task_target(self.prediction_type, latents, noise, t, self.alphas_cumprod)
            terms["loss_task"] = mse(pred_s, target)
        if cfg.needs_teacher:
            if cfg.lambda_out > 0:
                terms["loss_out"] = mse(pred_s, pred_t)
            if cfg.lambda_feat > 0:
                terms["loss_feat"] = feature_kd(s_feats, t_feats, self.feat_map, cfg.feat_loss)
            if cfg.lambda_mid > 0:
                terms["loss_mid"] = feature_distance(s_feats["mid"], t_feats[self.mid_map["mid"]], cfg.feat_loss)
            if cfg.lambda_perc > 0:
                terms["loss_perc"] = self._perceptual(x_t, pred_s, pred_t, t)
        weights = {"loss_task": cfg.lambda_task, "loss_out": cfg.lambda_out, "loss_feat": cfg.lambda_feat,
                   "loss_mid": cfg.lambda_mid, "loss_perc": cfg.lambda_perc}
        terms["loss"] = sum(weights[k] * v for k, v in terms.items())
        return terms

    def _perceptual(self, x_t, pred_s, pred_t, t) -> torch.Tensor:
        """A-SDM SAS: features of the decoded x0 estimates, student vs teacher."""
        vae = self.parts.vae

        def decode(x0):  # latents (b, C, h, w) -> images (b, 3, H, W) in [0, 1] (not clamped: keeps gradients)
            return (vae.decode((x0 / self.scaling_factor).to(self.dtype)).sample + 1) / 2

        with self.accelerator.autocast():
            img_s = decode(x0_estimate(self.prediction_type, x_t, pred_s, t, self.alphas_cumprod))
            with torch.no_grad():
                img_t = decode(x0_estimate(self.prediction_type, x_t, pred_t, t, self.alphas_cumprod))
            return perceptual_loss(self.perc_net, img_s, img_t)

    # ------------------------------------------------------------------------------ outputs

    def _finalize(self, model: nn.Module) -> None:
        """The plain model: no feature hooks, no skipping, no checkpointing, contiguous weights."""
        for rec in (self.s_rec, self.t_rec):
            if rec is not None:
                rec.remove()
        if self.stochastic is not None:
            self.stochastic.remove()
        if self.cfg.gradient_checkpointing and getattr(model, "is_gradient_checkpointing", False):
            model.disable_gradient_checkpointing()
        if self.cfg.channels_last:
            speed.set_channels_last(model, False)  # saved and returned in the contiguous format

    def _result(self, student: nn.Module, losses: dict, steps_per_sec: float, log_path: Path) -> DistillResult:
        """Student + recipe.json, loss curves, out/pipeline (on the main process)."""
        plot_path = pipeline_dir = None
        if self.accelerator.is_main_process:
            save_unet(student, self.out, recipe=validate_recipe(self._recipe(losses, steps_per_sec)))
            plot_path = plot_losses(log_path, self.out / "loss_curves.png", sorted(losses))
            pipeline_dir = self._save_pipeline(student)
        return DistillResult(student=student, out=self.out, steps=self.cfg.max_steps, losses=losses,
                             steps_per_sec=steps_per_sec, log_path=log_path, plot_path=plot_path,
                             pipeline_dir=pipeline_dir, feature_map=dict(self.feat_map),
                             trainable_params=self.trainable_params, num_processes=self.world)

    def _recipe(self, losses: dict, steps_per_sec: float) -> dict:
        """The student's recipe.json: the input recipe, and this run under `distill` (an earlier
        `distill` entry moves to the end of `distill_history`, e.g. progressive incubation)."""
        recipe = {k: v for k, v in self.parts.input_recipe.items() if k != "unet_class"}
        inheritance = getattr(self.student, "inheritance", None)
        if "inheritance" not in recipe and inheritance and any(k != v for k, v in inheritance.items()):
            recipe["inheritance"] = dict(inheritance)
        if "distill" in recipe:
            recipe["distill_history"] = [*recipe.get("distill_history", []), recipe["distill"]]
        cfg = self.cfg
        recipe["distill"] = {
            "config": cfg.to_dict(),
            "teacher": cfg.teacher if cfg.teacher is not None else "in memory",
            "student_init": cfg.student if cfg.student is not None else "in memory",
            "pipeline": self.parts.pipeline_source,
            "prediction_type": self.prediction_type, "resolution": self.resolution,
            "block_map": self.block_map, "block_map_source": self.block_map_source,
            "feature_map": self.feat_map, "mid_map": self.mid_map,
            "stochastic_depth_units": self.stochastic.units if self.stochastic else [],
            "trainable_params": self.trainable_params, "frozen": self.frozen, "num_processes": self.world,
            "global_batch": cfg.batch_size * self.world * cfg.grad_accum,
            "dataset_size": self.dataset_size,
            "steps": cfg.max_steps, "final_losses": losses,
            "steps_per_sec": steps_per_sec,
            "ema": self.ema is not None,
            "slimdiff_version": __version__,
        }
        return recipe

    def _save_pipeline(self, student: nn.Module, scheduler: Any = None) -> Path | None:
        """out/pipeline: the teacher's pipeline with the student as its unet (so `slimdiff evaluate` runs);
        `scheduler`: replaces the pipeline's own."""
        return save_pipeline(self.parts, student, self.out / "pipeline", scheduler=scheduler)
