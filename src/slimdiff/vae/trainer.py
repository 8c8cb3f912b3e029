"""The decoder-distillation run (`distill_vae`): latents, models, the loop, the outputs.

Built from the distillation trainer's generic pieces (`make_accelerator`, `optimizer_step`,
`finish_step`, `GlobalBatchSampler`, `JsonlLog`; `checkpoint.resume_point` / `maybe_save`).
See `slimdiff.vae.distill` for the method and the settings.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from slimdiff.distill import checkpoint as ckpt
from slimdiff.distill.losses import mse, perceptual_loss
from slimdiff.distill.trainer import (
    DTYPES,
    GlobalBatchSampler,
    JsonlLog,
    _plot,
    _progress_bar,
    finish_step,
    make_accelerator,
    optimizer_step,
    random_generator,
)
from slimdiff.io import atomic_path
from slimdiff.vae.distill import VaeDistillConfig, VaeDistillResult, _Decoding, decoded, psnr

_POOL_SEED_STREAM = 7  # random_generator stream of the data latents' posterior samples
POOL_KEYS = ("latents", "num_latents", "eval_latents", "prompts", "gen_steps", "guidance", "data", "toy_size",
             "resolution", "seed", "teacher")  # the settings that determine the latent pool


class VaeTrainer:
    def __init__(self, config: VaeDistillConfig, student=None, progress: bool = True):
        from slimdiff.vae.model import load_vae

        self.cfg = cfg = config
        self.progress, self.out = progress, Path(cfg.out)
        # 1. accelerate; 2. resume point (a mismatched config fails before anything loads)
        self.acc = acc = make_accelerator(cfg.mixed_precision, cfg.grad_accum, cfg.cpu)
        self.rank, self.world, self.device = acc.process_index, acc.num_processes, acc.device
        self.dtype = DTYPES[cfg.mixed_precision]
        if acc.is_main_process:
            ckpt.remove_junk(self.out / "checkpoints")
        acc.wait_for_everyone()
        self.resume_dir, self.start_step = ckpt.resume_point(cfg, self.out, self.world)

        # 3. teacher and student VAEs (checks: paths, a VAE each, same latent space and image channels)
        from slimdiff.distill.loading import check_path

        check_path("--teacher", cfg.teacher)
        if student is None:
            check_path("--student", cfg.student)
        self.teacher = _load("--teacher", cfg.teacher, load_vae)
        if student is None:
            if cfg.student is None:
                raise ValueError("no student: set --student (a `slimdiff prune-vae` output) or pass student=")
            student = _load("--student", cfg.student, load_vae)
        if student is self.teacher:
            raise ValueError("teacher and student are the same object; load the student separately")
        for key in ("latent_channels", "out_channels"):
            if student.config[key] != self.teacher.config[key]:
                raise ValueError(f"teacher and student VAEs differ in {key}: {self.teacher.config[key]} vs "
                                 f"{student.config[key]}")
        self.student = student
        recipe_path = Path(cfg.student) / "recipe.json" if cfg.student else None
        self.input_recipe = json.loads(recipe_path.read_text()) if recipe_path and recipe_path.is_file() else {}

        # 4. the latent pool: built once by the main process (U-Net generations / encoder latents)
        if acc.is_main_process:
            self.out.mkdir(parents=True, exist_ok=True)
            _ensure_pool(cfg, self.teacher, self.device, self.out / "latents.safetensors", progress)
        acc.wait_for_everyone()
        pool = load_file(str(self.out / "latents.safetensors"))
        self.train_z, self.eval_z = pool["train"], pool["eval"]  # (N, C, h, w), (E, C, h, w)
        if len(self.train_z) < cfg.batch_size * self.world:
            raise ValueError(f"{len(self.train_z)} training latents, fewer than the global batch "
                             f"{cfg.batch_size * self.world}")

        # 5. perceptual network; 6. frozen teacher, trainable decoding path of the student
        self.perc_net = None
        if cfg.lambda_perc > 0:
            from slimdiff.distill.loading import is_pipeline_source
            from slimdiff.distill.perceptual import load_perceptual_net

            toy = cfg.teacher == "toy" or (is_pipeline_source(cfg.teacher) and _is_toy(cfg.teacher))
            self.perc_net = load_perceptual_net(cfg.perceptual_net, cfg.perceptual_weights, toy)
            self.perc_net.to(self.device, self.dtype).requires_grad_(False).eval()
        self.teacher.requires_grad_(False).eval().to(self.device)
        if self.dtype != torch.float32:
            self.teacher.to(self.dtype)
        self.student.requires_grad_(False).to(self.device)
        decoding = _Decoding(self.student).requires_grad_(True).train()
        self.trainable = [q for q in decoding.parameters()]
        self.teacher_eval = decoded(self._teacher_decode, self.eval_z)  # (E, 3, H, W)
        self.psnr_before = psnr(decoded(lambda z: decoding(z.to(self.device)), self.eval_z), self.teacher_eval)

        # 7. optimiser, LR schedule; wrap the decoding path; resume
        from diffusers.optimization import get_scheduler

        self.optimizer = torch.optim.AdamW(self.trainable, lr=cfg.learning_rate, weight_decay=cfg.adam_weight_decay)
        self.lr_scheduler = get_scheduler(cfg.lr_scheduler, self.optimizer, num_warmup_steps=cfg.lr_warmup_steps,
                                          num_training_steps=cfg.max_steps)
        self.model, self.optimizer = acc.prepare(decoding, self.optimizer)
        ckpt.install_portable_model_hooks(acc)
        if self.resume_dir is not None:  # the LR schedule as JSON beside accelerate's state (no pickles)
            acc.load_state(str(self.resume_dir))
            self.lr_scheduler.load_state_dict(ckpt.load_state(self.resume_dir, "lr_scheduler"))

    @torch.no_grad()
    def _teacher_decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.teacher.decode(z.to(self.device, self.dtype)).sample

    def _micro_step(self, rows: list[int]) -> dict[str, torch.Tensor]:
        """Loss terms of one micro-batch: latents z (b, C, h, w) -> images (b, 3, H, W) in [-1, 1]."""
        z = self.train_z[rows].to(self.device)
        with self.acc.autocast():
            img_s = self.model(z)
        img_t = self._teacher_decode(z).float()
        terms: dict[str, torch.Tensor] = {}
        if self.cfg.lambda_mse > 0:
            terms["loss_mse"] = mse(img_s, img_t)
        if self.cfg.lambda_perc > 0:
            with self.acc.autocast():
                terms["loss_perc"] = perceptual_loss(self.perc_net, (img_s + 1) / 2, (img_t.to(self.dtype) + 1) / 2)
        terms["loss"] = sum({"loss_mse": self.cfg.lambda_mse, "loss_perc": self.cfg.lambda_perc}[k] * v
                            for k, v in terms.items())
        return terms

    def run(self) -> VaeDistillResult:
        cfg, acc = self.cfg, self.acc
        main = acc.is_main_process
        log = JsonlLog(self.out / "train_log.jsonl", self.start_step if self.resume_dir else None, main)
        sampler = GlobalBatchSampler(len(self.train_z), cfg.batch_size, self.rank, self.world, cfg.seed,
                                     start=self.start_step * cfg.grad_accum, stop=cfg.max_steps * cfg.grad_accum)
        batches = iter(sampler)
        bar = _progress_bar(cfg.max_steps, self.start_step, enabled=self.progress and main, desc="distill-vae")
        record: dict = {}
        t0 = time.perf_counter()
        for step in range(self.start_step, cfg.max_steps):
            sums, grad_norm = optimizer_step(acc, self.model, self.optimizer, self.trainable, step, cfg.grad_accum,
                                             cfg.max_grad_norm, lambda p: self._micro_step(next(batches)))
            self.lr_scheduler.step()
            record = finish_step(acc, log, bar, sums, step + 1, sampler.epoch_of((step + 1) * cfg.grad_accum - 1),
                                 self.lr_scheduler.get_last_lr()[0], grad_norm, t0)
            ckpt.maybe_save(acc, self.out / "checkpoints", cfg, step + 1, self.world,
                            states=lambda: {"lr_scheduler": self.lr_scheduler.state_dict()})
        elapsed = time.perf_counter() - t0
        bar.close()
        steps_per_sec = (cfg.max_steps - self.start_step) / elapsed if elapsed > 0 else float("nan")
        return self._finish(record, steps_per_sec, log.path)

    def _finish(self, record: dict, steps_per_sec: float, log_path: Path) -> VaeDistillResult:
        from slimdiff import __version__
        from slimdiff.distill.loading import is_pipeline_source
        from slimdiff.vae.model import save_pipeline_with_vae, save_vae

        acc, cfg = self.acc, self.cfg
        acc.wait_for_everyone()
        decoding = acc.unwrap_model(self.model).eval().requires_grad_(False)
        student = self.student.eval()
        psnr_after = psnr(decoded(lambda z: decoding(z.to(self.device)), self.eval_z), self.teacher_eval)
        losses = {k: v for k, v in record.items() if k.startswith("loss")}
        pipeline_dir = None
        if acc.is_main_process:
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
            save_vae(student, self.out, recipe=recipe)
            _plot(log_path, self.out / "loss_curves.png", sorted(losses))
            if is_pipeline_source(cfg.teacher):
                pipeline_dir = save_pipeline_with_vae(cfg.teacher, student, self.out / "pipeline")
        acc.wait_for_everyone()
        return VaeDistillResult(student=student, out=self.out, steps=cfg.max_steps, losses=losses,
                                psnr_before=self.psnr_before, psnr_after=psnr_after, steps_per_sec=steps_per_sec,
                                log_path=log_path, pipeline_dir=pipeline_dir)


# ---------------------------------------------------------------------------------- helpers


def _load(flag: str, value: str, fn):
    try:
        return fn(value)
    except (ValueError, FileNotFoundError, OSError) as e:
        raise type(e)(f"{flag} {value!r}: {e}") from None


def _is_toy(source: str) -> bool:
    from slimdiff.toy import pipeline_path

    return Path(source).resolve() == Path(pipeline_path()).resolve()


def _ensure_pool(cfg: VaeDistillConfig, teacher, device, path: Path, progress: bool) -> None:
    """Write `path` (train / eval latents, VAE-native: what post_quant_conv takes) unless a pool
    made with the same settings is there already."""
    about = json.dumps({k: getattr(cfg, k) for k in POOL_KEYS}, sort_keys=True)
    if path.is_file():
        from safetensors import safe_open

        with safe_open(str(path), "pt") as f:
            if (f.metadata() or {}).get("settings") == about:
                return
    n, e = cfg.num_latents, cfg.eval_latents
    parts = []
    if cfg.latents in ("unet", "both"):
        parts.append(unet_latents(cfg, n + e, device, progress))
    if cfg.latents in ("data", "both"):
        parts.append(data_latents(cfg, teacher, n + e, device))
    train = torch.cat([p[:n] for p in parts]).contiguous()
    held = torch.cat([p[n:] for p in parts]).contiguous()
    with atomic_path(path) as tmp:
        save_file({"train": train, "eval": held}, str(tmp), metadata={"settings": about})


@torch.no_grad()
def unet_latents(cfg: VaeDistillConfig, n: int, device, progress: bool) -> torch.Tensor:
    """n latents (n, C, h, w) of the teacher pipeline generating from prompts (SnapFusion's pairs):
    prompt i (cycled) with noise seeded `seed + i`, the pipeline's sampler, divided by the VAE's
    scaling factor (what the pipeline hands its decoder)."""
    from slimdiff.eval.runner import default_sampling, image_generators, is_toy_pipeline, read_prompts
    from slimdiff.unet import load_pipeline

    pipe = _load("--teacher", cfg.teacher, load_pipeline).to(device)
    pipe.set_progress_bar_config(disable=True)
    toy = is_toy_pipeline(pipe)
    if cfg.prompts is not None:
        prompts = read_prompts(cfg.prompts)
    elif toy:
        from slimdiff.toy import world

        prompts = [world.caption(s) for s in world.sample_scenes("train", n, cfg.seed)]
    else:
        raise ValueError(f"the teacher {cfg.teacher!r} is not the toy world: give --prompts FILE for the U-Net latents")
    if not prompts:
        raise ValueError(f"--prompts {cfg.prompts!r} holds no prompt")
    steps, guidance = default_sampling(pipe, toy)
    steps, guidance = cfg.gen_steps or steps, guidance if cfg.guidance is None else cfg.guidance
    out, batch = [], 8
    from tqdm.auto import tqdm

    for start in tqdm(range(0, n, batch), desc="U-Net latents", disable=not progress):
        k = min(batch, n - start)
        chunk = [prompts[(start + j) % len(prompts)] for j in range(k)]
        lat = pipe(prompt=chunk, num_inference_steps=steps, guidance_scale=guidance,
                   generator=image_generators(cfg.seed, k, start), output_type="latent").images
        out.append(lat.float().cpu() / pipe.vae.config.scaling_factor)
    return torch.cat(out)


@torch.no_grad()
def data_latents(cfg: VaeDistillConfig, teacher, n: int, device) -> torch.Tensor:
    """n encoder latents (n, C, h, w) of data images: a seeded choice of items, one seeded
    posterior sample each (mean + std * eps), VAE-native scale."""
    from slimdiff.data import build_dataset

    resolution = cfg.resolution or int(teacher.config.sample_size)
    data = build_dataset(cfg.data, resolution, seed=cfg.seed, toy_size=cfg.toy_size)
    if len(data) < n:
        raise ValueError(f"data {cfg.data!r} has {len(data)} items, fewer than num_latents + eval_latents = {n}")
    g = random_generator(cfg.seed, 0, _POOL_SEED_STREAM)
    order = torch.randperm(len(data), generator=g)[:n].tolist()
    encoder = teacher.to(device)
    out = []
    for start in range(0, n, 16):
        pix = torch.stack([data[i]["pixel_values"] for i in order[start:start + 16]])  # (b, 3, H, W) in [-1, 1]
        dist = encoder.encode(pix.to(device, next(encoder.parameters()).dtype)).latent_dist
        eps = torch.randn(dist.mean.shape, generator=g)
        out.append((dist.mean.float().cpu() + dist.std.float().cpu() * eps))
    return torch.cat(out)
