"""The diffusion maths every trainer shares: x0 / eps / v conversions, DDIM steps and schedules, w-conditioning.

Notation: ab_t = alphas_cumprod[t], a_t = sqrt(ab_t), s_t = sqrt(1 - ab_t); the forward process
z_t = a_t x0 + s_t eps (DDPM, Ho et al. 2020 eq. 4). A U-Net predicts one of (diffusers'
`prediction_type`):
    epsilon        eps                      x0 = (z - s eps) / a
    v_prediction   v = a eps - s x0         x0 = a z - s v,  eps = s z + a v   (Salimans & Ho 2022, sec. 4)
    sample         x0                       eps = (z - a x0) / s
Tensors: z, x0, eps, v (B, C, h, w); a, s (B, 1, 1, 1); t (B,) long; alphas_cumprod (T,); w (B,).
"""

from __future__ import annotations

import torch
from diffusers import DDIMScheduler
from torch import nn

PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")
# w ~ U[2, 14] per example: the guidance range a guidance-embedded U-Net is trained over
# (SnapFusion's CFG-aware range; `StepDistillConfig`'s default, and what KD feeds an embedded teacher)
GUIDANCE_RANGE = (2.0, 14.0)
STUDENT_PREDICTION = "v_prediction"  # what a step-distilled student predicts (its DDIM sampler's prediction_type)
# w fed to a guidance-embedded U-Net when none is given: StableDiffusionPipeline's default guidance_scale
DEFAULT_GUIDANCE = 7.5
Tensor = torch.Tensor


def alpha_sigma(ab: Tensor) -> tuple[Tensor, Tensor]:
    """ab (B,) -> a = sqrt(ab), s = sqrt(1 - ab), each (B, 1, 1, 1)."""
    ab = ab.float().view(-1, 1, 1, 1)
    return ab.sqrt(), (1 - ab).sqrt()


def alpha_sigma_at(alphas_cumprod: Tensor, timesteps: Tensor, like: Tensor) -> tuple[Tensor, Tensor]:
    """a_t, s_t of each example's timestep, float32, shaped (B, 1, ..., 1) to broadcast over `like`."""
    ab = alphas_cumprod.to(like.device, torch.float32)[timesteps.to(like.device)]  # (B,)
    shape = (-1,) + (1,) * (like.ndim - 1)
    return ab.sqrt().view(shape), (1 - ab).sqrt().view(shape)


def to_x0_eps(prediction_type: str, z: Tensor, out: Tensor, a: Tensor, s: Tensor) -> tuple[Tensor, Tensor]:
    """(x0, eps) implied by a U-Net output `out` at z_t (the table above)."""
    if prediction_type == "epsilon":
        return (z - s * out) / a, out
    if prediction_type == "v_prediction":
        return a * z - s * out, s * z + a * out
    if prediction_type == "sample":
        return out, (z - a * out) / s
    raise ValueError(f"prediction_type {prediction_type!r} is not one of {list(PREDICTION_TYPES)}")


def v_from(x0: Tensor, eps: Tensor, a: Tensor, s: Tensor) -> Tensor:
    """v = a eps - s x0 (Salimans & Ho 2022, section 4)."""
    return a * eps - s * x0


def ddim_step(x0: Tensor, eps: Tensor, a_next: Tensor, s_next: Tensor) -> Tensor:
    """Deterministic DDIM (eta = 0; Song et al. 2021 eq. 12): z_t' = a_t' x0 + s_t' eps."""
    return a_next * x0 + s_next * eps


def prediction_of(prediction_type: str, x0: Tensor, eps: Tensor, a: Tensor, s: Tensor) -> Tensor:
    """What a U-Net of `prediction_type` should output at z_t = a x0 + s eps: eps, v or x0."""
    if prediction_type == "epsilon":
        return eps
    if prediction_type == "v_prediction":
        return v_from(x0, eps, a, s)
    if prediction_type == "sample":
        return x0
    raise ValueError(f"prediction_type {prediction_type!r} is not one of {list(PREDICTION_TYPES)}")


def task_target(prediction_type: str, latents: Tensor, noise: Tensor, timesteps: Tensor,
                alphas_cumprod: Tensor) -> Tensor:
    """What the U-Net is trained to predict: epsilon -> eps; v_prediction -> v; sample -> x0.

    latents x0, noise eps: (B, C, h, w); timesteps: (B,) long; alphas_cumprod: (T,).
    """
    return prediction_of(prediction_type, latents, noise, *alpha_sigma_at(alphas_cumprod, timesteps, latents))


def x0_estimate(prediction_type: str, x_t: Tensor, pred: Tensor, timesteps: Tensor,
                alphas_cumprod: Tensor) -> Tensor:
    """The clean-latent estimate implied by a U-Net output at (x_t, t)."""
    if prediction_type == "sample":
        return pred
    a, s = alpha_sigma_at(alphas_cumprod, timesteps, x_t)
    return to_x0_eps(prediction_type, x_t, pred, a, s)[0]


def guidance_embedding(w: Tensor, dim: int) -> Tensor:
    """(B,) guidance scales -> (B, dim): exactly what StableDiffusionPipeline feeds a U-Net with
    `time_cond_proj_dim` (its get_guidance_scale_embedding of w - 1; it uses no pipeline state)."""
    from diffusers import StableDiffusionPipeline  # (pulls in transformers: only when a guidance-embedded U-Net runs)

    return StableDiffusionPipeline.get_guidance_scale_embedding(None, w.float() - 1, embedding_dim=dim)


def embed_dim(unet: nn.Module) -> int | None:
    """The width of the guidance embedding `unet` reads (diffusers' `time_cond_proj_dim`), None if it reads none."""
    config = getattr(unet, "config", None)
    return config.get("time_cond_proj_dim") if config is not None else None


def timestep_cond(unet: nn.Module, w: Tensor | float, batch: int, like: Tensor) -> Tensor | None:
    """The `timestep_cond` (B, dim) a guidance-embedded `unet` reads at guidance w (a scalar or (B,)),
    in `like`'s device and dtype; None for a U-Net without `time_cond_proj_dim` (LCM-style w-conditioning)."""
    dim = embed_dim(unet)
    if dim is None:
        return None
    w = torch.as_tensor(w, dtype=torch.float32).expand(batch) if not torch.is_tensor(w) or w.ndim == 0 else w
    return guidance_embedding(w, dim).to(like)


# ---------------------------------------------------------------------------------- DDIM schedules


def sampler_for(scheduler_config: dict, steps: int, prediction_type: str = STUDENT_PREDICTION):
    """The DDIMScheduler a student of `steps` steps samples with (trailing spacing, the student's prediction)."""
    keep = {k: v for k, v in scheduler_config.items() if not k.startswith("_")}
    keep.update(timestep_spacing="trailing", prediction_type=prediction_type, clip_sample=False,
                thresholding=False)
    sched = DDIMScheduler.from_config(keep)
    sched.set_timesteps(steps)
    return sched


def step_paths(scheduler_config: dict, teacher_steps: int, steps: int,
               sampled: bool = True) -> tuple[list[int], Tensor, Tensor]:
    """The student's timesteps (N,) and, for each, the teacher's path: timesteps (N, k) and ab (N, k + 1).

    Student step i goes t_i -> t_{i+1} (the last to x0: ab = the scheduler's final_alpha_cumprod);
    the teacher takes the k = teacher_steps/steps DDIM steps of its schedule in between. Raises when
    the student's timesteps are not every k-th of the teacher's, or (`sampled`: the student is saved
    with its sampler; not for progressive's inner stages) its DDIM sampler would not step t_i -> t_{i+1}.
    """
    teacher = sampler_for(scheduler_config, teacher_steps)
    student = sampler_for(scheduler_config, steps)
    T, k = student.config.num_train_timesteps, teacher_steps // steps
    t_teacher, t_student = teacher.timesteps.tolist(), student.timesteps.tolist()
    if (sampled and T % steps) or t_teacher[::k] != t_student:
        raise ValueError(f"steps={steps}: the teacher's {teacher_steps}-step DDIM schedule cannot give it (DDIM "
                         f"steps t -> t - {T}//{steps}, so num_train_timesteps={T} must be a multiple of the "
                         f"step count and the student's timesteps {t_student} every {k}-th of the teacher's); "
                         f"choose steps among {[n for n in (1, 2, 4, 5, 8, 10, 20, 25) if T % n == 0]}")
    ab_all = teacher.alphas_cumprod.float()
    final = torch.as_tensor(teacher.final_alpha_cumprod, dtype=torch.float32)
    ts = torch.tensor(t_teacher + [-1]).view(-1)  # -1: the end (x0)
    path_t = torch.stack([ts[i * k:(i + 1) * k] for i in range(steps)])  # (N, k)
    ends = torch.stack([ts[i * k:(i + 1) * k + 1] for i in range(steps)])  # (N, k + 1)
    path_ab = torch.where(ends >= 0, ab_all[ends.clamp(min=0)], final)
    return t_student, path_t, path_ab
