"""Softness and noise applied to toy-world images: how the judge is measured and made robust.

    x = gaussian_blur(images, 2.0)                        # (N, 3, 64, 64) in [0, 1], sigma in px
    x = resample(images, 4.0)                             # to 16x16 (area), back to 64x64 (bilinear)
    x = add_noise(images, 0.05, gen)                      # + N(0, 0.05^2) per pixel, clamped to [0, 1]
    x = jpeg(images, 30)                                  # a JPEG round trip at quality 30 (PIL)
    x = random_degrade(images, gen, DegradeConfig())      # the judge's training-time degradation

A diffusion model's failures at few steps are soft, noisy images; a judge that reads softness as
wrong attributes measures sharpness (which KID and PSNR already measure) instead of what is drawn.
`BENCH_DEGRADATIONS` are the fixed conditions `bench/bench_judge.py` measures the judge under.
"""

from __future__ import annotations

import dataclasses
import io
import math
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F


def _gaussian_kernels(sigma: torch.Tensor, radius: int) -> torch.Tensor:
    """Normalised 1-D Gaussian kernels (N, 2 * radius + 1), one per sigma (N,); sigma 0 -> identity."""
    x = torch.arange(-radius, radius + 1, dtype=torch.float32)  # (K,)
    s = sigma.float().clamp(min=1e-6)[:, None]  # (N, 1)
    k = torch.exp(-0.5 * (x[None, :] / s) ** 2)  # (N, K)
    return k / k.sum(dim=1, keepdim=True)


def gaussian_blur(images: torch.Tensor, sigma: float | torch.Tensor) -> torch.Tensor:
    """Separable Gaussian blur of (N, C, H, W) images, one sigma (pixels) for all or one per image (N,).

    The kernel spans +-ceil(3 sigma_max) pixels; borders are reflected. Torch only, so training
    and the bench blur identically."""
    n, c, h, w = images.shape
    sigma = torch.as_tensor(sigma, dtype=torch.float32)
    sigma = sigma.expand(n) if sigma.ndim == 0 else sigma
    if sigma.shape != (n,) or bool((sigma < 0).any()):
        raise ValueError(f"sigma must be >= 0, one value or one per image ({n}), got {sigma.tolist()}")
    radius = int(math.ceil(3 * float(sigma.max()))) if n else 0
    if radius == 0:
        return images.clone()
    radius = min(radius, min(h, w) - 1)  # reflect padding needs radius < side
    k = _gaussian_kernels(sigma, radius).repeat_interleave(c, dim=0)  # (N * C, K): image i's kernel per channel
    x = images.float().reshape(1, n * c, h, w)
    x = F.conv2d(F.pad(x, (radius, radius, 0, 0), mode="reflect"), k[:, None, None, :], groups=n * c)  # along W
    x = F.conv2d(F.pad(x, (0, 0, radius, radius), mode="reflect"), k[:, None, :, None], groups=n * c)  # along H
    return x.reshape(n, c, h, w)


def resample(images: torch.Tensor, factor: float) -> torch.Tensor:
    """Down by `factor` (area average, the side rounded), then back up to the side (bilinear): the
    softness of an image made at lower resolution."""
    if factor < 1:
        raise ValueError(f"resample factor must be >= 1, got {factor}")
    h, w = images.shape[-2:]
    small = F.interpolate(images.float(), size=(max(1, round(h / factor)), max(1, round(w / factor))), mode="area")
    return F.interpolate(small, size=(h, w), mode="bilinear", align_corners=False).clamp(0, 1)


def add_noise(images: torch.Tensor, sigma: float | torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Additive Gaussian pixel noise of std `sigma` (one value, or (N,) per image), clamped to [0, 1]."""
    sigma = torch.as_tensor(sigma, dtype=torch.float32).reshape(-1, 1, 1, 1)
    return (images.float() + torch.randn(images.shape, generator=gen) * sigma).clamp(0, 1)


def jpeg(images: torch.Tensor, quality: int) -> torch.Tensor:
    """A JPEG round trip (PIL, 4:2:0 chroma subsampling, `quality` 1-95) of (N, 3, H, W) images in [0, 1]."""
    from PIL import Image

    if not 1 <= quality <= 95:
        raise ValueError(f"JPEG quality must be in [1, 95], got {quality}")
    arr = (images.clamp(0, 1).permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8)
    out = []
    for a in arr:
        buf = io.BytesIO()
        Image.fromarray(a).save(buf, format="JPEG", quality=quality)
        out.append(np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB")))
    return torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2).float() / 255


@dataclasses.dataclass(frozen=True)
class DegradeConfig:
    """The judge's training-time degradation (`random_degrade`); p = 0 turns it off."""

    p: float = 0.75  # share of training images degraded; the first v2 judge trained with p = 0
    blur_share: float = 0.5  # of degraded images: Gaussian blur, sigma ~ U(0.3, blur_sigma)
    resample_share: float = 0.3  # resampled, factor ~ U(1.5, resample_factor); the rest only noised
    blur_sigma: float = 2.5  # px; the bench measures up to 2 px
    resample_factor: float = 4.0  # 64 -> 16 -> 64 at most
    noise_p: float = 0.5  # of degraded images: also Gaussian noise, sigma ~ U(0, noise_sigma)
    noise_sigma: float = 0.12  # pixel std, images in [0, 1]

    def __post_init__(self):
        for name in ("p", "blur_share", "resample_share", "noise_p"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        if self.blur_share + self.resample_share > 1.0:
            raise ValueError(f"blur_share + resample_share must be <= 1, got {self.blur_share} + {self.resample_share}")
        if self.blur_sigma < 0.3 or self.resample_factor < 1.5 or self.noise_sigma < 0:
            raise ValueError(f"need blur_sigma >= 0.3, resample_factor >= 1.5, noise_sigma >= 0; got "
                             f"{self.blur_sigma}, {self.resample_factor}, {self.noise_sigma}")


def random_degrade(images: torch.Tensor, gen: torch.Generator, config: DegradeConfig) -> torch.Tensor:
    """Per image (N, 3, H, W) in [0, 1]: with probability p one softness (blur, resample or none, by
    the shares) and, with probability noise_p, Gaussian noise. Draws 7 uniforms per image in a fixed
    order, whatever is applied, so the generator's stream depends only on N; p = 0 draws nothing."""
    if config.p == 0:
        return images
    n = images.shape[0]
    u = torch.rand(n, 7, generator=gen)  # (N, 7): degraded, kind, blur sigma, factor, noise?, noise sigma, spare
    degraded = u[:, 0] < config.p
    blur = degraded & (u[:, 1] < config.blur_share)
    res = degraded & (u[:, 1] >= config.blur_share) & (u[:, 1] < config.blur_share + config.resample_share)
    noisy = degraded & (u[:, 4] < config.noise_p)
    noise = torch.randn(images.shape, generator=gen)  # drawn for every image: a fixed stream
    x = images.float()
    if bool(blur.any()):
        sigma = 0.3 + (config.blur_sigma - 0.3) * u[:, 2]
        x = torch.where(blur[:, None, None, None], gaussian_blur(x, torch.where(blur, sigma, 0.0)), x)
    x = x.clone() if x is images else x  # resampled in place below; the caller's images stay as they were
    for i in res.nonzero().flatten().tolist():
        x[i : i + 1] = resample(x[i : i + 1], 1.5 + (config.resample_factor - 1.5) * float(u[i, 3]))
    sigma_n = torch.where(noisy, config.noise_sigma * u[:, 5], 0.0)[:, None, None, None]
    return (x + noise * sigma_n).clamp(0, 1)


def _fixed(fn: Callable, *args) -> Callable[[torch.Tensor, torch.Generator], torch.Tensor]:
    return lambda images, gen: fn(images, *args)


# the bench's conditions: name -> f(images (N, 3, 64, 64) in [0, 1], gen) -> images
BENCH_DEGRADATIONS: dict[str, Callable[[torch.Tensor, torch.Generator], torch.Tensor]] = {
    "clean": lambda images, gen: images,
    "blur 0.5 px": _fixed(gaussian_blur, 0.5),
    "blur 1 px": _fixed(gaussian_blur, 1.0),
    "blur 2 px": _fixed(gaussian_blur, 2.0),
    "noise 0.05": lambda images, gen: add_noise(images, 0.05, gen),
    "noise 0.1": lambda images, gen: add_noise(images, 0.1, gen),
    "resample 2x": _fixed(resample, 2.0),
    "resample 4x": _fixed(resample, 4.0),
    "jpeg q30": _fixed(jpeg, 30),
    "jpeg q10": _fixed(jpeg, 10),
    "blur 1 px + noise 0.05": lambda images, gen: add_noise(gaussian_blur(images, 1.0), 0.05, gen),
}
