"""The toy pipeline's sampling defaults, its loader, and a plain image grid for renders.

Evaluation (judge alignment, all-correct, judge-FID, the rendered ceiling) is
`slimdiff.eval.evaluate` / `slimdiff evaluate toy`, which uses these defaults.
"""

from __future__ import annotations

from pathlib import Path

import torch

from slimdiff.io import atomic_path
from slimdiff.toy import pipeline_path


DEFAULT_STEPS = 20  # DPM-Solver++ steps of the shipped sampler
DEFAULT_GUIDANCE = 5.0  # classifier-free guidance scale


def load_toy_pipeline(path: str | Path | None = None):
    """`StableDiffusionPipeline.from_pretrained(path or the shipped toy)`, progress bar off."""
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(Path(path) if path is not None else pipeline_path())
    pipe.set_progress_bar_config(disable=True)
    return pipe


def save_grid(images: torch.Tensor, path: str | Path, ncol: int = 8, scale: int = 4) -> Path:
    """Write images (N, 3, H, W) in [0, 1] as one PNG grid, each upscaled `scale`x (nearest)."""
    import numpy as np
    from PIL import Image

    n, _, h, w = images.shape
    nrow = (n + ncol - 1) // ncol
    grid = np.zeros((nrow * (h + 1), ncol * (w + 1), 3), np.uint8)
    arr = (images.clamp(0, 1).permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8)
    for i in range(n):
        r, c = divmod(i, ncol)
        grid[r * (h + 1) : r * (h + 1) + h, c * (w + 1) : c * (w + 1) + w] = arr[i]
    img = Image.fromarray(grid).resize((grid.shape[1] * scale, grid.shape[0] * scale), Image.NEAREST)
    with atomic_path(path) as tmp:
        img.save(tmp, format="PNG")
    return Path(path)
