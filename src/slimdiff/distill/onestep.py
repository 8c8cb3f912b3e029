"""One-step generation: DMD2's distribution matching (Yin et al. 2024, "Improved Distribution Matching
Distillation for Fast Image Synthesis"), written from the paper.

    from slimdiff.distill.onestep import OneStepConfig, one_step_distill
    one_step_distill(OneStepConfig(teacher="toy", student="runs/lcm", out="runs/dmd2"))      # 1 step
    one_step_distill(OneStepConfig(teacher="toy", student="toy", steps=4, out="runs/dmd2-4"))  # 4 (and 2, 1)
    StableDiffusionPipeline.from_pretrained("runs/dmd2/pipeline")(prompt, num_inference_steps=1, guidance_scale=5)

Notation as `slimdiff.train.maths` (a_t = sqrt(ab_t), s_t = sqrt(1 - ab_t), z_t = a_t x0 + s_t eps).
Three U-Nets: the generator G (the student, trained; reads w through `time_cond_proj_dim` as LCM's students
do, so one U-Net call per step), the real score (the frozen teacher, classifier-free guided at w) and the fake
score f (a copy of the teacher, reading w, zero-initialised w projection; trained on G's samples).

Generator sample (K = `steps`; t_0 > ... > t_{K-1}: LCMScheduler's K timesteps on its `solver_steps` grid, so
the pipeline samples exactly as trained). x = c_skip(t_i) z + c_out(t_i) x0_G(z, t_i, w), LCMScheduler's
boundary scalings (c_out(999) = 1 - 2.5e-9). K = 1: z ~ N(0, I) at t_0 = 999. K > 1 (DMD2 sec. 4.5, "backward
simulation"): row i ~ U{0..K-1} starts from noise and runs G for i steps without gradient, re-noising its x0
to t_{j+1} with fresh noise (what LCMScheduler does when sampling), then the step at t_i keeps its gradient.

Distribution matching (DMD eq. 7-8; DMD2 sec. 4). t ~ U[t_min T, t_max T], x_t = a_t x + s_t eps (x detached):
    x0_real = the teacher's guided x0 at (x_t, t, w)      (w out(c) - (w - 1) out(null))
    x0_fake = the fake score's x0 at (x_t, t, w)
    grad = (x0_fake - x0_real) / mean_{C,h,w} |x - x0_real|            (per row; the score difference
           s_fake - s_real = a_t (x0_fake - x0_real) / s_t^2, normalised by DMD's weighting)
    loss_dmd = 0.5 mean (x - sg(x - grad))^2      (its gradient w.r.t. x is grad / numel: the KL's direction)
Fake score (DMD2 sec. 4.2, the two time-scale update rule): after the gradient above is read (f has seen only
earlier samples, as in DMD2's alternating updates; updated on x first, f would partly fit the very samples it
judges), `fake_ratio` updates of f: the first on x (detached), the others on fresh samples of the same rows (new
noise, no gradient); each with its own t ~ U{0..T-1} and noise, the teacher's denoising loss
mse(f(x_t, t, w), target) (target: eps / v / x0 as the teacher predicts), its own AdamW (`fake_learning_rate`),
clipping and (several processes) averaged gradients. The sanity identity: when f is the teacher and w = 1,
x0_fake = x0_real and the generator's gradient is zero.
GAN (optional, DMD2 sec. 4.3; `lambda_gan` > 0): a head on the fake score's mid-block features of x_t
(B, C, h, w) -> a logit (B,); f and the head learn softplus(D(fake)) + softplus(-D(real)) on noised generator
samples and noised data latents (weight `lambda_gan_fake`); the generator adds lambda_gan softplus(-D(x_t)).
Regression (optional, DMD sec. 3.3; `lambda_reg` > 0): lambda_reg mse(x0_G(z_i, t_0, w), x_i) on b pairs
a micro-step drawn from the guided teacher's DDIM pairs (`slimdiff.distill.dmd.teacher_pairs`: made once, cached
in `reg_file`), the generator at the sampling guidance; latent MSE where DMD's images use LPIPS.

Output (`out/`): the generator and recipe.json (`one_step_distill`: the settings; `sampling`: steps, guidance,
LCMScheduler, one U-Net call a step; `sampling_steps`: the step counts whose timesteps G was trained at), and
`out/pipeline/`, a plain StableDiffusionPipeline with `LCMScheduler`. Checkpoints (the core's, pickle-free)
hold the generator, its optimiser, LR schedule and EMA, and (`fake.json` + `fake.safetensors`) the fake score,
the GAN head and their optimiser; a run resumes exactly after kill -9.
"""

from __future__ import annotations

import copy
import dataclasses
import inspect
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from diffusers import LCMScheduler
from torch import nn

from slimdiff.distill.config import KD_WEIGHTS, DistillConfig
from slimdiff.distill.features import FeatureRecorder, block_names
from slimdiff.distill.guidance import add_guidance_embedding, guided_output
from slimdiff.distill.kd import DistillResult, KdTrainer
from slimdiff.distill.lcm import boundary_scalings
from slimdiff.distill.dmd import (GanHead, dmd_gradient, dmd_loss, gan_losses, generator_timesteps, teacher_pairs,
                                  trained_step_counts)
from slimdiff.recipe import read_recipe, write_recipe
from slimdiff.sample import fill_sampling
from slimdiff.sample.conditioning import Conditioning
from slimdiff.train import checkpoint as ckpt
from slimdiff.train import sharded
from slimdiff.train.speed import peak_memory
from slimdiff.train.maths import alpha_sigma, embed_dim, guidance_embedding, task_target, to_x0_eps

Tensor = torch.Tensor


@dataclasses.dataclass
class OneStepConfig(DistillConfig):
    """`DistillConfig` (models, data, optimisation, bookkeeping) plus DMD2's settings."""

    out: str = "runs/dmd2"
    method: str = "dmd2"  # the one method built (UFOGen: issue 21's documented alternative, not built)
    steps: int = 1  # K generator steps (1; 2 or 4 with backward simulation); samples at K and at its sub-grids
    solver_steps: int = 50  # LCMScheduler's original_inference_steps: the grid the K timesteps are taken from
    guidance_min: float | None = None  # w ~ U[min, max] fed to G, the real and the fake score;
    guidance_max: float | None = None  # None: both the world's sampling guidance (toy 5, else 7.5)
    guidance: float | None = None  # sampling guidance written to the recipe (None: the middle of the range)
    guidance_embed_dim: int = 256  # LCM's w_embedding_dim (an LCM student already has it)
    fake_ratio: int = 5  # fake-score updates per generator micro-step (DMD2's TTUR: 5)
    fake_learning_rate: float | None = None  # the fake score's AdamW rate (None: learning_rate, as DMD2)
    t_min: float = 0.02  # the DMD gradient's t ~ U[t_min T, t_max T] (DMD2: 0.02, 0.98)
    t_max: float = 0.98
    lambda_gan: float = 0.0  # the generator's GAN term (0: no head; DMD2 uses a small weight, e.g. 1e-3)
    lambda_gan_fake: float = 0.01  # the head's classification loss in the fake score's update (lambda_gan > 0)
    lambda_reg: float = 0.0  # DMD's regression term on teacher pairs (0: none; `slimdiff.distill.pairs`)
    reg_pairs: int = 2048  # pairs of the first items' captions (lambda_reg > 0)
    reg_steps: int = 16  # the teacher's DDIM steps that make a pair
    reg_file: str | None = None  # where the pairs are cached (None: out/teacher_pairs.safetensors)
    lambda_task: float = 0.0  # must stay 0: DMD's terms are the only loss
    lambda_out: float = 0.0
    lambda_feat: float = 0.0
    caption_dropout: float = 0.0  # the generator samples without CFG: no unconditional rows needed

    def __post_init__(self):
        super().__post_init__()

        def bad(field: str, valid: str):
            raise ValueError(f"OneStepConfig.{field}={getattr(self, field)!r} is invalid: {valid}")

        if self.method != "dmd2":
            bad("method", "choose 'dmd2' (UFOGen is not built)")
        self.check_ints(("steps", "solver_steps", "guidance_embed_dim", "reg_pairs", "reg_steps"), 1)
        if isinstance(self.fake_ratio, bool) or not isinstance(self.fake_ratio, int) or self.fake_ratio < 1:
            bad("fake_ratio", "an integer >= 1 (fake-score updates per generator step; DMD2: 5)")
        if self.steps > self.solver_steps:
            bad("steps", f"at most solver_steps={self.solver_steps}: the generator's steps are LCMScheduler's "
                         f"timesteps on that grid")
        if self.fake_learning_rate is not None and not self.fake_learning_rate > 0:
            bad("fake_learning_rate", "None (= learning_rate) or a positive number")
        if not 0.0 <= self.t_min < self.t_max <= 1.0:
            raise ValueError(f"OneStepConfig t range [{self.t_min}, {self.t_max}] is invalid: 0 <= t_min < t_max <= 1")
        for name in ("lambda_gan", "lambda_gan_fake", "lambda_reg"):
            if not getattr(self, name) >= 0:
                bad(name, ">= 0")
        self._check_guidance_range()

    def _check_loss_weights(self) -> None:
        self._refuse_kd_weights(KD_WEIGHTS, "DMD2 trains on its own terms only")


def one_step_distill(config: OneStepConfig, teacher: nn.Module | None = None, student: nn.Module | None = None,
                     pipeline: Any = None, progress: bool = True) -> DistillResult:
    """Train a `config.steps`-step generator from `student` against `teacher` (module doc); outputs in `config.out`."""
    return OneStepTrainer(config, teacher, student, pipeline, progress).run()


# ---------------------------------------------------------------------------------- the trainer


class OneStepTrainer(KdTrainer):
    """`KdTrainer` (set-up, data, loop, outputs) with DMD2's generator loss, a fake score and its optimiser."""

    name = "one-step-distill"

    def __init__(self, config: OneStepConfig, teacher=None, student=None, pipeline=None, progress=True):
        if not isinstance(config, OneStepConfig):
            raise ValueError(f"OneStepTrainer needs a OneStepConfig, got {type(config).__name__}")
        self.fake = self.head = self.fake_optimizer = self.pairs = None
        super().__init__(config, teacher, student, pipeline, progress)
        cfg = self.cfg
        self.teacher_pred = self.prediction_type
        self.timesteps = generator_timesteps(self.parts.scheduler_config, cfg.steps, cfg.solver_steps).to(self.device)
        world = fill_sampling(self.parts.pipeline, None, None, self.parts.toy_world)[1]
        self.w_range = (cfg.guidance_min, cfg.guidance_max) if cfg.guidance_min is not None else (world, world)
        self.sample_guidance = cfg.guidance if cfg.guidance is not None else sum(self.w_range) / 2
        if cfg.lambda_reg > 0:  # made once by the guided teacher (every process makes or reads the same file)
            if cfg.reg_pairs > self.dataset_size:
                raise ValueError(f"OneStepConfig.reg_pairs={cfg.reg_pairs} is invalid: at most the data's "
                                 f"{self.dataset_size} items (a pair per item's caption)")
            with self.accelerator.main_process_first():
                self.pairs = teacher_pairs(
                    cfg.reg_file or self.out / "teacher_pairs.safetensors", self.teacher, self.parts.scheduler_config,
                    self.teacher_pred, self._item_text, (self.teacher.config.in_channels, *self._latent_size()),
                    self.empty_text, cfg.reg_pairs, cfg.reg_steps, self.sample_guidance, cfg.seed,
                    getattr(self.dataset.base, "fingerprint", cfg.data))

    def _item_text(self, indices: list[int]) -> Conditioning:
        """The text conditioning (b rows) of data items `indices` (no caption dropout)."""
        _, hidden, added = self.data.encoder.encode([self.dataset[i] for i in indices])
        return Conditioning(hidden, added).to(self.device)

    def _latent_size(self) -> tuple[int, int]:
        h = self.resolution // 2 ** (len(self.parts.vae.config.block_out_channels) - 1)
        return h, h

    def _guidance_dim(self) -> None:
        return None  # the KD path feeds no w; `_micro_step` feeds each network its own

    def _prepare_student(self, student: nn.Module) -> nn.Module:
        return add_guidance_embedding(student, self.cfg.guidance_embed_dim)

    def prepare(self, model: nn.Module, trainable: list) -> None:
        """The fake score (a w-reading copy of the teacher), the GAN head, their AdamW; then the core's prepare."""
        cfg = self.cfg
        self.fake = add_guidance_embedding(copy.deepcopy(self.teacher).float(), cfg.guidance_embed_dim)
        self.fake.to(self.device).train().requires_grad_(True)
        if cfg.lambda_gan > 0:
            names = block_names(self.fake)
            where = "mid" if "mid" in names else [n for n in names if n.startswith("down.")][-1]
            self.recorder = FeatureRecorder(self.fake, [where], "GAN head feature")
            with torch.no_grad():  # the feature width, from one batch-1 call
                x = torch.zeros(1, self.fake.config.in_channels, *self._latent_size(), device=self.device)
                t = torch.zeros(1, dtype=torch.long, device=self.device)
                self.fake(x, t, **self.data.probe_text.to(dtype=torch.float32).kwargs())
            with torch.random.fork_rng(devices=[]):  # the head's initial weights: a function of the seed
                torch.manual_seed(cfg.seed)
                self.head = GanHead(self.recorder.pop()[where].shape[1]).to(self.device)
            self.gan_feature = where
        super().prepare(model, trainable)  # (`_on_wrapped` builds the fake score's optimiser)
        if self.resume_dir is not None and not self.fsdp2:  # (FSDP2: in each process's shard file)
            state = ckpt.load_state(self.resume_dir, "fake")
            self.fake.load_state_dict(state["fake"])
            if self.head is not None:
                self.head.load_state_dict(state["head"])
            opt = state["optimizer"]  # JSON made the per-parameter state's keys strings: torch wants the indices
            self.fake_optimizer.load_state_dict({**opt, "state": {int(k): v for k, v in opt["state"].items()}})

    def _on_wrapped(self) -> None:
        """The fake score's (and head's) AdamW; under FSDP2 the fake score is first sharded on the generator's mesh."""
        cfg, both = self.cfg, [m for m in (self.fake, self.head) if m is not None]
        if self.fsdp2 and self.head is not None:  # (its input is a hook's feature, not the fake score's output)
            raise ValueError(f"lambda_gan={cfg.lambda_gan} under FSDP2: the GAN head reads the fake score's mid-block "
                             f"features, a path FSDP2's backward does not gather the weights for (valid: 0, or DDP)")
        if self.fsdp2:
            sharded.shard_module(self.fake, self.accelerator.unwrap_model(self.model))
        self.fake_params = [q for m in both for q in m.parameters()]
        self.fake_optimizer = torch.optim.AdamW(self.fake_params, lr=cfg.fake_learning_rate or cfg.learning_rate,
                                                betas=(cfg.adam_beta1, cfg.adam_beta2),
                                                weight_decay=cfg.adam_weight_decay, eps=cfg.adam_epsilon)

    def _sharded_parts(self) -> dict:  # (FSDP2 only: no GAN head)
        return {"fake": (nn.ModuleDict({"fake": self.fake}), self.fake_optimizer)}

    def _checkpoint_states(self) -> dict[str, dict]:
        states = super()._checkpoint_states()
        if not self.fsdp2:  # (FSDP2: in each process's shard file, `_sharded_parts`)
            states["fake"] = {"fake": self.fake.state_dict(), "optimizer": self.fake_optimizer.state_dict(),
                              **({"head": self.head.state_dict()} if self.head is not None else {})}
        return states

    def close(self) -> None:
        if getattr(self, "head", None) is not None:
            self.recorder.remove()
        super().close()

    # ------------------------------------------------------------------------------ one step

    def _x0(self, model: nn.Module, z: Tensor, t: Tensor, text: Conditioning, w: Tensor) -> Tensor:
        """x0 of a w-reading U-Net's output at (z, t) (the teacher's prediction type)."""
        emb = guidance_embedding(w, self.cfg.guidance_embed_dim).to(z)
        out = model(z, t, **text.kwargs(), timestep_cond=emb).sample.float()
        return to_x0_eps(self.teacher_pred, z, out, *alpha_sigma(self.alphas_cumprod[t]))[0]

    def _generate(self, model: nn.Module, z: Tensor, t: Tensor, text: Conditioning, w: Tensor) -> Tensor:
        """The generator's sample at (z, t): c_skip z + c_out x0_G (LCMScheduler's denoised output)."""
        c_skip, c_out = boundary_scalings(t)
        return c_skip * z + c_out * self._x0(model, z, t, text, w)

    def _generator_input(self, noise: Tensor, text: Conditioning, w: Tensor, g: torch.Generator, rows: slice
                         ) -> tuple[Tensor, Tensor]:
        """(z, t) of each row: noise at t_0, or (K > 1) backward simulation to step i ~ U{0..K-1} without gradient."""
        K, G = len(self.timesteps), noise.shape[0] * self.world
        if K == 1:
            return noise, self.timesteps[:1].expand(noise.shape[0])
        step = torch.randint(0, K, (G,), generator=g)[rows].to(self.device)  # (b,)
        renoise = torch.randn(K - 1, G, *noise.shape[1:], generator=g)[:, rows].to(self.device)
        z = noise
        with torch.no_grad():
            for j in range(int(step.max())):
                x = self._generate(self.model, z, self.timesteps[j].expand(z.shape[0]), text, w)
                a, s = alpha_sigma(self.alphas_cumprod[self.timesteps[j + 1]].expand(z.shape[0]))
                z = torch.where((step > j).view(-1, 1, 1, 1), a * x + s * renoise[j], z)
        return z, self.timesteps[step]

    def _fake_update(self, x: Tensor, real: Tensor, text: Conditioning, w: Tensor, g: torch.Generator, rows: slice
                     ) -> dict[str, Tensor]:
        """One update of the fake score (and GAN head) on generator samples x (detached): the denoising loss
        (+ the head's classification loss). Returns the detached terms."""
        cfg, G = self.cfg, x.shape[0] * self.world
        t = torch.randint(0, self.num_train_timesteps, (G,), generator=g)[rows].to(self.device)
        eps = torch.randn(G, *x.shape[1:], generator=g)[rows].to(self.device)
        a, s = alpha_sigma(self.alphas_cumprod[t])
        emb = guidance_embedding(w, cfg.guidance_embed_dim).to(x)
        with self.accelerator.autocast():
            out = self.fake(a * x + s * eps, t, **text.kwargs(), timestep_cond=emb).sample.float()
        target = task_target(self.teacher_pred, x, eps, t, self.alphas_cumprod)
        terms = {"loss_fake": F.mse_loss(out, target.float())}
        total = terms["loss_fake"]
        if self.head is not None:  # the head judges noised generator samples against noised data (same t, eps)
            fake_logits = self.head(self.recorder.pop()[self.gan_feature])
            with self.accelerator.autocast():
                self.fake(a * real + s * eps, t, **text.kwargs(), timestep_cond=emb)
            real_logits = self.head(self.recorder.pop()[self.gan_feature])
            terms["loss_gan_d"] = gan_losses(real_logits, fake_logits)[0]
            total = total + cfg.lambda_gan_fake * terms["loss_gan_d"]
        self.fake_optimizer.zero_grad(set_to_none=True)
        total.backward()
        grads = [p.grad for p in self.fake_params if p.grad is not None]
        if self.world > 1 and not self.fsdp2:  # the processes' gradients averaged (FSDP2: by its reduce-scatter)
            for p in grads:
                p.copy_(self.accelerator.reduce(p, reduction="mean"))
        if cfg.max_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(self.fake_params, cfg.max_grad_norm)
        self.fake_optimizer.step()
        self.fake_optimizer.zero_grad(set_to_none=True)
        return {k: v.detach() for k, v in terms.items()}

    def _micro_step(self, items: list[dict], position: int) -> dict[str, Tensor]:
        """Numbered steps: 1 randomness, 2 the generator's sample, 3 DMD's gradient, 4 the fake score's updates,
        5 the GAN term, 6 the regression term."""
        cfg = self.cfg
        # 1. encodings and randomness (all from the micro-step's generator g: exact resume)
        latents, noise, text, _, g, rows = self.data.sample(items, position)
        lo, hi = self.w_range
        G = latents.shape[0] * self.world
        w = (lo + (hi - lo) * torch.rand(G, generator=g))[rows].to(self.device)
        # 2. the generator's sample x (B, C, h, w), with its gradient
        x = self._generate(self.model, *self._generator_input(noise, text, w, g, rows), text, w)
        # 3. the distribution-matching gradient at a noised x (real: the guided teacher; fake: the fake score as
        #    it stands, trained on earlier samples: DMD2's generator turn comes before the fake score's update on x)
        T = self.num_train_timesteps
        t = torch.randint(int(cfg.t_min * T), int(cfg.t_max * T), (G,), generator=g)[rows].to(self.device)
        eps = torch.randn(G, *x.shape[1:], generator=g)[rows].to(self.device)
        a, s = alpha_sigma(self.alphas_cumprod[t])
        x_t = a * x.detach() + s * eps
        with torch.no_grad():
            out, _ = guided_output(self.teacher, x_t.to(self.dtype), t, text.to(dtype=self.dtype),
                                   self.empty_text.to(dtype=self.dtype), w, embed_dim(self.teacher))
            x0_real = to_x0_eps(self.teacher_pred, x_t, out.float(), a, s)[0]
            with self.accelerator.autocast():
                x0_fake = self._x0(self.fake, x_t, t, text, w)
        loss = dmd_loss(x, dmd_gradient(x.detach(), x0_real, x0_fake))
        terms = {"loss_dmd": loss.detach()}
        # 4. the fake score follows the generator: fake_ratio updates, on x (detached), then on fresh samples
        sample = x.detach()
        for k in range(cfg.fake_ratio):
            if k > 0:  # a new generator sample of the same rows (fresh noise, no gradient)
                fresh = torch.randn(G, *x.shape[1:], generator=g)[rows].to(self.device)
                with torch.no_grad():
                    sample = self._generate(self.model, *self._generator_input(fresh, text, w, g, rows), text, w)
            for name, v in self._fake_update(sample, latents, text, w, g, rows).items():
                terms[name] = terms.get(name, 0.0) + v / cfg.fake_ratio
        # 5. the generator's GAN term, through the (frozen) fake score's features of its noised sample
        if self.head is not None:
            frozen = [self.fake, self.head]
            for m in frozen:
                m.requires_grad_(False)
            try:
                self.recorder.pop()
                with self.accelerator.autocast():
                    self.fake(a * x + s * eps, t, **text.kwargs(),
                              timestep_cond=guidance_embedding(w, cfg.guidance_embed_dim).to(x))
                terms["loss_gan_g"] = F.softplus(-self.head(self.recorder.pop()[self.gan_feature])).mean()
            finally:
                for m in frozen:
                    m.requires_grad_(True)
            loss = loss + cfg.lambda_gan * terms["loss_gan_g"]
        # 6. DMD's regression term: the one-step map on the teacher's own noise -> image pairs
        if self.pairs is not None:
            j = torch.randint(0, len(self.pairs.index), (G,), generator=g)[rows]
            w_reg = torch.full((len(j),), self.sample_guidance, device=self.device)
            x_reg = self._generate(self.model, self.pairs.noise[j].to(self.device), self.timesteps[:1].expand(len(j)),
                                   self._item_text(self.pairs.index[j].tolist()), w_reg)
            terms["loss_reg"] = F.mse_loss(x_reg, self.pairs.latents[j].to(self.device))
            loss = loss + cfg.lambda_reg * terms["loss_reg"]
        terms["loss"] = loss
        return terms

    # ------------------------------------------------------------------------------ outputs

    def _scheduler(self) -> LCMScheduler:
        accepted = inspect.signature(LCMScheduler.__init__).parameters  # (the source may be another scheduler's)
        config = {k: v for k, v in self.parts.scheduler_config.items() if k in accepted}
        config.update(prediction_type=self.teacher_pred, original_inference_steps=self.cfg.solver_steps,
                      clip_sample=False, thresholding=False)
        return LCMScheduler.from_config(config)

    def _recipe(self, losses: dict, steps_per_sec: float) -> dict:
        prior = self.parts.input_recipe.get("distill")
        recipe = super()._recipe(losses, steps_per_sec)
        recipe["one_step_distill"] = {**recipe.pop("distill"), "method": self.cfg.method,
                                      "guidance_range": list(self.w_range), "timesteps": self.timesteps.tolist(),
                                      "fake_params": sum(q.numel() for q in self.fake_params),
                                      "peak_memory": peak_memory()}
        if prior is not None:  # the student's own distillation stays where it was
            recipe["distill"] = prior
            recipe["distill_history"] = recipe["distill_history"][:-1]
            if not recipe["distill_history"]:
                del recipe["distill_history"]
        recipe["sampling"] = {"steps": self.cfg.steps, "guidance": self.sample_guidance, "scheduler": "LCMScheduler",
                              "prediction_type": self.teacher_pred, "guidance_embedded": True,
                              "unet_calls_per_step": 1, "sampling_steps": trained_step_counts(
                                  self.parts.scheduler_config, self.cfg.steps, self.cfg.solver_steps)}
        return recipe

    def _save_pipeline(self, student: nn.Module, scheduler: Any = None) -> Path | None:
        out = super()._save_pipeline(student, scheduler or self._scheduler())
        if out is not None:
            write_recipe(out, read_recipe(self.out))
        return out

