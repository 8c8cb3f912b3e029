"""The calibration set on which the output-loss criterion is estimated (LAPTOP-Diff, METHODS.md 3).

    L(S) = E_{x_t, t, c} || eps_full(x_t, t, c) - eps_{-S}(x_t, t, c) ||^2

is estimated on N fixed triples (x_t, t, c):
- t: spread evenly over [0, T): t_i = floor((i + 1/2) * T / N), i = 0..N-1 (stratified, so
  every part of the schedule is represented even for small N);
- c: text embeddings of prompts (for the toy world: captions of seeded scenes, encoded by the
  pipeline's own text encoder), or given/random embeddings for models without a text encoder;
- x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps with fixed noise eps (seeded). x_0 are the VAE
  latents of real images when images are given (the toy world renders its scenes); without
  images x_t is pure N(0, I) noise, which is the true marginal only near t = T (interpretation:
  the paper does not say; pass images whenever there are some).
Everything is a pure function of the seed and the inputs.
"""

from __future__ import annotations

import dataclasses
from typing import Iterator, Sequence

import torch
import torch.nn.functional as F

from slimdiff.sample import encode_prompts, is_toy_pipeline
from slimdiff.toy import world
from slimdiff.unet import added_cond_inputs, resolve_source, text_width
from slimdiff.sample import load_pipeline


@dataclasses.dataclass
class CalibrationConfig:
    size: int = 32  # N triples (x_t, t, c); LAPTOP-Diff does not publish its size
    seed: int = 0  # fixes the scenes/prompts, the noise and the random embeddings
    num_train_timesteps: int = 1000  # T: the schedule's length (SD-1.x: 1000)
    batch_size: int = 16  # U-Net forward batch when evaluating the set
    split: str = "validation"  # toy world: the scene split the prompts come from
    use_images: bool = True  # toy world: x_0 from rendered images (else x_t is pure noise)

    def __post_init__(self):
        if self.size < 1:
            raise ValueError(f"calibration size must be >= 1, got {self.size}")
        if self.num_train_timesteps < 1:
            raise ValueError(f"num_train_timesteps must be >= 1, got {self.num_train_timesteps}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")


@dataclasses.dataclass
class CalibrationSet:
    sample: torch.Tensor  # (N, C, H, W) noisy latents x_t
    timesteps: torch.Tensor  # (N,) long, in [0, T)
    encoder_hidden_states: torch.Tensor  # (N, L, D) text embeddings c
    prompts: list[str] | None = None  # the prompts behind c, when there are any
    config: CalibrationConfig = dataclasses.field(default_factory=CalibrationConfig)
    added_cond_kwargs: dict[str, torch.Tensor] | None = None  # SDXL: text_embeds (N, P), time_ids (N, 6)

    def __post_init__(self):
        n = self.sample.shape[0]
        if self.timesteps.shape != (n,) or self.encoder_hidden_states.shape[0] != n:
            raise ValueError(
                f"calibration tensors disagree on N: sample {tuple(self.sample.shape)}, timesteps "
                f"{tuple(self.timesteps.shape)}, encoder_hidden_states {tuple(self.encoder_hidden_states.shape)}"
            )

    def __len__(self) -> int:
        return self.sample.shape[0]

    def batches(self, batch_size: int | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor, dict | None]]:
        """Yield (x_t (B, C, H, W), t (B,), c (B, L, D), added_cond_kwargs (B rows) or None) in a fixed order."""
        b = batch_size or self.config.batch_size
        added = self.added_cond_kwargs
        for i in range(0, len(self), b):
            rows = None if added is None else {k: v[i : i + b] for k, v in added.items()}
            yield self.sample[i : i + b], self.timesteps[i : i + b], self.encoder_hidden_states[i : i + b], rows

    def to(self, device=None, dtype=None) -> "CalibrationSet":
        f = lambda x: x.to(device=device, dtype=dtype)  # noqa: E731  (floats only)
        return dataclasses.replace(
            self,
            sample=f(self.sample),
            timesteps=self.timesteps.to(device=device),
            encoder_hidden_states=f(self.encoder_hidden_states),
            added_cond_kwargs=None if self.added_cond_kwargs is None else
            {k: f(v) for k, v in self.added_cond_kwargs.items()},
        )

    def describe(self) -> dict:
        """A JSON-able summary for recipe.json."""
        return {
            **dataclasses.asdict(self.config),
            "sample_shape": list(self.sample.shape),
            "embedding_shape": list(self.encoder_hidden_states.shape),
            "prompts": list(self.prompts[:8]) if self.prompts else None,  # first few, for reading
        }


def spread_timesteps(n: int, num_train_timesteps: int) -> torch.Tensor:
    """t_i = floor((i + 1/2) * T / n): n timesteps spread evenly over [0, T), shape (n,)."""
    i = torch.arange(n, dtype=torch.float64)
    return torch.floor((i + 0.5) * num_train_timesteps / n).long().clamp_(0, num_train_timesteps - 1)


def _alphas_cumprod(scheduler, num_train_timesteps: int) -> torch.Tensor:
    if scheduler is not None and hasattr(scheduler, "alphas_cumprod"):
        return scheduler.alphas_cumprod.to(torch.float32)
    # SD-1.x's scaled-linear schedule (beta 0.00085 -> 0.012)
    betas = torch.linspace(0.00085**0.5, 0.012**0.5, num_train_timesteps, dtype=torch.float32) ** 2
    return torch.cumprod(1.0 - betas, dim=0)


def _noisy(x0: torch.Tensor | None, shape, t: torch.Tensor, abar: torch.Tensor, gen) -> torch.Tensor:
    noise = torch.randn(shape, generator=gen)  # fixed eps: (N, C, H, W)
    if x0 is None:
        return noise
    a = abar[t].view(-1, 1, 1, 1)
    return a.sqrt() * x0 + (1 - a).sqrt() * noise


def random_calibration(
    unet,
    config: CalibrationConfig | None = None,
    embeddings: torch.Tensor | None = None,
    seq_len: int = 77,
    latents: torch.Tensor | None = None,
    scheduler=None,
) -> CalibrationSet:
    """A calibration set for a bare U-Net: given or random N(0, 1) embeddings.

    `embeddings`: (N, L, D) or (1, L, D) (broadcast to N) text embeddings; default random with
    L = `seq_len` and D = the U-Net's text width (`slimdiff.unet.text_width`). `latents`: optional
    (N, C, H, W) clean latents x_0; default none (x_t is pure noise; see module docstring).
    """
    config = config or CalibrationConfig()
    n = config.size
    gen = torch.Generator().manual_seed(config.seed)
    cfg = unet.config
    size = cfg.sample_size if isinstance(cfg.sample_size, int) else cfg.sample_size[0]
    t = spread_timesteps(n, config.num_train_timesteps)
    # 1. c: (N, L, D)
    if embeddings is None:
        embeddings = torch.randn((n, seq_len, text_width(unet)), generator=gen)
    elif embeddings.shape[0] == 1:
        embeddings = embeddings.expand(n, -1, -1).clone()
    elif embeddings.shape[0] != n:
        raise ValueError(f"embeddings must have 1 or {n} rows (calibration size), got {tuple(embeddings.shape)}")
    # 2. x_t: (N, C, H, W)
    shape = (n, cfg.in_channels, size, size)
    if latents is not None and tuple(latents.shape) != shape:
        raise ValueError(f"latents must have shape {shape}, got {tuple(latents.shape)}")
    abar = _alphas_cumprod(scheduler, config.num_train_timesteps)
    x_t = _noisy(latents, shape, t, abar, gen)
    added = added_cond_inputs(unet, n, gen)  # SDXL: seeded pooled text, the model's own size time ids
    return CalibrationSet(x_t, t, embeddings.float(), None, config, added)


@torch.no_grad()
def pipeline_calibration(
    pipe,
    prompts: Sequence[str],
    config: CalibrationConfig | None = None,
    images: torch.Tensor | None = None,
) -> CalibrationSet:
    """A calibration set from a `StableDiffusionPipeline` or `StableDiffusionXLPipeline`: its text
    encoder(s) embed `prompts` (N of them) as the pipeline feeds its U-Net (`slimdiff.sample.encode_prompts`:
    SDXL adds the pooled text and the time ids); `images` (N, 3, H, W) in [0, 1], when given,
    are VAE-encoded to x_0."""
    config = config or CalibrationConfig()
    n = config.size
    if len(prompts) != n:
        raise ValueError(f"need {n} prompts (calibration size), got {len(prompts)}")
    gen = torch.Generator().manual_seed(config.seed)
    # 1. c = text_encoder(tokens): (N, L, D) (and SDXL's added conditioning)
    cond = encode_prompts(pipe, prompts)
    # 2. x_0 = scaling_factor * E(image): (N, 4, h, w)
    x0 = None
    unet_size = pipe.unet.config.sample_size
    unet_size = unet_size if isinstance(unet_size, int) else unet_size[0]
    if images is not None:
        vae = pipe.vae
        px = unet_size * pipe.vae_scale_factor  # the pixel size the U-Net's latents decode to
        if tuple(images.shape[-2:]) != (px, px):  # refused, not resized silently (STYLE habit 6)
            raise ValueError(f"calibration images are {images.shape[-1]}x{images.shape[-2]}, the U-Net's latents "
                             f"decode to {px}x{px}: resize them first")
        x0 = vae.encode(images.float() * 2 - 1).latent_dist.mean * vae.config.scaling_factor
    # 3. x_t with fixed noise at spread timesteps
    t = spread_timesteps(n, config.num_train_timesteps)
    shape = (n, pipe.unet.config.in_channels, unet_size, unet_size)
    abar = _alphas_cumprod(pipe.scheduler, config.num_train_timesteps)
    x_t = _noisy(x0, shape, t, abar, gen)
    return CalibrationSet(x_t, t, cond.encoder_hidden_states, list(prompts), config, cond.added_cond_kwargs)


def toy_calibration(pipe, config: CalibrationConfig | None = None) -> CalibrationSet:
    """The toy world's calibration set: captions of `config.size` seeded scenes of
    `config.split`, their rendered images as x_0 (when `config.use_images`)."""
    config = config or CalibrationConfig()
    scenes = world.sample_scenes(config.split, config.size, seed=config.seed)
    prompts = [world.caption(s) for s in scenes]
    images = None
    if config.use_images:
        images = world.to_tensor(world.render_batch(scenes))  # (N, 3, R, R) at the world's resolution
        size = pipe.unet.config.sample_size
        px = (size if isinstance(size, int) else size[0]) * pipe.vae_scale_factor
        if images.shape[-1] != px:  # square renders: resized to the pipeline's image size, on purpose
            images = F.interpolate(images.float(), size=(px, px), mode="bilinear", align_corners=False)
    return pipeline_calibration(pipe, prompts, config, images=images)


def calibration_for(source, unet, config: CalibrationConfig | None = None,
                    prompts: Sequence[str] | None = None) -> CalibrationSet:
    """The calibration set for a model named as `load_unet` names it (`source`):
    the toy world -> `toy_calibration`; another pipeline -> its text encoder on `prompts`
    (required); a bare U-Net (`sd15-arch`, a UNet dir) -> random embeddings."""
    config = config or CalibrationConfig()
    if resolve_source(source)[0] != "pipeline":
        return random_calibration(unet, config)
    pipe = load_pipeline(source)
    if is_toy_pipeline(pipe):
        return toy_calibration(pipe, config)
    if prompts is None:
        raise ValueError(f"{source} is not the toy world: give calibration prompts (one per line), "
                         f"at least {config.size}")
    if len(prompts) < config.size:
        raise ValueError(f"need {config.size} calibration prompts, got {len(prompts)}")
    return pipeline_calibration(pipe, list(prompts)[: config.size], config)
