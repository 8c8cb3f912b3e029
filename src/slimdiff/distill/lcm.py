"""Consistency distillation: LCM (Luo et al. 2023) and PCM's phases (Wang et al. 2024), full or LoRA.

    from slimdiff.distill.lcm import ConsistencyConfig, consistency_distill
    consistency_distill(ConsistencyConfig(teacher="toy", student="toy", out="runs/lcm"))            # LCM, full
    consistency_distill(ConsistencyConfig(teacher="toy", student="toy", lora_rank=16, out="runs/lcm-lora"))
    consistency_distill(ConsistencyConfig(teacher="toy", student="toy", method="pcm", phases=4, out="runs/pcm4"))
    StableDiffusionPipeline.from_pretrained("runs/lcm/pipeline")(prompt, num_inference_steps=4)  # LCMScheduler

Notation as `slimdiff.train.maths` (a_t = sqrt(ab_t), s_t = sqrt(1 - ab_t), z_t = a_t x0 + s_t eps).
The solver grid: the DDIM timesteps t_n = (n + 1) k - 1, k = T / `solver_steps`, n = 0..N-1 (LCM: N = 50,
so t = 19, 39, ..., 999 for T = 1000), the grid `LCMScheduler`/`TCDScheduler` sample from
(their `original_inference_steps` = N).

LCM (Luo et al. 2023, Algorithm 1, "latent consistency distillation" with the skip-step solver).
Per row: n ~ U{0..N-1}, t = t_n, t' = max(t_n - k, 0); w ~ U[guidance_min, guidance_max] (diffusers' CFG
scale: the guided output is w out(c) - (w - 1) out(null), i.e. LCM's (1 + w') with w' = w - 1).
    teacher, one guided DDIM step:  z_t' = a_t' x0_T + s_t' eps_T           (x0_T, eps_T of the guided output)
    consistency function:            f(z, t) = c_skip(t) z + c_out(t) x0_hat(z, t)
        c_skip(t) = sd^2 / ((10 t)^2 + sd^2),  c_out(t) = 10 t / sqrt((10 t)^2 + sd^2),  sd = 0.5
        (LCMScheduler's scalings; c_skip(0) = 1, c_out(0) = 0: f(z, 0) = z, the boundary condition)
    loss:  d(f_theta(z_t, t, w), f_theta-(z_t', t', w)),  d = Huber sqrt(r^2 + c^2) - c (c = 0.001) or L2,
    theta- <- mu theta- + (1 - mu) theta after every step (the target network, mu = `target_decay` 0.95).
The student reads w (`time_cond_proj_dim`, embedding of w - 1 as the pipeline feeds it; projection
zero-initialised so the student starts as its source): one U-Net call per sampling step.

PCM (`method="pcm"`, M = `phases`; Wang et al. 2024, "Phased Consistency Model"). Edges e_0 > ... > e_{M-1}
are TCDScheduler's M timesteps on the grid, e_M = 0. On the phase (e_{m+1}, e_m] the consistency function
is the DDIM jump to the phase's lower edge e = e_{m+1}:  f(z, t) = a_e x0_hat + s_e eps_hat, so f(z, e) = z on
every edge; the target at t' = e is z_t' itself. The loss and target network are LCM's. Sampling: M
deterministic steps of `TCDScheduler` (eta = 0, StableDiffusionPipeline's default) land exactly on the edges.

LoRA (`lora_rank`: peft, LCM-LoRA's target layers). The base stays the teacher's weights; the student
does not read w (w is baked in: train at one w, e.g. the world's guidance, the default) and samples without
CFG (guidance 1). Its target network is the EMA of the LoRA'd student as for a full one (`target_decay`;
None: the online student under no_grad, as diffusers' LCM-LoRA script). Outputs:
out/lora/pytorch_lora_weights.safetensors (`pipe.load_lora_weights(out / "lora")` on the base pipeline)
and the fused student in out/ and out/pipeline/.

Output (`out/`): the student and recipe.json (`consistency_distill`: the settings; `sampling`: steps,
guidance, scheduler), and `out/pipeline/`, a plain StableDiffusionPipeline with `LCMScheduler` (LCM:
samples at any step count, 1, 2, 4, 8, ...) or `TCDScheduler` (PCM: M steps). The loop, resume,
checkpoints (the target network's weights included), log, cache and processes are the training core's;
under FSDP2 the target network is sharded like the student (`slimdiff.train.sharded.shard_like`).
"""

from __future__ import annotations

import copy
import dataclasses
import inspect
from pathlib import Path
from typing import Any

import torch
from diffusers import LCMScheduler, TCDScheduler
from torch import nn

from slimdiff.distill.config import KD_WEIGHTS, DistillConfig
from slimdiff.distill.kd import DistillResult, KdTrainer
from slimdiff.distill.guidance import add_guidance_embedding, guided_output
from slimdiff.recipe import read_recipe, write_recipe
from slimdiff.sample import fill_sampling
from slimdiff.train import checkpoint as ckpt
from slimdiff.train import sharded
from slimdiff.train.ema import EMA
from slimdiff.train.maths import alpha_sigma, ddim_step, embed_dim, guidance_embedding, to_x0_eps

METHODS = ("lcm", "pcm")
LOSSES = ("huber", "l2")
SIGMA_DATA = 0.5  # LCMScheduler's sigma_data
# LCM-LoRA's adapted layers (diffusers' train_lcm_distill_lora_sd_wds.py)
LORA_TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "proj_in", "proj_out", "ff.net.0.proj", "ff.net.2", "conv1",
                "conv2", "conv_shortcut", "downsamplers.0.conv", "upsamplers.0.conv", "time_emb_proj"]
Tensor = torch.Tensor


@dataclasses.dataclass
class ConsistencyConfig(DistillConfig):
    """`DistillConfig` (models, data, optimisation, bookkeeping) plus the consistency-distillation settings."""

    out: str = "runs/lcm"
    method: str = "lcm"  # "lcm" | "pcm"
    phases: int = 1  # PCM: M phases = its sampling steps; LCM: 1
    steps: int = 4  # sampling steps written to the recipe (LCM samples at any count; PCM: = phases)
    solver_steps: int = 50  # N: the teacher's DDIM grid (LCM: 50), skip k = T / N timesteps per solver step
    guidance_min: float | None = None  # w ~ U[min, max] (CFG scale); None: (2, 8) for a student reading w,
    guidance_max: float | None = None  # else both the world's sampling guidance (toy 5, else 7.5)
    guidance_embed: bool | None = None  # student reads w (time_cond_proj_dim); None: True unless LoRA
    guidance_embed_dim: int = 256  # LCM's w_embedding_dim
    guidance: float | None = None  # sampling guidance of a w-reading student (None: the world's); else 1
    loss: str = "huber"  # LCM's distance: "huber" sqrt(r^2 + c^2) - c | "l2"
    huber_c: float = 0.001  # c of the Huber distance (LCM: 0.001)
    target_decay: float | None = 0.95  # mu of the target network's EMA (LCM: 0.95); None: the online student
    # under no_grad (LCM-LoRA's script), which was unstable on the toy (loss rising at lr 1e-3)
    timestep_scaling: float = 10.0  # the 10 of c_skip / c_out (LCMScheduler's timestep_scaling)
    lora_rank: int | None = None  # train a LoRA of this rank instead of the whole U-Net
    lora_alpha: float | None = None  # LoRA scale alpha (None: = rank)
    lambda_task: float = 0.0  # must stay 0: the consistency loss is the only term
    lambda_out: float = 0.0
    lambda_feat: float = 0.0
    caption_dropout: float = 0.0  # the student samples without CFG: no unconditional rows needed

    def __post_init__(self):
        super().__post_init__()

        def bad(field: str, valid: str):
            raise ValueError(f"ConsistencyConfig.{field}={getattr(self, field)!r} is invalid: {valid}")

        if self.method not in METHODS:
            bad("method", f"choose one of {list(METHODS)}")
        self.check_ints(("steps", "solver_steps", "phases", "guidance_embed_dim"), 1)
        if self.method == "lcm" and self.phases != 1:
            bad("phases", "LCM has one phase; use method='pcm' for more")
        if self.phases > self.solver_steps:
            bad("phases", f"at most solver_steps={self.solver_steps}: the {self.solver_steps}-step grid cannot be "
                          f"split into more phases")
        if self.steps > self.solver_steps:
            bad("steps", f"at most solver_steps={self.solver_steps}: the sampler's steps are taken from that grid")
        if self.method == "pcm" and self.steps != self.phases:
            bad("steps", f"a PCM student samples in its {self.phases} phases: steps = phases")
        if self.loss not in LOSSES:
            bad("loss", f"choose one of {list(LOSSES)}")
        if self.target_decay is not None and not 0.0 < self.target_decay < 1.0:
            bad("target_decay", "None (the online student) or in (0, 1)")
        if not self.huber_c > 0 or not self.timestep_scaling > 0:
            bad("huber_c" if not self.huber_c > 0 else "timestep_scaling", "> 0")
        if self.lora_rank is not None and (isinstance(self.lora_rank, bool) or not isinstance(self.lora_rank, int)
                                           or self.lora_rank < 1):
            bad("lora_rank", "None (train the whole U-Net) or an integer >= 1")
        if self.lora_alpha is not None and not self.lora_alpha > 0:
            bad("lora_alpha", "None (= rank) or > 0")
        if self.guidance_embed and self.lora_rank is not None:
            bad("guidance_embed", "a LoRA keeps the base U-Net, which reads no w: drop guidance_embed or lora_rank")
        self._check_guidance_range()

    def _check_loss_weights(self) -> None:
        self._refuse_kd_weights(KD_WEIGHTS, "consistency distillation trains on its own loss only")

    @property
    def embedded(self) -> bool:
        return self.guidance_embed if self.guidance_embed is not None else self.lora_rank is None


def consistency_distill(config: ConsistencyConfig, teacher: nn.Module | None = None, student: nn.Module | None = None,
                        pipeline: Any = None, progress: bool = True) -> DistillResult:
    """Consistency-distill `teacher` into `student` as `config` says; outputs in `config.out` (module doc)."""
    return ConsistencyTrainer(config, teacher, student, pipeline, progress).run()


# ---------------------------------------------------------------------------------- the maths
# z, x0 (B, C, h, w); t (B,) long; ab (T,) alphas_cumprod


def boundary_scalings(t: Tensor, timestep_scaling: float = 10.0) -> tuple[Tensor, Tensor]:
    """(c_skip, c_out) at integer timesteps t (B,), each (B, 1, 1, 1): LCMScheduler's discrete scalings."""
    x = t.float().view(-1, 1, 1, 1) * timestep_scaling
    return SIGMA_DATA ** 2 / (x ** 2 + SIGMA_DATA ** 2), x / (x ** 2 + SIGMA_DATA ** 2).sqrt()


def solver_grid(num_train_timesteps: int, solver_steps: int) -> Tensor:
    """The DDIM grid t_n = (n + 1) k - 1, n = 0..N-1, k = T // N (ascending, (N,) long)."""
    k = num_train_timesteps // solver_steps
    return torch.arange(1, solver_steps + 1) * k - 1


def phase_edges(num_train_timesteps: int, solver_steps: int, phases: int) -> Tensor:
    """PCM's edges: TCDScheduler's `phases`-step timesteps on the grid (descending) and a final 0, (M + 1,)."""
    grid = solver_grid(num_train_timesteps, solver_steps).flip(0)  # 999, 979, ...
    starts = grid[torch.floor(torch.linspace(0, solver_steps, phases + 1)[:-1]).long()]
    return torch.cat([starts, torch.zeros(1, dtype=torch.long)])


def lower_edge(t: Tensor, edges: Tensor) -> Tensor:
    """The lower edge e_{m+1} of the phase (e_{m+1}, e_m] holding each t (B,)."""
    below = edges[1:].view(1, -1) < t.view(-1, 1)  # (B, M): e_{m+1} < t
    return edges[1:][below.float().argmax(1)]  # the first (highest) edge below t


def consistency_distance(a: Tensor, b: Tensor, loss: str, c: float) -> Tensor:
    """Mean over elements and rows of LCM's Huber sqrt((a - b)^2 + c^2) - c, or the squared error."""
    r2 = (a.float() - b.float()).pow(2)
    return ((r2 + c * c).sqrt() - c).mean() if loss == "huber" else r2.mean()


# ---------------------------------------------------------------------------------- the trainer


class ConsistencyTrainer(KdTrainer):
    """`KdTrainer` (set-up, data, loop, outputs) with the consistency loss and a target network."""

    name = "consistency-distill"

    def __init__(self, config: ConsistencyConfig, teacher=None, student=None, pipeline=None, progress=True):
        if not isinstance(config, ConsistencyConfig):
            raise ValueError(f"ConsistencyTrainer needs a ConsistencyConfig, got {type(config).__name__}")
        self.target: nn.Module | None = None
        super().__init__(config, teacher, student, pipeline, progress)
        cfg = self.cfg
        T = self.num_train_timesteps
        if T % cfg.solver_steps:
            raise ValueError(f"solver_steps={cfg.solver_steps} must divide num_train_timesteps={T} (the grid's skip "
                             f"k = T / N is an integer; LCM: 50)")
        self.grid = solver_grid(T, cfg.solver_steps).to(self.device)
        self.k = T // cfg.solver_steps
        self.edges = phase_edges(T, cfg.solver_steps, cfg.phases).to(self.device)
        self.null_text = self.empty_text
        self.teacher_pred = self.prediction_type  # the student keeps it (it starts as its source)
        world = fill_sampling(self.parts.pipeline, None, None, self.parts.toy_world)[1]
        self.w_range = (cfg.guidance_min, cfg.guidance_max) if cfg.guidance_min is not None else \
            (2.0, 8.0) if cfg.embedded else (world, world)
        self.sample_guidance = (cfg.guidance if cfg.guidance is not None else world) if cfg.embedded else 1.0

    def _guidance_dim(self) -> None:
        return None  # the KD path feeds no w; `_micro_step` feeds the student's own

    def _prepare_student(self, student: nn.Module) -> nn.Module:
        cfg = self.cfg
        if cfg.embedded:
            return add_guidance_embedding(student, cfg.guidance_embed_dim)
        if embed_dim(student) is not None:
            raise ValueError(f"the student reads w (time_cond_proj_dim={embed_dim(student)}); set guidance_embed")
        if cfg.lora_rank is not None:
            try:
                from peft import LoraConfig  # optional: slimdiff[lora]
            except ImportError:
                raise ValueError("lora_rank needs peft: pip install 'slimdiff[lora]'") from None

            if not hasattr(student, "add_adapter"):
                raise ValueError(f"a LoRA needs a diffusers U-Net (PeftAdapterMixin); {type(student).__name__} is not")
            with torch.random.fork_rng(devices=[]):  # LoRA A's gaussian init: a function of the seed (every
                torch.manual_seed(cfg.seed)         # process the same: FSDP2 shards one init, not a mix)
                student.add_adapter(LoraConfig(r=cfg.lora_rank, lora_alpha=cfg.lora_alpha or cfg.lora_rank,
                                               init_lora_weights="gaussian", target_modules=LORA_TARGETS))
        return student

    def _trainable_set(self) -> None:
        if self.cfg.lora_rank is None:
            super()._trainable_set()
        else:  # only the LoRA matrices (add_adapter froze the base)
            self.frozen = ["(the base U-Net: LoRA)"]
            self.trainable = [q for q in self.student.parameters() if q.requires_grad]
            self.trainable_params = sum(q.numel() for q in self.trainable)
        if self.cfg.target_decay is not None:  # the target network: theta- holds the EMA of the trainable weights
            self.target = copy.deepcopy(self.student).requires_grad_(False).eval()
            names = [n for n, q in self.student.named_parameters() if q.requires_grad]
            self.target_ema = EMA(self.trainable, self.cfg.target_decay, warmup=False,
                                  into=[self.target.get_parameter(n) for n in names])

    def prepare(self, model: nn.Module, trainable: list) -> None:
        if self.target is not None:
            self.target.to(self.device)
        super().prepare(model, trainable)
        if self.resume_dir is not None and self.target is not None and not self.fsdp2:
            self.target_ema.load_state_dict(ckpt.load_state(self.resume_dir, "target"))

    def _on_wrapped(self) -> None:
        """FSDP2: the target network is sharded as the student is, and its EMA rebuilt over the
        sharded parameters (each process averages its shard; the shard files hold it)."""
        if self.target is None or not self.fsdp2:
            return
        sharded.shard_like(self.target, self.accelerator.unwrap_model(self.model))
        names = [n for n, q in self.accelerator.unwrap_model(self.model).named_parameters() if q.requires_grad]
        self.target_ema = EMA(self.trainable, self.cfg.target_decay, warmup=False,
                              into=[self.target.get_parameter(n) for n in names])

    def _sharded_emas(self) -> dict:
        return {**super()._sharded_emas(), "target": self.target_ema if self.target is not None else None}

    def _checkpoint_states(self) -> dict[str, dict]:
        states = super()._checkpoint_states()
        return {**states, "target": self.target_ema.state_dict()} if self.target is not None and not self.fsdp2 \
            else states

    def _on_step_end(self, step: int) -> None:
        if self.target is not None:
            self.target_ema.update(self.trainable)

    # ------------------------------------------------------------------------------ one step

    def _f(self, model: nn.Module, z: Tensor, t: Tensor, text, cond: dict, edge: Tensor) -> Tensor:
        """The consistency function at (z, t): LCM's c_skip z + c_out x0_hat, or PCM's DDIM jump to `edge`;
        `text`: a `Conditioning`."""
        out = model(z, t, **text.kwargs(), **cond).sample.float()
        a, s = alpha_sigma(self.alphas_cumprod[t])
        x0, eps = to_x0_eps(self.teacher_pred, z, out, a, s)
        if self.cfg.method == "lcm":
            c_skip, c_out = boundary_scalings(t, self.cfg.timestep_scaling)
            return c_skip * z + c_out * x0
        return ddim_step(x0, eps, *alpha_sigma(self.alphas_cumprod[edge]))

    def _micro_step(self, items: list[dict], position: int) -> dict[str, Tensor]:
        cfg = self.cfg
        # 1. encodings and randomness: grid index n, w per row
        latents, noise, text, n, g, rows = self.data.sample(
            items, position, draw_t=lambda G, gen: torch.randint(0, cfg.solver_steps, (G,), generator=gen))
        lo, hi = self.w_range
        w = (lo + (hi - lo) * torch.rand(latents.shape[0] * self.world, generator=g))[rows].to(self.device)
        t = self.grid[n]  # (b,) t_n
        t_prev = (t - self.k).clamp(min=0)  # t' (t_0 - k = -1 -> 0)
        edge = lower_edge(t, self.edges) if cfg.method == "pcm" else torch.zeros_like(t)
        a_t, s_t = alpha_sigma(self.alphas_cumprod[t])
        z_t = a_t * latents + s_t * noise
        cond = {"timestep_cond": guidance_embedding(w, cfg.guidance_embed_dim).to(z_t)} if cfg.embedded else {}
        # 2. the teacher's guided DDIM step t -> t' and the target f_theta-(z_t', t') (no grad)
        with torch.no_grad():
            out, _ = guided_output(self.teacher, z_t.to(self.dtype), t, text.to(dtype=self.dtype),
                                   self.null_text.to(dtype=self.dtype), w, embed_dim(self.teacher))
            x0, eps = to_x0_eps(self.teacher_pred, z_t, out.float(), a_t, s_t)
            z_prev = ddim_step(x0, eps, *alpha_sigma(self.alphas_cumprod[t_prev]))
            target_net = self.target if self.target is not None else self.model
            f_target = self._f(target_net, z_prev, t_prev, text, cond, edge)
            at_edge = (t_prev == edge).view(-1, 1, 1, 1)  # PCM: the target is on its edge; LCM: t' = 0
            f_target = torch.where(at_edge, z_prev, f_target) if cfg.method == "pcm" else f_target
        # 3. the student's consistency function at (z_t, t)
        f_student = self._f(self.model, z_t, t, text, cond, edge)
        loss = consistency_distance(f_student, f_target, cfg.loss, cfg.huber_c)
        return {"loss": loss, "loss_consistency": loss.detach()}

    # ------------------------------------------------------------------------------ outputs

    def _scheduler(self):
        kind = LCMScheduler if self.cfg.method == "lcm" else TCDScheduler
        accepted = inspect.signature(kind.__init__).parameters  # (the source may be another scheduler's config)
        config = {k: v for k, v in self.parts.scheduler_config.items() if k in accepted}
        config.update(prediction_type=self.teacher_pred, original_inference_steps=self.cfg.solver_steps,
                      clip_sample=False, thresholding=False)
        if kind is LCMScheduler:
            config["timestep_scaling"] = self.cfg.timestep_scaling
        return kind.from_config(config)

    def _recipe(self, losses: dict, steps_per_sec: float) -> dict:
        prior = self.parts.input_recipe.get("distill")
        recipe = super()._recipe(losses, steps_per_sec)
        recipe["consistency_distill"] = {**recipe.pop("distill"), "method": self.cfg.method,
                                         "guidance_range": list(self.w_range),
                                         "target": "EMA" if self.target is not None else "online"}
        if prior is not None:  # the student's own distillation stays where it was
            recipe["distill"] = prior
            recipe["distill_history"] = recipe["distill_history"][:-1]
            if not recipe["distill_history"]:
                del recipe["distill_history"]
        recipe["sampling"] = {"steps": self.cfg.steps, "guidance": self.sample_guidance,
                              "scheduler": type(self._scheduler()).__name__, "prediction_type": self.teacher_pred,
                              "guidance_embedded": self.cfg.embedded, "unet_calls_per_step": 1}
        return recipe

    def _result(self, student: nn.Module, losses: dict, steps_per_sec: float, log_path: Path) -> DistillResult:
        if self.cfg.lora_rank is not None:  # the LoRA file, then the fused plain U-Net
            if self.accelerator.is_main_process:
                save_lora(student, self.out / "lora", self.parts.pipeline)
            student.fuse_lora()
            student.unload_lora()
        return super()._result(student, losses, steps_per_sec, log_path)

    def _save_pipeline(self, student: nn.Module, scheduler: Any = None) -> Path | None:
        out = super()._save_pipeline(student, scheduler or self._scheduler())
        if out is not None:
            write_recipe(out, read_recipe(self.out))
        return out


def save_lora(unet: nn.Module, directory: Path, pipeline: Any) -> Path:
    """The U-Net's LoRA as diffusers writes it (`pytorch_lora_weights.safetensors`, `load_lora_weights` reads it)."""
    from diffusers import StableDiffusionPipeline
    from peft.utils import get_peft_model_state_dict

    layers = get_peft_model_state_dict(unet)  # peft's lora_A / lora_B names, which load_lora_weights reads
    kind = type(pipeline) if hasattr(type(pipeline), "save_lora_weights") else StableDiffusionPipeline
    kind.save_lora_weights(str(directory), unet_lora_layers=layers, safe_serialization=True)
    return directory
