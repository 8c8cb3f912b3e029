"""DMD's pieces as functions (the trainer: `slimdiff.distill.onestep`): the distribution-matching gradient and
loss, the GAN losses and head, the generator's timesteps, the memory of three U-Nets' states, and the teacher
noise -> image pairs of DMD's regression term (Yin et al. 2024, "One-step Diffusion with Distribution Matching
Distillation", sec. 3.3, eq. 9), made once and cached.

    pairs = teacher_pairs("runs/pairs.safetensors", teacher, scheduler_config, prediction_type, encode, shape,
                          null_text, n=2048, steps=16, guidance=5.0, seed=0, data_fingerprint=...)
    pairs.index (n,) long: the data items whose captions the pairs use; pairs.noise, pairs.latents (n, C, h, w)

Pair i: z_i ~ N(0, I) (one seeded draw of all n) and x_i, the guided teacher's deterministic DDIM sample from z_i
(`DDIMScheduler`, trailing spacing, `steps` steps: the bench's "teacher DDIM 16" path; w out(c) - (w - 1) out(null)
at guidance w, the caption of data item `index[i]`), in the U-Net's latent space. The file is safetensors
(pickle-free) with the settings and the teacher's and data's fingerprints in its header; a file made with other
settings is refused in one line instead of being silently reused.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from diffusers import LCMScheduler
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from slimdiff.data.cache import module_fingerprint
from slimdiff.distill.guidance import guided_output
from slimdiff.io import atomic_path
from slimdiff.sample.conditioning import Conditioning
from slimdiff.train.maths import sampler_for

Tensor = torch.Tensor


# x, x0 (B, C, h, w)


def dmd_gradient(x: Tensor, x0_real: Tensor, x0_fake: Tensor) -> Tensor:
    """DMD's per-row normalised score difference (x0_fake - x0_real) / mean |x - x0_real| (B, C, h, w), finite."""
    weight = (x - x0_real).abs().mean(dim=tuple(range(1, x.ndim)), keepdim=True)  # (B, 1, 1, 1)
    return torch.nan_to_num((x0_fake - x0_real) / weight)


def dmd_loss(x: Tensor, grad: Tensor) -> Tensor:
    """0.5 mean (x - sg(x - grad))^2: its value is 0.5 mean grad^2, its gradient w.r.t. x is grad / x.numel()."""
    return 0.5 * F.mse_loss(x.float(), (x - grad).detach().float())


def gan_losses(real_logits: Tensor, fake_logits: Tensor) -> tuple[Tensor, Tensor]:
    """(discriminator, generator) non-saturating logistic losses: softplus(D(fake)) + softplus(-D(real)) and
    softplus(-D(fake)), means over rows."""
    return F.softplus(fake_logits).mean() + F.softplus(-real_logits).mean(), F.softplus(-fake_logits).mean()


def generator_timesteps(scheduler_config: dict, steps: int, solver_steps: int) -> Tensor:
    """LCMScheduler's `steps` timesteps (descending, (K,) long) on its `solver_steps` grid: what the pipeline runs."""
    sched = LCMScheduler.from_config({**scheduler_config, "original_inference_steps": solver_steps})
    sched.set_timesteps(steps)
    return sched.timesteps.long()


def trained_step_counts(scheduler_config: dict, steps: int, solver_steps: int) -> list[int]:
    """The step counts n <= `steps` whose LCMScheduler timesteps are all ones the generator was trained at."""
    trained = set(generator_timesteps(scheduler_config, steps, solver_steps).tolist())
    return [n for n in range(1, steps + 1)
            if set(generator_timesteps(scheduler_config, n, solver_steps).tolist()) <= trained]


def state_memory_gb(generator_params: int, fake_params: int, teacher_params: int, teacher_bytes: int = 2,
                    ema: bool = False) -> float:
    """GB (1e9 bytes) of the three U-Nets' weights and optimiser states: the generator and the fake score each hold
    float32 weights, gradients and AdamW's two moments (16 bytes a parameter; an EMA adds 4), the frozen teacher its
    weights (`teacher_bytes`: 2 in fp16). Activations come on top."""
    return (generator_params * (16 + 4 * ema) + fake_params * 16 + teacher_params * teacher_bytes) / 1e9


class GanHead(nn.Module):
    """A logit per row from mid-block features (B, C, h, w): conv 3x3, SiLU, conv 1x1, spatial mean. No
    normalisation: the toy's and the tiny tests' mid blocks are 1x1, where a group norm would erase them."""

    def __init__(self, channels: int):
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(channels, channels, 3, padding=1), nn.SiLU(), nn.Conv2d(channels, 1, 1))

    def forward(self, features: Tensor) -> Tensor:
        return self.net(features.float()).mean(dim=(1, 2, 3))  # (B,)


@dataclasses.dataclass
class Pairs:
    index: Tensor  # (n,) long: data item of each pair
    noise: Tensor  # (n, C, h, w): the teacher's starting noise
    latents: Tensor  # (n, C, h, w): its DDIM sample


def ddim_sample(teacher: nn.Module, scheduler_config: dict, prediction_type: str, noise: Tensor, text: Conditioning,
                null_text: Conditioning, guidance: float, steps: int) -> Tensor:
    """The guided teacher's deterministic DDIM sample (B, C, h, w) from `noise` (B, C, h, w): what
    StableDiffusionPipeline returns (output_type="latent") with a trailing-spacing DDIMScheduler."""
    sched = sampler_for(scheduler_config, steps, prediction_type)
    z = noise * sched.init_noise_sigma
    w = torch.full((z.shape[0],), float(guidance), device=z.device)
    for t in sched.timesteps:
        out, _ = guided_output(teacher, z, t.expand(z.shape[0]).to(z.device), text, null_text, w, None)
        z = sched.step(out, t, z).prev_sample
    return z


def teacher_pairs(path: str | Path, teacher: nn.Module, scheduler_config: dict, prediction_type: str,
                  encode: Callable[[list[int]], Conditioning], shape: tuple[int, ...], null_text: Conditioning,
                  n: int, steps: int, guidance: float, seed: int, data_fingerprint: str, batch: int = 256) -> Pairs:
    """The n pairs of items 0..n-1 (module doc), read from `path` when it holds them, else made and written there.
    `encode(indices)`: the items' text conditioning (b rows); `shape`: one latent's (C, h, w)."""
    meta = {"kind": "slimdiff teacher pairs", "n": str(n), "steps": str(steps), "guidance": repr(float(guidance)),
            "seed": str(seed), "prediction_type": prediction_type, "data": data_fingerprint,
            "teacher": module_fingerprint(teacher)}
    path = Path(path)
    if path.is_file():
        with safe_open(str(path), "pt") as f:
            have = f.metadata() or {}
            wrong = {k: (have.get(k), v) for k, v in meta.items() if have.get(k) != v}
            if wrong:
                raise ValueError(f"teacher pairs {path} were made with other settings (file, wanted): {wrong}; "
                                 f"delete it or name another --reg-pairs file")
            return Pairs(*(f.get_tensor(k) for k in ("index", "noise", "latents")))
    index = torch.arange(n)
    noise = torch.randn(n, *shape, generator=torch.Generator().manual_seed(seed))
    device = next(teacher.parameters()).device
    dtype = next(teacher.parameters()).dtype
    out = []
    with torch.no_grad():
        for lo in range(0, n, batch):
            rows = index[lo:lo + batch].tolist()
            z = ddim_sample(teacher, scheduler_config, prediction_type, noise[lo:lo + batch].to(device, dtype),
                            encode(rows).to(dtype=dtype), null_text.to(dtype=dtype), guidance, steps)
            out.append(z.float().cpu())
    pairs = Pairs(index, noise, torch.cat(out))
    with atomic_path(path) as tmp:
        save_file({"index": index, "noise": noise.contiguous(), "latents": pairs.latents.contiguous()}, str(tmp),
                  metadata=meta)
    return pairs
