"""CFG-aware step distillation (SnapFusion, seed 001; METHODS.md section 5): fewer sampling steps.

    from slimdiff.distill.step import StepDistillConfig, step_distill
    result = step_distill(StepDistillConfig(teacher="toy", student="runs/bk-small-kd", steps=8, out="runs/s8"))
    StableDiffusionPipeline.from_pretrained("runs/s8/pipeline")(prompt)   # 8 DDIM steps, v-prediction

Notation: a_t = sqrt(ab_t), s_t = sqrt(1 - ab_t) (ab: alphas_cumprod), z_t = a_t x0 + s_t eps.

The loss (SnapFusion's "CFG-Aware Step Distillation", seed 001). The teacher takes k deterministic
DDIM steps t -> t' -> ... -> t'' (k = 2 in the paper), the student one step t -> t''. A student DDIM step lands on the teacher's
z_t'' exactly when its x0 estimate is

    x_target = (z_t'' - (s_t''/s_t) z_t) / (a_t'' - (s_t''/s_t) a_t)

and the loss is  w(t) ||x_hat_S - x_target||^2 + gamma L_task  with w(t) = max(a_t^2 / s_t^2, 1)
(the SNR clipped at 1), gamma = `lambda_task` (0.2, the paper's best) and L_task the student's own
denoising loss on v. ||.||^2 is the mean over latent elements, then over the batch.

CFG-aware. With probability `cfg_prob` (default 1; SnapFusion: 0.1), drawn per example, every U-Net
output of the teacher and of the student is replaced by the guided one w_g v(c) - (w_g - 1) v(null),
w_g ~ U[guidance_min, guidance_max] (default: the sampling guidance, fixed; a guidance-embedded student
U[2, 14], SnapFusion's); else the plain conditional output (w = 1). p = 0 is vanilla step distillation.
The defaults are the diagnosis's (docs/bench/steps_diagnosis.md): SnapFusion's p = 0.1 over U[2, 14]
trains the guided combination the student samples with on few rows, rarely near the w it samples at. The combination is the same in eps, v or x0 terms: at fixed (z_t, t)
each is an affine function of the others and the weights w_g, -(w_g - 1) sum to 1.

Prediction. The student predicts `student_prediction`: None (default) keeps the teacher's, so it starts
as its source; "v_prediction" is SnapFusion's v = a_t eps - s_t x0 (an epsilon source then starts read
as v, its x0 and eps wrong at every step). The teacher's output converts exactly (`to_x0_eps`), which is
all a DDIM step needs. docs/bench/steps_diagnosis.md measures both.

Schedules. Timesteps are DDIM "trailing" ones (t_i = round(T - i T/N) - 1: the first step at
t = T - 1; an N-step schedule is every k-th timestep of a kN-step one). `direct`: the teacher's
`teacher_steps`-step schedule (32) gives the student's `steps` (8) with k = teacher_steps/steps
teacher steps per student step. `progressive` (Salimans & Ho; SnapFusion 32 -> 16 -> 8): stages
halve teacher_steps down to `steps` with k = 2; stage j > 0's teacher is the student as it left
stage j - 1 (raw weights, frozen; saved under out/stages/ so a resumed run uses the same one);
the optimiser and `max_steps` are shared, split evenly over the stages.

Students. Any U-Net of the teacher's latent and text widths: the teacher itself (`student="toy"`),
a `slimdiff prune` or `distill` output (SlimUNet2DConditionModel too). `guidance_embed`: the
student also reads w (Meng et al. 2023 "w-conditioning", as LCM: diffusers' `time_cond_proj_dim`,
the pipeline feeds get_guidance_scale_embedding(w - 1)), so a step costs one U-Net call; the
projection starts at zero (the student starts as its source) and rows without CFG train at w = 1.

Output (`out/`): the student and recipe.json (`step_distill`: the settings; `sampling`: steps,
guidance, timesteps), and `out/pipeline/`, a plain `StableDiffusionPipeline` directory whose
DDIMScheduler (trailing, v_prediction) gives exactly the trained timesteps at `steps` steps.
The loop, resume, checkpoints, log, cache and multi-process are the training core's
(`slimdiff.train`); the set-up and data side are `slimdiff.distill.kd.KdTrainer`'s. The x0/eps/v
conversions and the DDIM step are `slimdiff.train.maths`'.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from slimdiff.distill.config import KD_WEIGHTS, DistillConfig
from slimdiff.distill.guidance import add_guidance_embedding, guided_output
from slimdiff.distill.kd import DistillResult, KdTrainer
from slimdiff.sample import fill_sampling
from slimdiff.io import atomic_path, named_pipeline, read_json
from slimdiff.recipe import read_recipe, recipe_path, write_recipe
from slimdiff.train import sharded
from slimdiff.train.maths import (GUIDANCE_RANGE, PREDICTION_TYPES, STUDENT_PREDICTION, alpha_sigma, ddim_step,
                                  embed_dim, guidance_embedding, prediction_of, sampler_for, step_paths,
                                  to_x0_eps)

SCHEDULES = ("direct", "progressive")
Tensor = torch.Tensor


@dataclasses.dataclass
class StepDistillConfig(DistillConfig):
    """`DistillConfig` (models, data, optimisation, bookkeeping) plus the step-distillation settings."""

    out: str = "runs/step-distill"
    lambda_task: float = 0.2  # gamma: weight of the student's own v denoising loss (SnapFusion: 0.2 best)
    lambda_out: float = 0.0  # must stay 0: the k-step target replaces output KD
    lambda_feat: float = 0.0  # must stay 0 (no feature KD in step distillation)
    steps: int = 8  # student sampling steps N (SnapFusion: 8)
    teacher_steps: int = 32  # DDIM steps of the teacher schedule the student's are cut from (SnapFusion: 32)
    schedule: str = "direct"  # "direct": k = teacher_steps/steps per step | "progressive": halve, k = 2
    cfg_prob: float = 1.0  # p: share of examples trained on guided outputs (SnapFusion 0.1; 0: vanilla)
    guidance_min: float | None = None  # w_g ~ U[min, max]; None: the sampling guidance (embedded: [2, 14])
    guidance_max: float | None = None
    guidance_embed: bool = False  # student reads w (time_cond_proj_dim): one U-Net call per step
    guidance_embed_dim: int = 256  # width of the w embedding (LCM's w_embedding_dim)
    teacher_prediction_type: str | None = None  # None: the pipeline scheduler's prediction_type
    # what the student predicts: None: the teacher's (it starts as its source; docs/bench/steps_diagnosis.md:
    # +13 points over v at 400 steps on the toy) | "v_prediction" (SnapFusion's) | "epsilon" | "sample"
    student_prediction: str | None = None
    guidance: float | None = None  # sampling guidance written to the recipe; None: the world's (toy 5, else 7.5)

    def __post_init__(self):
        super().__post_init__()

        def bad(field: str, valid: str):
            raise ValueError(f"StepDistillConfig.{field}={getattr(self, field)!r} is invalid: {valid}")

        for name in ("steps", "teacher_steps", "guidance_embed_dim"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                bad(name, "an integer >= 1")
        if self.schedule not in SCHEDULES:
            bad("schedule", f"choose one of {list(SCHEDULES)}")
        ratio = self.teacher_steps // self.steps
        if self.teacher_steps % self.steps or ratio < 2:
            bad("steps", f"the teacher's {self.teacher_steps}-step schedule gives a student of "
                         f"teacher_steps/k steps, k >= 2 an integer: e.g. {self.teacher_steps // 2}, "
                         f"{self.teacher_steps // 4}")
        if self.schedule == "progressive" and ratio & (ratio - 1):
            bad("steps", f"progressive halving goes {self.teacher_steps} -> {self.teacher_steps // 2} -> ...; "
                         f"teacher_steps/steps = {ratio} must be a power of 2")
        if self.schedule == "progressive" and self.max_steps < len(self.stage_steps()):
            bad("max_steps", f"at least one optimiser step per stage ({len(self.stage_steps())} stages)")
        if not 0.0 <= self.cfg_prob <= 1.0:
            bad("cfg_prob", "a probability in [0, 1]")
        self._check_guidance_range(" (SnapFusion: [2, 14])")
        if self.teacher_prediction_type not in (None, *PREDICTION_TYPES):
            bad("teacher_prediction_type", f"None (the pipeline's) or one of {list(PREDICTION_TYPES)}")
        if self.student_prediction not in (None, *PREDICTION_TYPES):
            bad("student_prediction", f"None (the teacher's) or one of {list(PREDICTION_TYPES)}")

    def _check_loss_weights(self) -> None:
        self._refuse_kd_weights(KD_WEIGHTS[1:], "step distillation trains on the k-step teacher target plus "
                                "lambda_task (gamma) x the task loss")
        if self.lambda_task < 0:
            raise ValueError(f"StepDistillConfig.lambda_task={self.lambda_task} is invalid: gamma must be >= 0")

    def stage_steps(self) -> list[int]:
        """Student steps of each stage: direct [steps]; progressive [T/2, T/4, ..., steps] (T = teacher_steps)."""
        if self.schedule == "direct":
            return [self.steps]
        out, n = [], self.teacher_steps
        while n > self.steps:
            n //= 2
            out.append(n)
        return out

    def resume_mismatches(self, saved: dict[str, Any]) -> list[str]:
        problems = super().resume_mismatches(saved)
        if self.schedule == "progressive" and saved.get("max_steps") != self.max_steps:
            problems.append(f"max_steps: checkpoint {saved.get('max_steps')}, now {self.max_steps} "
                            f"(progressive stages are split by max_steps)")
        return problems


def step_distill(config: StepDistillConfig, teacher: nn.Module | None = None, student: nn.Module | None = None,
                 pipeline: Any = None, progress: bool = True) -> DistillResult:
    """Step-distill `teacher` into `student` as `config` says; outputs in `config.out` (see module doc)."""
    return StepTrainer(config, teacher, student, pipeline, progress).run()


# ---------------------------------------------------------------------------------- the maths
# tensors: z, x0, eps, v (B, C, h, w); a, s (B, 1, 1, 1); w (B,)


def step_target(z_t: Tensor, z_end: Tensor, a_t: Tensor, s_t: Tensor, a_end: Tensor, s_end: Tensor) -> Tensor:
    """SnapFusion's student target: the x0 whose one DDIM step t -> t'' lands on the teacher's z_t''."""
    r = s_end / s_t
    return (z_end - r * z_t) / (a_end - r * a_t)


def snr_weight(a: Tensor, s: Tensor) -> Tensor:
    """w(t) = max(a_t^2 / s_t^2, 1), (B,)."""
    return (a.flatten() ** 2 / s.flatten() ** 2).clamp(min=1.0)


def _declared_prediction(source: str | None) -> tuple[str, str] | None:
    """(prediction_type, where) a teacher directory declares: a step-distill recipe or its pipeline's scheduler."""
    root = None if source is None else named_pipeline(source) or Path(source)  # "toy": the shipped pipeline
    if root is None or not root.is_dir():
        return None
    for directory in (root, root / "pipeline"):
        recipe = read_recipe(directory)
        if "step_distill" in recipe:
            return recipe.get("sampling", {}).get("prediction_type", STUDENT_PREDICTION), str(recipe_path(directory))
    sched = root / "scheduler" / "scheduler_config.json"
    if sched.is_file() and "prediction_type" in read_json(sched):
        return read_json(sched)["prediction_type"], str(sched)
    return None


# ---------------------------------------------------------------------------------- the trainer


class StepTrainer(KdTrainer):
    """`KdTrainer` with the step-distillation loss: same set-up, loop, resume, checkpoints, log and outputs."""

    name = "step-distill"

    def __init__(self, config: StepDistillConfig, teacher=None, student=None, pipeline=None, progress=True):
        if not isinstance(config, StepDistillConfig):
            raise ValueError(f"StepTrainer needs a StepDistillConfig, got {type(config).__name__}")
        super().__init__(config, teacher, student, pipeline, progress)
        cfg = self.cfg
        # 1. prediction types: the teacher's (declared or the pipeline's), the student's v
        pipeline_pred = self.prediction_type
        self.teacher_pred = cfg.teacher_prediction_type or pipeline_pred
        declared = _declared_prediction(cfg.teacher if teacher is None else None)
        if declared is not None and declared[0] != self.teacher_pred:
            raise ValueError(f"prediction types do not match: the teacher {cfg.teacher!r} predicts {declared[0]!r} "
                             f"({declared[1]}), but {self.teacher_pred!r} was "
                             f"{'given' if cfg.teacher_prediction_type else 'read from the pipeline scheduler'}; "
                             f"set teacher_prediction_type={declared[0]!r} or pass the matching --pipeline")
        self.student_pred = cfg.student_prediction or self.teacher_pred
        self.prediction_type = self.student_pred  # what the student learns (recipe, L_task)
        self.null_text = self.empty_text
        # 2. the schedule of every stage (checks: the sampler reproduces the trained timesteps)
        stages = cfg.stage_steps()
        teachers = [cfg.teacher_steps] + stages[:-1] if cfg.schedule == "progressive" else [cfg.teacher_steps]
        self.paths = [step_paths(self.parts.scheduler_config, k, n, sampled=j == len(stages) - 1)
                      for j, (k, n) in enumerate(zip(teachers, stages))]
        J = len(stages)
        self.bounds = [j * cfg.max_steps // J for j in range(J)]  # first optimiser step of each stage
        self.stage = 0
        self.stage_teacher_pred = self.teacher_pred
        self._set_paths(0)
        g = cfg.guidance if cfg.guidance is not None else self._default_guidance()
        self.w_range = (cfg.guidance_min, cfg.guidance_max) if cfg.guidance_min is not None else \
            GUIDANCE_RANGE if cfg.guidance_embed else (g, g)

    def _guidance_dim(self) -> None:
        """None: the KD pass feeds no guidance embedding; `guided_output` feeds the student's own."""
        return None

    def _prepare_student(self, student: nn.Module) -> nn.Module:
        if self.cfg.guidance_embed:
            return add_guidance_embedding(student, self.cfg.guidance_embed_dim)
        if embed_dim(student) is not None:
            raise ValueError(f"the student is guidance-embedded (time_cond_proj_dim={embed_dim(student)}); "
                             f"set guidance_embed (--guidance-embed) to train it")
        return student

    # ------------------------------------------------------------------------------ stages

    def _set_paths(self, j: int) -> None:
        t_student, path_t, path_ab = self.paths[j]
        self.student_timesteps = torch.tensor(t_student)
        self.path_t, self.path_ab = path_t.to(self.device), path_ab.to(self.device)

    def _stage_file(self, j: int) -> Path:
        return self.out / "stages" / f"teacher-stage{j}.safetensors"

    def _on_step_start(self, step: int) -> None:
        """Progressive: at stage j's first step (or on resume inside it) the teacher becomes the student
        as it left stage j - 1 (saved to out/stages/ at the boundary, loaded from there on resume)."""
        j = max(i for i, b in enumerate(self.bounds) if b <= step)
        if j == self.stage:
            return
        student = self.accelerator.unwrap_model(self.model)
        path = self._stage_file(j)
        if step == self.bounds[j]:  # (FSDP2: the full weights gathered, every process takes part)
            full = sharded.full_state_dict(self.model) if self.fsdp2 else student.state_dict()
            state = {k: v.detach().float().cpu().contiguous() for k, v in full.items()}
            if self.accelerator.is_main_process:
                with atomic_path(path) as tmp:
                    save_file(state, str(tmp))
            self.accelerator.wait_for_everyone()
        elif not path.is_file():
            raise FileNotFoundError(f"resuming inside progressive stage {j}: its teacher {path} is missing")
        else:
            state = load_file(str(path))
        kind = type(self.plain) if self.fsdp2 else type(student)  # (FSDP2 changed the student's class)
        teacher = kind.from_config({k: v for k, v in student.config.items() if not k.startswith("_")})
        # (a fresh module: none of the student's hooks, e.g. stochastic depth)
        teacher.load_state_dict(state)
        self.teacher = teacher.requires_grad_(False).eval().to(self.device, self.dtype)
        self.stage_teacher_pred = self.student_pred
        self.stage = j
        self._set_paths(j)

    # ------------------------------------------------------------------------------ one step

    def _micro_step(self, items: list[dict], position: int) -> dict[str, Tensor]:
        cfg = self.cfg
        # 1. encodings and randomness: the student step i of each row, its timestep t_i, guidance w
        n = len(self.student_timesteps)
        latents, noise, text, idx, g, rows = self.data.sample(
            items, position, draw_t=lambda G, gen: torch.randint(0, n, (G,), generator=gen))
        G = latents.shape[0] * self.world
        use_cfg = (torch.rand(G, generator=g) < cfg.cfg_prob)[rows]
        lo, hi = self.w_range
        w_g = (lo + (hi - lo) * torch.rand(G, generator=g))[rows]
        w = torch.where(use_cfg, w_g, torch.ones_like(w_g)).to(self.device)  # (b,) 1: no guidance
        ab = self.path_ab[idx]  # (b, k + 1): ab along t -> ... -> t''
        a_t, s_t = alpha_sigma(ab[:, 0])
        a_end, s_end = alpha_sigma(ab[:, -1])
        z_t = a_t * latents + s_t * noise  # (b, C, h, w)
        t = self.path_t[idx, 0]
        # 2. the teacher's k guided DDIM steps t -> t'' and the student's target (eq. above)
        with torch.no_grad():
            z = z_t
            for j in range(self.path_t.shape[1]):
                out, _ = guided_output(self.teacher, z.to(self.dtype), self.path_t[idx, j], text.to(dtype=self.dtype),
                                       self.null_text.to(dtype=self.dtype), w, embed_dim(self.teacher))
                a, s = alpha_sigma(ab[:, j])
                x0, eps = to_x0_eps(self.stage_teacher_pred, z, out.float(), a, s)
                z = ddim_step(x0, eps, *alpha_sigma(ab[:, j + 1]))
            x_target = step_target(z_t, z, a_t, s_t, a_end, s_end)
        # 3. the student's one step: its output (v, eps or x0) under the same guidance -> x0 estimate
        out_s, out_cond = guided_output(self.model, z_t, t, text, self.null_text, w,
                                        cfg.guidance_embed_dim if cfg.guidance_embed else None)
        x_s = to_x0_eps(self.student_pred, z_t, out_s.float(), a_t, s_t)[0]
        per_row = (x_s - x_target).pow(2).flatten(1).mean(1)  # (b,)
        terms = {"loss_step": (snr_weight(a_t, s_t) * per_row).mean()}
        # 4. gamma L_task on the unguided outputs (embedded students: rows at w = 1), mean over all b rows
        if cfg.lambda_task > 0:
            keep = (w == 1).float() if cfg.guidance_embed else torch.ones_like(w)
            target = prediction_of(self.student_pred, latents, noise, a_t, s_t)
            task = (out_cond.float() - target).pow(2).flatten(1).mean(1)
            terms["loss_task"] = (keep * task).mean()
        terms["loss"] = terms["loss_step"] + cfg.lambda_task * terms.get("loss_task", 0.0)
        return terms

    # ------------------------------------------------------------------------------ outputs

    def _default_guidance(self) -> float:
        """The world's sampling guidance (toy 5, else 7.5): the one call to port to `slimdiff.sample`."""
        return fill_sampling(self.parts.pipeline, None, None, self.parts.toy_world)[1]

    def _sampling(self) -> dict:
        guidance = self.cfg.guidance if self.cfg.guidance is not None else self._default_guidance()
        embedded = self.cfg.guidance_embed
        return {"steps": self.cfg.steps, "guidance": guidance, "scheduler": "DDIMScheduler",
                "timestep_spacing": "trailing", "prediction_type": self.student_pred,
                "timesteps": self.paths[-1][0], "guidance_embedded": embedded,
                "unet_calls_per_step": 1 if embedded or guidance == 1 else 2}

    def _recipe(self, losses: dict, steps_per_sec: float) -> dict:
        prior = self.parts.input_recipe.get("distill")
        recipe = super()._recipe(losses, steps_per_sec)
        recipe["step_distill"] = {**recipe.pop("distill"), "teacher_prediction_type": self.teacher_pred,
                                  "stages": self.cfg.stage_steps(), "stage_bounds": self.bounds}
        if prior is not None:  # the student's own distillation stays where it was
            recipe["distill"] = prior
            recipe["distill_history"] = recipe["distill_history"][:-1]
            if not recipe["distill_history"]:
                del recipe["distill_history"]
        recipe["sampling"] = self._sampling()
        return recipe

    def _save_pipeline(self, student: nn.Module, scheduler: Any = None) -> Path | None:
        """out/pipeline with the student's DDIM sampler, and the recipe beside it (sampling defaults)."""
        sampler = sampler_for(self.parts.scheduler_config, self.cfg.steps, self.student_pred)
        out = super()._save_pipeline(student, scheduler or sampler)
        if out is not None:
            write_recipe(out, read_recipe(self.out))
        return out
