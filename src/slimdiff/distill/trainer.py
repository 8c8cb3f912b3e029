"""The distillation trainer (METHODS.md sections 2-5) on Hugging Face accelerate.

    from slimdiff.distill import DistillConfig, distill
    result = distill(DistillConfig(teacher="toy", student="runs/bk-small", out="runs/kd", max_steps=2000))
    result.student, result.steps_per_sec, result.losses

One process or many (`accelerate launch -m slimdiff distill ...`: DDP; FSDP through an
accelerate config). The student is the only wrapped model; the teacher is frozen, cast to the
mixed-precision dtype and never wrapped; feature hooks sit on unwrapped modules.

Determinism. Everything random in a micro-step p (= step * grad_accum + micro) is drawn from
generators seeded with (seed, p) for the whole *global* batch, and each process takes its rows:
the data order (a seeded permutation per epoch), timesteps, noise, the latent sample, caption
dropout and the units stochastic depth skips. So a run's batches are a pure function of
(seed, step): a resumed run sees the batches an uninterrupted one would, and N processes with
batch b see what 1 process with batch N*b sees (the losses are batch means, DDP averages them).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import os
import shutil
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Sampler

from slimdiff.data import build_dataset, collate_items
from slimdiff.data.cache import BatchEncoder, CachedDataset, EncodingCache, MemoryCache, sample_latents
from slimdiff.distill import checkpoint as ckpt
from slimdiff.distill.checkpoint import JsonlLog
from slimdiff.distill.config import DistillConfig
from slimdiff.distill.ema import EMA
from slimdiff.distill.features import FeatureRecorder, check_shapes, default_feature_map, resolve_block_map
from slimdiff.distill.loading import Parts, load_parts
from slimdiff.distill import speed
from slimdiff.distill.losses import feature_distance, feature_kd, mse, perceptual_loss, task_target, x0_estimate
from slimdiff.distill.stochastic_depth import StochasticDepth
from slimdiff.io import apply_file_modes, check_disjoint

DTYPES = {"no": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
_DATA, _NOISE, _DEPTH = 0, 1, 2  # independent random streams


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
    return Trainer(config, teacher, student, pipeline, progress).run()


def random_generator(seed: int, position: int, stream: int) -> torch.Generator:
    """A CPU generator that depends only on (seed, position, stream)."""
    a, b = np.random.SeedSequence([seed, position, stream]).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed((int(a) << 32) | int(b))


class GlobalBatchSampler(Sampler):
    """This process's indices for micro-batches `start..stop-1`.

    Micro-batch p of the global batch G = batch_size * world is slice j = p mod (n // G) of a
    seeded permutation for epoch p // (n // G); process r takes rows [r*b, (r+1)*b).
    """

    def __init__(self, n: int, batch_size: int, rank: int, world: int, seed: int, start: int, stop: int):
        self.n, self.b, self.rank, self.world, self.seed = n, batch_size, rank, world, seed
        self.global_batch = batch_size * world
        self.per_epoch = n // self.global_batch
        if self.per_epoch < 1:
            raise ValueError(f"the data set has {n} items, fewer than the global batch {self.global_batch} "
                             f"(batch_size {batch_size} x {world} processes)")
        self.start, self.stop = start, stop

    def __len__(self) -> int:
        return max(0, self.stop - self.start)

    def epoch_of(self, p: int) -> int:
        return p // self.per_epoch

    def __iter__(self):
        epoch, perm = None, None
        for p in range(self.start, self.stop):
            e, j = divmod(p, self.per_epoch)
            if e != epoch:
                epoch, perm = e, torch.randperm(self.n, generator=random_generator(self.seed, e, _DATA)).tolist()
            rows = perm[j * self.global_batch:(j + 1) * self.global_batch]
            yield rows[self.rank * self.b:(self.rank + 1) * self.b]


class NonFiniteLossError(ValueError):
    """The loss (or the weights) became NaN or infinite: the run diverged and is stopped."""


class _CallerState:
    """What training changes on the caller's in-memory modules: training flag, `requires_grad`
    flags and device. `restore()` puts them back (the student: its `requires_grad` flags only;
    it is trained in place and comes back in eval mode on the training device)."""

    def __init__(self, frozen: list, student):
        def state(m):
            p = next(m.parameters(), None)
            return m, m.training, [q.requires_grad for q in m.parameters()], p.device if p is not None else None

        self.frozen = [state(m) for m in frozen if isinstance(m, nn.Module)]
        self.student = state(student) if isinstance(student, nn.Module) else None

    def restore(self) -> None:
        for m, training, flags, device in self.frozen:
            for q, flag in zip(m.parameters(), flags):
                q.requires_grad_(flag)
            m.train(training)
            if device is not None:
                m.to(device)
        if self.student is not None:
            for q, flag in zip(self.student[0].parameters(), self.student[2]):
                q.requires_grad_(flag)


class Trainer:
    """One distillation run: `Trainer(config, ...).run()`. The caller's in-memory teacher and
    pipeline parts come back unchanged (mode, requires_grad, device) when `run()` returns or
    raises, and no hook or stochastic-depth patch outlives a failed set-up or run."""

    def __init__(self, config: DistillConfig, teacher=None, student=None, pipeline=None, progress: bool = True):
        self.cfg = config
        self._caller = _CallerState([teacher, getattr(pipeline, "vae", None), getattr(pipeline, "text_encoder", None)],
                                    student)
        self.s_rec = self.t_rec = self.stochastic = None
        self.student = student
        try:
            self._setup(config, teacher, student, pipeline, progress)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Remove the feature hooks and stochastic-depth patches; restore the caller's modules."""
        for rec in (self.s_rec, self.t_rec):
            if rec is not None:
                rec.remove()
        if self.stochastic is not None:
            self.stochastic.remove()
        if getattr(self.student, "gradient_checkpointing", False) and self.cfg.gradient_checkpointing:
            self.student.disable_gradient_checkpointing()
        for m in (getattr(self, "teacher", None), self.student):
            if isinstance(m, nn.Module) and self.cfg.channels_last:
                speed.set_channels_last(m, False)  # the caller's modules come back contiguous
            if isinstance(m, nn.Module) and self.cfg.compile:
                m._compiled_call_impl = None  # undo nn.Module.compile(): plain eager calls again
        self._caller.restore()

    def _setup(self, config: DistillConfig, teacher, student, pipeline, progress: bool) -> None:
        self.cfg = cfg = config
        self.progress = progress
        self.out = Path(cfg.out)

        # 1. accelerate: device, processes, mixed precision, accumulation
        self.accelerator = _make_accelerator(cfg)
        acc = self.accelerator
        self.rank, self.world = acc.process_index, acc.num_processes
        self.device = acc.device
        self.dtype = DTYPES[cfg.mixed_precision]
        speed.check_teacher_dtype(cfg.teacher_dtype, self.device)
        if cfg.compile:
            speed.check_compile_backend(cfg.compile_backend, self.device)
        self.timer = speed.PhaseTimer(enabled=False, cuda=self.device.type == "cuda")  # on for profiled steps

        # 2. outputs apart from the inputs; resume: find the checkpoint first, so a mismatched
        # config fails before loading anything (junk of killed saves is removed first)
        check_disjoint(self.out, {f"--{k}": _source_path(getattr(cfg, k)) for k in ("teacher", "student", "pipeline")}
                       | {"--data": cfg.data if cfg.data != "toy" else None})
        if acc.is_main_process:
            ckpt.remove_junk(self.out / "checkpoints")
        acc.wait_for_everyone()
        self.resume_dir, self.start_step = ckpt.resume_point(cfg, self.out, self.world)

        # 3. models and pipeline parts (checks: paths, teacher/student compatibility)
        self.parts: Parts = load_parts(cfg, teacher, student, pipeline)
        p = self.parts
        if self.dtype != torch.float32 and (teacher is not None or pipeline is not None):
            # the frozen parts are cast below; copy the caller's own modules so theirs stay float32
            p.teacher, p.vae, p.text_encoder = (copy.deepcopy(m) for m in (p.teacher, p.vae, p.text_encoder))
        p.student = self._prepare_student(p.student)
        self.teacher, self.student = p.teacher, p.student
        self.noise_scheduler = _noise_scheduler(p.scheduler_config)
        self.prediction_type = self.noise_scheduler.config.prediction_type
        self.alphas_cumprod = self.noise_scheduler.alphas_cumprod.to(self.device)
        self.num_train_timesteps = self.noise_scheduler.config.num_train_timesteps
        self.scaling_factor = p.vae.config.scaling_factor
        vae_scale = 2 ** (len(p.vae.config.block_out_channels) - 1)
        self.resolution = cfg.resolution or self.teacher.config.sample_size * vae_scale

        # 4. data (checks: path, captions, size)
        base = build_dataset(cfg.data, self.resolution, seed=cfg.seed, toy_size=cfg.toy_size,
                             caption_column=cfg.caption_column, image_column=cfg.image_column)
        if len(base) < cfg.batch_size * self.world:
            raise ValueError(f"data {cfg.data!r} has {len(base)} items, fewer than the global batch "
                             f"{cfg.batch_size * self.world}")
        self.dataset_size = len(base)

        # 5. feature maps (checks: every name exists in its model)
        self.block_map, self.block_map_source = resolve_block_map(self.student, self.teacher, p.input_recipe)
        if cfg.lambda_feat > 0:
            self.feat_map = dict(cfg.feat_map) if cfg.feat_map else \
                default_feature_map(self.block_map, self.student, self.teacher, cfg.feat_presampler)
            if not self.feat_map:
                raise ValueError(f"no student block has a teacher counterpart (block map from "
                                 f"{self.block_map_source}: {self.block_map}); give --feat-map STUDENT=TEACHER ...")
        else:
            self.feat_map = {}
        self.mid_map: dict[str, str] = {}
        if cfg.lambda_mid > 0:
            if "mid" not in self.block_map:
                raise ValueError("lambda_mid > 0 but the student or the teacher has no mid block "
                                 "(bk-small and bk-tiny remove it); set lambda_mid 0")
            self.mid_map = {"mid": self.block_map["mid"]}
        self.s_rec = FeatureRecorder(self.student, [*self.feat_map, *self.mid_map], "student feature") \
            if self.feat_map or self.mid_map else None
        self.t_rec = FeatureRecorder(self.teacher, [*self.feat_map.values(), *self.mid_map.values()],
                                     "teacher feature") if self.feat_map or self.mid_map else None

        # 6. trainable set (checks: frozen names exist, something is left to train)
        self.student.requires_grad_(True)
        from slimdiff.unet import get_module

        # None: an assembled student's recorded default (its teacher-sourced parts), else nothing
        self.frozen = cfg.freeze if cfg.freeze is not None else p.input_recipe.get("assemble", {}).get("freeze", [])
        for name in self.frozen:
            try:
                get_module(self.student, name).requires_grad_(False)
            except ValueError as e:
                raise ValueError(f"--freeze {name!r} does not exist in the student: {e}") from None
        self.trainable = [q for q in self.student.parameters() if q.requires_grad]
        if not self.trainable:
            raise ValueError(f"--freeze {self.frozen} leaves no trainable parameter in the student")
        self.trainable_params = self.student.num_parameters(only_trainable=True)

        # 7. frozen parts on the device: teacher in the mixed-precision dtype, encoders too
        self.teacher.requires_grad_(False).eval().to(self.device, self.dtype)
        for m in (p.vae, p.text_encoder):
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
            from slimdiff.distill.perceptual import load_perceptual_net

            self.perc_net = load_perceptual_net(cfg.perceptual_net, cfg.perceptual_weights, p.toy_world)
            self.perc_net.to(self.device, self.dtype).requires_grad_(False).eval()

        # 9. encoders (+ cache) and a dry run: feature shapes, units stochastic depth may skip
        cache = None
        if cfg.cache_dir is not None:
            cache = EncodingCache(cfg.cache_dir, base.fingerprint, p.vae, p.text_encoder)
        elif cfg.memory_cache == "auto" and cfg.max_steps * cfg.grad_accum * cfg.batch_size * self.world > len(base):
            cache = MemoryCache(cfg.memory_cache_mb * 2 ** 20)  # the run revisits items: keep their encodings
        self.dataset = CachedDataset(base, cache)
        self.encoder = BatchEncoder(p.vae, p.tokenizer, p.text_encoder, cache, timer=self.timer)
        self.empty_text = self.encoder.encode_text([""])  # (1, L, D), for caption dropout
        self.stochastic = StochasticDepth(self.student, cfg.stochastic_depth) if cfg.stochastic_depth > 0 else None
        self._dry_run()

        # 10. optimiser (trainable parameters only), LR schedule, EMA; wrap the student
        from diffusers.optimization import get_scheduler

        self.optimizer = speed.adamw(self.trainable, cfg.adamw, lr=cfg.learning_rate,
                                     betas=(cfg.adam_beta1, cfg.adam_beta2),
                                     weight_decay=cfg.adam_weight_decay, eps=cfg.adam_epsilon)
        # stepped once per optimiser step by us (not prepared: accelerate would step it per process)
        self.lr_scheduler = get_scheduler(cfg.lr_scheduler, self.optimizer, num_warmup_steps=cfg.lr_warmup_steps,
                                          num_training_steps=cfg.max_steps)
        if cfg.ema_decay and acc.distributed_type.value == "FSDP":
            raise ValueError("ema_decay with FSDP is not supported (the EMA keeps unsharded copies); "
                             "use DDP or drop --ema-decay")
        self.ema = EMA(self.trainable, cfg.ema_decay) if cfg.ema_decay else None
        self.model, self.optimizer = acc.prepare(self.student, self.optimizer)
        if cfg.compile:  # in place: the same modules, hooks and names
            speed.compile_model(self.model, cfg.compile_backend)
            speed.compile_model(self.teacher, cfg.compile_backend)
        ckpt.install_portable_model_hooks(acc)
        if self.resume_dir is not None:  # LR schedule and EMA: JSON + safetensors, never pickles
            try:
                acc.load_state(str(self.resume_dir))
                self.lr_scheduler.load_state_dict(ckpt.load_state(self.resume_dir, "lr_scheduler"))
                if self.ema is not None:
                    self.ema.load_state_dict(ckpt.load_state(self.resume_dir, "ema"))
            except (ValueError, FileNotFoundError):
                raise
            except Exception as e:  # torch / safetensors errors that name no file
                raise ValueError(f"checkpoint {self.resume_dir} could not be loaded ({type(e).__name__}: {e})") from None

    # ------------------------------------------------------------------------------ set-up

    name = "distill"  # progress bar and messages (a subclass names its method)

    def _prepare_student(self, student: nn.Module) -> nn.Module:
        """Hook: the student to train, given the loaded one (before the optimiser sees it)."""
        return student

    def _on_step_start(self, step: int) -> None:
        """Hook: called before optimiser step `step` (0-based), also the first step of a resumed run."""

    @torch.no_grad()
    def _dry_run(self) -> None:
        """One batch-1 forward of both models on random inputs: checks feature shapes and
        lets stochastic depth find the units it may skip."""
        g = torch.Generator().manual_seed(0)
        c = self.teacher.config.in_channels
        h = self.resolution // (2 ** (len(self.parts.vae.config.block_out_channels) - 1))
        x = torch.randn(1, c, h, h, generator=g).to(self.device)
        t = torch.tensor([self.num_train_timesteps // 2], device=self.device)
        text = self.empty_text.float()
        with self.accelerator.autocast():
            if self.stochastic is not None:
                self.stochastic.probe(lambda: self.student(x, t, encoder_hidden_states=text))
            else:
                self.student(x, t, encoder_hidden_states=text)
        s_feats = self.s_rec.pop() if self.s_rec else {}
        if self.t_rec is not None:
            self.teacher(x.to(self.dtype), t, encoder_hidden_states=text.to(self.dtype))
            t_feats = self.t_rec.pop()
            check_shapes(s_feats, t_feats, self.feat_map, "feature")
            check_shapes(s_feats, t_feats, self.mid_map, "mid-block")

    # ------------------------------------------------------------------------------ one step

    def _sample_batch(self, items: list[dict], position: int, draw_t: Callable | None = None):
        """Steps 1-2 of a micro-step: encodings and the global micro-batch's randomness, this process's rows.

        Returns latents x0 (b, C, h, w), noise (b, C, h, w), text (b, L, D) after caption dropout,
        timesteps t (b,) and `(g, rows)`: the generator after these draws and this process's slice of
        the global batch, for further draws of a subclass. `draw_t(G, g)`: the global batch's (G,)
        timesteps (default: uniform over the training timesteps).
        """
        cfg = self.cfg
        # 1. encodings: latent moments (b, 2C, h, w), text (b, L, D)
        moments, text = self.encoder(items)
        b, c2, h, w = moments.shape
        rows = slice(self.rank * b, (self.rank + 1) * b)
        # 2. the global micro-batch's randomness, this process's rows
        g = random_generator(cfg.seed, position, _NOISE)
        G = b * self.world
        t = draw_t(G, g) if draw_t is not None else torch.randint(0, self.num_train_timesteps, (G,), generator=g)
        t = t[rows].to(self.device)
        noise = torch.randn(G, c2 // 2, h, w, generator=g)[rows].to(self.device)
        eps = torch.randn(G, c2 // 2, h, w, generator=g)[rows]
        drop = (torch.rand(G, generator=g) < cfg.caption_dropout)[rows].to(self.device)
        latents = sample_latents(moments, eps, self.scaling_factor)  # x0 (b, C, h, w)
        text = torch.where(drop[:, None, None], self.empty_text.expand_as(text), text)
        return latents, noise, text, t, g, rows

    def _micro_step(self, items: list[dict], position: int) -> dict[str, torch.Tensor]:
        """Loss terms of one micro-batch (this process's rows of global micro-batch `position`)."""
        cfg = self.cfg
        latents, noise, text, t, _, _ = self._sample_batch(items, position)
        x_t = self.noise_scheduler.add_noise(latents, noise, t)  # sqrt(ab) x0 + sqrt(1 - ab) eps
        x_t = speed.as_channels_last(x_t, cfg.channels_last)
        if self.stochastic is not None:
            self.stochastic.set_skipped(self.stochastic.sample(random_generator(cfg.seed, position, _DEPTH)))
        # 3. student (wrapped) and teacher (plain, no grad); hooks fill the recorders
        for rec in (self.s_rec, self.t_rec):
            if rec is not None:
                rec.pop()  # drop what gradient-checkpointing recomputation may have left
        with self.timer("student forward"):
            pred_s = self.model(x_t, t, encoder_hidden_states=text).sample  # (b, C, h, w)
        s_feats = self.s_rec.pop() if self.s_rec else {}
        if cfg.needs_teacher:
            with self.timer("teacher forward"):
                pred_t, t_feats = self._teacher_forward(x_t, t, text)
        with self.timer("losses+hooks"):
            return self._loss_terms(latents, noise, x_t, t, pred_s, s_feats,
                                    *((pred_t, t_feats) if cfg.needs_teacher else (None, None)))

    def _teacher_forward(self, x_t, t, text) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The frozen teacher: output (b, C, h, w) float32 and its recorded features, no autograd state."""
        cfg = self.cfg
        with speed.teacher_context(self.device, cfg.teacher_inference_mode, cfg.teacher_dtype):
            pred_t = self.teacher(x_t.to(self.dtype), t, encoder_hidden_states=text.to(self.dtype)).sample
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

    # ------------------------------------------------------------------------------ the loop

    def run(self) -> DistillResult:
        """Train, write the outputs, return the result; `close()` in any case."""
        try:
            return self._run()
        finally:
            self.close()

    def _run(self) -> DistillResult:
        cfg, acc = self.cfg, self.accelerator
        main = acc.is_main_process
        if main:
            self.out.mkdir(parents=True, exist_ok=True)
        log = JsonlLog(self.out / "train_log.jsonl", self.start_step if self.resume_dir else None, main)
        sampler = GlobalBatchSampler(self.dataset_size, cfg.batch_size, self.rank, self.world, cfg.seed,
                                     start=self.start_step * cfg.grad_accum, stop=cfg.max_steps * cfg.grad_accum)
        loader = DataLoader(self.dataset, batch_sampler=sampler, collate_fn=collate_items,
                            num_workers=cfg.num_workers, pin_memory=cfg.pin_memory and self.device.type == "cuda",
                            **({"prefetch_factor": cfg.prefetch_factor} if cfg.num_workers > 0 else {}))
        batches = iter(loader)

        def next_batch():
            with self.timer("data"):
                return next(batches)

        bar = _progress_bar(cfg.max_steps, self.start_step, enabled=self.progress and main, desc=self.name)
        if self.progress and main:
            start = f"resuming at step {self.start_step}" if self.resume_dir else \
                "no checkpoint yet: starting at step 0" if cfg.resume else "starting at step 0"
            bar.write(f"{self.name}: {self.trainable_params:,} trainable parameters, {self.world} process(es), global "
                      f"batch {cfg.batch_size * self.world * cfg.grad_accum}, feature map from "
                      f"{self.block_map_source}; {start}")
        record: dict = {}
        pending: list[tuple] = []  # finish_step arguments of steps not yet logged (no host sync yet)
        profiled = range(self.start_step + 1, self.start_step + 1 + cfg.profile_steps)  # the first: warm-up
        t0 = time.perf_counter()
        for step in range(self.start_step, cfg.max_steps):
            self.timer.enabled = step in profiled
            self._on_step_start(step)
            sums, grad_norm = optimizer_step(acc, self.model, self.optimizer, self.trainable, step, cfg.grad_accum,
                                             cfg.max_grad_norm, lambda p: self._micro_step(next_batch(), p),
                                             timer=self.timer)
            with self.timer("optimizer"):
                self.lr_scheduler.step()
                if self.ema is not None:
                    self.ema.update(self.trainable)
            with self.timer("logging+syncs"):
                pending.append((sums, step + 1, sampler.epoch_of((step + 1) * cfg.grad_accum - 1),
                                self.lr_scheduler.get_last_lr()[0], grad_norm, time.perf_counter()))
                saving = ckpt.is_checkpoint_step(cfg, step + 1)
                if len(pending) >= cfg.log_every or saving or step + 1 == cfg.max_steps:
                    for args in pending:  # the first reads the device; the others are ready by then
                        record = finish_step(acc, log, bar, *args[:5], t0, on_nonfinite=self._stop_diverged,
                                             now=args[5])
                    pending = []
                ckpt.maybe_save(acc, self.out / "checkpoints", cfg, step + 1, self.world,
                                states=self._checkpoint_states, before_save=lambda: self._check_finite_weights(step + 1))
            self.timer.end_step()
        elapsed = time.perf_counter() - t0
        if cfg.profile_steps and main:
            speed.write_profile(self.timer.summary(), self.out, f"{self.name}, {speed.about_run(self.device)}, "
                                f"batch {cfg.batch_size}, {self.resolution} px")
        bar.close()
        steps_done = cfg.max_steps - self.start_step
        steps_per_sec = steps_done / elapsed if elapsed > 0 else float("nan")
        return self._finish(record, steps_per_sec, log.path)

    def _checkpoint_states(self) -> dict[str, dict]:
        """What a checkpoint holds beside accelerate's model/optimizer state (JSON + safetensors)."""
        return {"lr_scheduler": self.lr_scheduler.state_dict(), **({"ema": self.ema.state_dict()} if self.ema else {})}

    def _check_finite_weights(self, step: int) -> None:
        """Stop before NaN / inf weights are saved (a checkpoint or the result)."""
        tensors = [*self.trainable, *(self.ema.shadow if self.ema is not None else [])]
        bad = next((i for i, q in enumerate(tensors) if not torch.isfinite(q.detach()).all()), None)
        if bad is not None:
            self._stop_diverged(step, {"weights": float("nan")})

    def _stop_diverged(self, step: int, terms: dict[str, float]) -> None:
        found = ckpt.list_checkpoints(self.out / "checkpoints")
        last = f"the last good checkpoint is {found[-1][1]} (resume it with a lower --lr)" if found else \
            "no checkpoint was written yet"
        shown = ", ".join(f"{k} {v}" for k, v in terms.items() if not np.isfinite(v))
        raise NonFiniteLossError(f"distill stopped at step {step}: non-finite values ({shown}); the run diverged "
                                 f"(learning rate too high?). Nothing was saved as the result; {last}")

    # ------------------------------------------------------------------------------ outputs

    def _finish(self, record: dict, steps_per_sec: float, log_path: Path) -> DistillResult:
        acc, cfg = self.accelerator, self.cfg
        acc.wait_for_everyone()
        student = acc.unwrap_model(self.model)
        # 1. the plain student: no hooks, no skipping, EMA weights when EMA is on
        for rec in (self.s_rec, self.t_rec):
            if rec is not None:
                rec.remove()
        if self.stochastic is not None:
            self.stochastic.remove()
        if cfg.gradient_checkpointing and hasattr(student, "disable_gradient_checkpointing"):
            student.disable_gradient_checkpointing()
        speed.set_channels_last(student, False)  # saved and returned in the contiguous format
        self._check_finite_weights(cfg.max_steps)
        if self.ema is not None:
            self.ema.copy_to(self.trainable)
        student.eval().requires_grad_(False)
        losses = {k: v for k, v in record.items() if k.startswith("loss")}
        plot_path = pipeline_dir = None
        if acc.is_main_process:
            # 2. student + recipe.json, loss curves, pipeline
            from slimdiff.unet import save_unet

            save_unet(student, self.out, recipe=self._recipe(losses, steps_per_sec))
            plot_path = _plot(log_path, self.out / "loss_curves.png", sorted(losses))
            pipeline_dir = self._save_pipeline(student)
        acc.wait_for_everyone()
        acc.free_memory()
        return DistillResult(student=student, out=self.out, steps=cfg.max_steps, losses=losses,
                             steps_per_sec=steps_per_sec, log_path=log_path, plot_path=plot_path,
                             pipeline_dir=pipeline_dir, feature_map=dict(self.feat_map),
                             trainable_params=self.trainable_params, num_processes=self.world)

    def _recipe(self, losses: dict, steps_per_sec: float) -> dict:
        from slimdiff import __version__

        recipe = {k: v for k, v in self.parts.input_recipe.items() if k != "unet_class"}
        inheritance = getattr(self.student, "inheritance", None)
        if "inheritance" not in recipe and inheritance and any(k != v for k, v in inheritance.items()):
            recipe["inheritance"] = dict(inheritance)
        if "distill" in recipe:  # a second distillation (e.g. progressive incubation): keep the first
            recipe["distill_history"] = [*recipe.get("distill_history", []), recipe["distill"]]
        recipe["distill"] = {
            "config": self.cfg.to_dict(),
            "teacher": self.cfg.teacher if self.cfg.teacher is not None else "in memory",
            "student_init": self.cfg.student if self.cfg.student is not None else "in memory",
            "pipeline": self.parts.pipeline_source,
            "prediction_type": self.prediction_type,
            "resolution": self.resolution,
            "block_map": self.block_map,
            "block_map_source": self.block_map_source,
            "feature_map": self.feat_map,
            "mid_map": self.mid_map,
            "stochastic_depth_units": self.stochastic.units if self.stochastic else [],
            "trainable_params": self.trainable_params,
            "frozen": self.frozen,
            "num_processes": self.world,
            "global_batch": self.cfg.batch_size * self.world * self.cfg.grad_accum,
            "dataset_size": self.dataset_size,
            "steps": self.cfg.max_steps,
            "final_losses": losses,
            "steps_per_sec": steps_per_sec,
            "ema": self.ema is not None,
            "slimdiff_version": __version__,
        }
        return recipe

    def _save_pipeline(self, student: nn.Module, scheduler: Any = None) -> Path | None:
        """out/pipeline: the teacher's pipeline with the student as its unet (so `slimdiff evaluate` runs);
        `scheduler`: replaces the pipeline's own."""
        out = self.out / "pipeline"
        if self.parts.pipeline_source is not None:
            from slimdiff.unet.io import save_pipeline_with_unet

            return save_pipeline_with_unet(self.parts.pipeline_source, student, out, scheduler=scheduler)
        from diffusers import StableDiffusionPipeline

        from slimdiff.unet import to_diffusers

        plain = student if type(student).__name__ == "UNet2DConditionModel" else (to_diffusers(student) or student)
        pipe = self.parts.pipeline
        comps = {k: v for k, v in pipe.components.items()}
        comps["unet"] = plain
        if scheduler is not None:
            comps["scheduler"] = scheduler
        tmp = out.with_name(f".{out.name}.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        StableDiffusionPipeline(**comps).save_pretrained(tmp, safe_serialization=True)
        apply_file_modes(tmp)
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
        return out


# ---------------------------------------------------------------------------------- helpers


def _source_path(name: str | None) -> Path | None:
    """The directory a --teacher / --student / --pipeline name reads (None for built-ins)."""
    if name is None:
        return None
    from slimdiff.unet.io import resolve_source

    try:
        return resolve_source(name)[1]
    except (ValueError, FileNotFoundError):
        return Path(name)  # load_parts reports it


def _make_accelerator(cfg: DistillConfig):
    # stochastic depth leaves skipped units without gradient in some steps
    return make_accelerator(cfg.mixed_precision, cfg.grad_accum, cfg.cpu, find_unused_parameters=cfg.stochastic_depth > 0)


def make_accelerator(mixed_precision: str, grad_accum: int, cpu: bool, find_unused_parameters: bool = False):
    """The `Accelerator` of a training run (state reset first for in-process runs)."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, GradientState
    from accelerate.utils import DistributedDataParallelKwargs

    if int(os.environ.get("WORLD_SIZE", "1")) == 1:
        # in-process runs (tests, `slimdiff demo`) may differ in mixed precision / accumulation
        AcceleratorState._reset_state()
        GradientState._reset_state()
    ddp = DistributedDataParallelKwargs(find_unused_parameters=find_unused_parameters)
    return Accelerator(mixed_precision=mixed_precision, gradient_accumulation_steps=grad_accum,
                       cpu=cpu, kwargs_handlers=[ddp])


def optimizer_step(acc, model, optimizer, trainable, step: int, grad_accum: int, max_grad_norm: float | None,
                   micro_step, timer=None) -> tuple[dict[str, torch.Tensor], Any]:
    """One optimiser step of `grad_accum` micro-steps; `micro_step(position)` returns the loss terms
    of micro-batch `position = step * grad_accum + micro` (`terms["loss"]` is backpropagated).
    Returns the terms averaged over the micro-steps and the clipped gradient norm (None: no clipping).
    `timer(phase)`: a context timing "backward" and "optimizer" (speed.PhaseTimer)."""
    timer = timer or (lambda phase: contextlib.nullcontext())
    sums: dict[str, torch.Tensor] = {}
    grad_norm = None
    for micro in range(grad_accum):
        with acc.accumulate(model):
            terms = micro_step(step * grad_accum + micro)
            with timer("backward"):
                acc.backward(terms["loss"])  # accelerate divides by grad_accum
            with timer("optimizer"):
                if acc.sync_gradients and max_grad_norm is not None:
                    grad_norm = acc.clip_grad_norm_(trainable, max_grad_norm)
                optimizer.step()  # a no-op until the last micro-step
                optimizer.zero_grad(set_to_none=True)
        for k, v in terms.items():
            sums[k] = sums.get(k, 0.0) + v.detach().float() / grad_accum
    return sums, grad_norm


def finish_step(acc, log: JsonlLog, bar, sums: dict[str, torch.Tensor], step: int, epoch: int, lr: float,
                grad_norm, t0: float, on_nonfinite=None, now: float | None = None) -> dict:
    """Log optimiser step `step` (every term, averaged over micro-steps and processes) and advance
    the progress bar; returns the record. `on_nonfinite(step, terms)` is called (and should raise)
    before a NaN / inf term is logged. `now`: the step's end time (default: now), for `time_s`."""
    keys = sorted(sums)
    values = acc.reduce(torch.stack([sums[k] for k in keys]), reduction="mean").tolist()
    if on_nonfinite is not None and not all(np.isfinite(values)):
        on_nonfinite(step, dict(zip(keys, values)))
    record = {"step": step, "epoch": epoch, "lr": lr, **dict(zip(keys, values))}
    if grad_norm is not None:
        record["grad_norm"] = float(grad_norm)
    record["time_s"] = round((now if now is not None else time.perf_counter()) - t0, 4)
    log.write(record)
    bar.set_postfix({k: f"{v:.4g}" for k, v in record.items() if k.startswith("loss")}, refresh=False)
    bar.update(1)
    return record


def _noise_scheduler(config: dict):
    """The training noise schedule: DDPM with the pipeline scheduler's betas and prediction type."""
    from diffusers import DDPMScheduler

    keep = {k: v for k, v in config.items() if not k.startswith("_")}
    return DDPMScheduler.from_config(keep)


def _progress_bar(total: int, initial: int, enabled: bool, desc: str = "distill"):
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, disable=not enabled, unit="step", dynamic_ncols=True, desc=desc)


def _plot(log_path: Path, png: Path, keys: list[str]) -> Path | None:
    """Loss curves of every logged term from the JSONL log (None when no step was logged)."""
    from slimdiff.report.plots import plot_loss_curves

    if not keys or not log_path.is_file() or not log_path.read_text().strip():
        return None
    return plot_loss_curves(log_path, png, keys=keys, title="distillation losses")
