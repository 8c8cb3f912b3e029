"""The latent pool of decoder distillation: what the decoders are trained and evaluated on.

`ensure_pool(cfg, ...)` writes `out/latents.safetensors` (train / eval latents, VAE-native: what
post_quant_conv takes) once, from U-Net generations (`unet_latents`, SnapFusion's pairs), the
teacher encoder's latents of data images (`data_latents`) or both, and reuses it while the
settings that determine it (`POOL_KEYS`) are the same. `cfg`: a `VaeDistillConfig`.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from tqdm.auto import tqdm

from slimdiff.data import build_dataset
from slimdiff.sample import fill_sampling, image_generators, is_toy_pipeline, read_prompts
from slimdiff.io import atomic_path
from slimdiff.toy import world
from slimdiff.train.loop import random_generator
from slimdiff.train.parts import load_checked
from slimdiff.sample import load_pipeline

LATENT_SOURCES = ("unet", "data", "both")
POOL_SEED_STREAM = 7  # random_generator stream of the data latents' posterior samples
POOL_KEYS = ("latents", "num_latents", "eval_latents", "prompts", "gen_steps", "guidance", "data", "toy_size",
             "resolution", "seed", "teacher")  # the settings that determine the latent pool


def ensure_pool(cfg, teacher, device, path: Path, progress: bool) -> None:
    """Write `path` (train / eval latents, VAE-native: what post_quant_conv takes) unless a pool
    made with the same settings is there already."""
    about = json.dumps({k: getattr(cfg, k) for k in POOL_KEYS}, sort_keys=True)
    if path.is_file():
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
def unet_latents(cfg, n: int, device, progress: bool) -> torch.Tensor:
    """n latents (n, C, h, w) of the teacher pipeline generating from prompts (SnapFusion's pairs):
    prompt i (cycled) with noise seeded `seed + i`, the pipeline's sampler, divided by the VAE's
    scaling factor (what the pipeline hands its decoder)."""
    pipe = load_checked("--teacher", cfg.teacher, load_pipeline).to(device)
    pipe.set_progress_bar_config(disable=True)
    toy = is_toy_pipeline(pipe)
    if cfg.prompts is not None:
        prompts = read_prompts(cfg.prompts)
    elif toy:
        prompts = [world.caption(s) for s in world.sample_scenes("train", n, cfg.seed)]
    else:
        raise ValueError(f"the teacher {cfg.teacher!r} is not the toy world: give --prompts FILE for the U-Net latents")
    if not prompts:
        raise ValueError(f"--prompts {cfg.prompts!r} holds no prompt")
    steps, guidance = fill_sampling(pipe, None, None, toy)
    steps, guidance = cfg.gen_steps or steps, guidance if cfg.guidance is None else cfg.guidance
    out, batch = [], 8
    for start in tqdm(range(0, n, batch), desc="U-Net latents", disable=not progress):
        k = min(batch, n - start)
        chunk = [prompts[(start + j) % len(prompts)] for j in range(k)]
        lat = pipe(prompt=chunk, num_inference_steps=steps, guidance_scale=guidance,
                   generator=image_generators(cfg.seed, k, start), output_type="latent").images
        out.append(lat.float().cpu() / pipe.vae.config.scaling_factor)
    return torch.cat(out)


@torch.no_grad()
def data_latents(cfg, teacher, n: int, device) -> torch.Tensor:
    """n encoder latents (n, C, h, w) of data images: a seeded choice of items, one seeded
    posterior sample each (mean + std * eps), VAE-native scale."""
    resolution = cfg.resolution or int(teacher.config.sample_size)
    data = build_dataset(cfg.data, resolution, seed=cfg.seed, toy_size=cfg.toy_size)
    if len(data) < n:
        raise ValueError(f"data {cfg.data!r} has {len(data)} items, fewer than num_latents + eval_latents = {n}")
    g = random_generator(cfg.seed, 0, POOL_SEED_STREAM)
    order = torch.randperm(len(data), generator=g)[:n].tolist()
    encoder = teacher.to(device)
    out = []
    for start in range(0, n, 16):
        pix = torch.stack([data[i]["pixel_values"] for i in order[start:start + 16]])  # (b, 3, H, W) in [-1, 1]
        dist = encoder.encode(pix.to(device, next(encoder.parameters()).dtype)).latent_dist
        eps = torch.randn(dist.mean.shape, generator=g)
        out.append((dist.mean.float().cpu() + dist.std.float().cpu() * eps))
    return torch.cat(out)
