"""Judge a pipeline on the toy world: generate each prompt of a split, read the attributes back.

    from slimdiff.toy.evaluate import evaluate_toy, load_toy_pipeline
    evaluate_toy(load_toy_pipeline(), split="test", n=128, steps=20, guidance=5.0, seed=0)
    # {"alignment": ..., "all_correct": ..., "per_attribute": {...}, "novel": {...}, ...}

Image i of a run is generated from `torch.Generator().manual_seed(seed + i)`, so results do
not depend on the batch size. (The full metric suite, judge-FID included, is `slimdiff.eval`.)
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch

from slimdiff.toy import world

DEFAULT_STEPS = 20  # DPM-Solver++ steps of the shipped sampler
DEFAULT_GUIDANCE = 5.0  # classifier-free guidance scale


def load_toy_pipeline(path: str | Path | None = None):
    """`StableDiffusionPipeline.from_pretrained(path or the shipped toy)`, progress bar off."""
    from diffusers import StableDiffusionPipeline

    from slimdiff.toy import pipeline_path

    pipe = StableDiffusionPipeline.from_pretrained(Path(path) if path is not None else pipeline_path())
    pipe.set_progress_bar_config(disable=True)
    return pipe


@torch.no_grad()
def generate(pipe, prompts: Sequence[str], steps: int = DEFAULT_STEPS, guidance: float = DEFAULT_GUIDANCE,
             seed: int = 0, batch_size: int = 32, progress: bool = True) -> torch.Tensor:
    """Images (N, 3, H, W) in [0, 1] for `prompts`; image i uses seed `seed + i`."""
    from tqdm.auto import tqdm

    out = []
    for i in tqdm(range(0, len(prompts), batch_size), desc="generate", disable=not progress, dynamic_ncols=True):
        part = list(prompts[i : i + batch_size])
        gens = [torch.Generator().manual_seed(seed + i + j) for j in range(len(part))]
        images = pipe(part, num_inference_steps=steps, guidance_scale=guidance, generator=gens,
                      output_type="pt").images  # (B, 3, H, W) in [0, 1]
        out.append(images.float().cpu())
    return torch.cat(out)


def evaluate_toy(pipe, split: str = "test", n: int = 128, steps: int = DEFAULT_STEPS,
                 guidance: float = DEFAULT_GUIDANCE, seed: int = 0, judge=None, batch_size: int = 32,
                 progress: bool = True) -> dict:
    """Alignment of `pipe`'s generations for `n` prompts of `split` (scenes drawn with `seed`).

    Returns the judge's `score` dict plus, on 'test', the same scores for the scenes with a
    held-out colour-shape pair ("novel") and the rest ("seen_pairs"), and the settings.
    """
    from slimdiff.toy.judge import load_judge

    judge = judge if judge is not None else load_judge()
    scenes = world.sample_scenes(split, n, seed=seed)
    images = generate(pipe, [world.caption(s) for s in scenes], steps, guidance, seed, batch_size, progress)
    result = judge.score(images, scenes)
    novel = [i for i, s in enumerate(scenes) if world.is_novel(s)]
    seen = [i for i, s in enumerate(scenes) if not world.is_novel(s)]
    if novel and seen:
        result["novel"] = judge.score(images[novel], [scenes[i] for i in novel])
        result["seen_pairs"] = judge.score(images[seen], [scenes[i] for i in seen])
    result["settings"] = {"split": split, "n": n, "steps": steps, "guidance": guidance, "seed": seed}
    return result


def rendered_ceiling(split: str = "test", n: int = 128, seed: int = 0, judge=None) -> dict:
    """The judge's score on the rendered images of the same scenes (the ceiling of alignment)."""
    from slimdiff.toy.judge import load_judge

    judge = judge if judge is not None else load_judge()
    scenes = world.sample_scenes(split, n, seed=seed)
    return judge.score(world.to_tensor(world.render_batch(scenes)), scenes)


def save_grid(images: torch.Tensor, path: str | Path, ncol: int = 8, scale: int = 4) -> Path:
    """Write images (N, 3, H, W) in [0, 1] as one PNG grid, each upscaled `scale`x (nearest)."""
    import numpy as np
    from PIL import Image

    from slimdiff.io import atomic_path

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
