"""Images from prompts with fixed seeds.

    images = generate("toy", ["a small red circle on the left"], seed=0)   # toy sampler: 20 steps, cfg 5
    save_images(images, prompts, "out/")                                   # NNN_<prompt>.png and grid.png

Seeding: image i of a call draws its noise from its own generator seeded with `seed + i`, so the
same seed gives the same images whatever the batch size. Steps and guidance not given are the
model's (`slimdiff.sample.load.fill_sampling`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator, Sequence

import torch
from diffusers import DiffusionPipeline
from PIL import Image
from tqdm.auto import tqdm

from slimdiff.io import atomic_path
from slimdiff.report.grid import make_grid
from slimdiff.sample.load import fill_sampling, resolve_pipeline, scheduler_swapped, with_vae
from slimdiff.sample.prompts import check_prompts


def image_generators(seed: int, n: int, start: int = 0) -> list[torch.Generator]:
    """CPU generators for images start..start+n-1 of a call: image i is seeded with `seed + i`."""
    return [torch.Generator("cpu").manual_seed(seed + i) for i in range(start, start + n)]


def iter_generate(
    pipe: DiffusionPipeline,
    prompts: Sequence[str],
    steps: int,
    guidance: float,
    seed: int = 0,
    batch_size: int = 8,
    height: int | None = None,
    width: int | None = None,
    negative_prompt: str | None = None,
    progress: bool = True,
) -> Iterator[tuple[int, list[str], list[Image.Image]]]:
    """Yield `(start, prompts, images)` per batch; image `start + j` is seeded with `seed + start + j`."""
    if steps < 1 or batch_size < 1:
        raise ValueError(f"steps and batch_size must be >= 1, got steps={steps}, batch_size={batch_size}")
    check_prompts(getattr(pipe, "tokenizer", None), prompts)  # not UTF-8: refused; unknown words: warned
    if (height is None) != (width is None):  # diffusers drops a lone one: the other is the pipeline's own
        size = pipe.unet.config.sample_size
        default_h, default_w = (size, size) if isinstance(size, int) else tuple(size)
        height = height if height is not None else default_h * pipe.vae_scale_factor
        width = width if width is not None else default_w * pipe.vae_scale_factor
    own_bar = dict(getattr(pipe, "_progress_bar_config", {}))
    pipe.set_progress_bar_config(disable=True)  # one bar over all images instead of one per batch
    bar = tqdm(total=len(prompts), desc="generate", unit="img", disable=not progress)
    try:
        for start in range(0, len(prompts), batch_size):
            batch = list(prompts[start : start + batch_size])
            out = pipe(
                prompt=batch,
                negative_prompt=[negative_prompt] * len(batch) if negative_prompt is not None else None,
                num_inference_steps=steps,
                guidance_scale=guidance,
                height=height,
                width=width,
                generator=image_generators(seed, len(batch), start),  # one per image
                output_type="pil",
            )
            bar.update(len(batch))
            yield start, batch, list(out.images)
    finally:
        bar.close()
        pipe._progress_bar_config = own_bar


def generate(
    pipe_or_model,
    prompts: Sequence[str],
    steps: int | None = None,
    guidance: float | None = None,
    seed: int = 0,
    scheduler: str | None = None,
    batch_size: int = 8,
    height: int | None = None,
    width: int | None = None,
    negative_prompt: str | None = None,
    progress: bool = True,
    base: str | os.PathLike | None = None,
    device: str | torch.device | None = None,
    vae=None,
) -> list[Image.Image]:
    """One image per prompt, in order. Image i uses its own generator seeded with `seed + i`.

    `pipe_or_model`: anything `resolve_pipeline` takes. `scheduler`: a name in SCHEDULERS
    (None keeps the pipeline's own); the pipeline's scheduler is restored afterwards.
    `height`/`width`: default the pipeline's (U-Net sample_size x VAE scale factor), each alone too.
    `steps`/`guidance` None: `fill_sampling` (20 steps, 5.0 on the toy world; the field's
    25 steps, 7.5 otherwise, METHODS.md section 7). `device`: move the pipeline there first
    (e.g. "cuda"); the noise is drawn on the CPU either way, so images match across devices
    up to floating-point differences. `vae`: decode with this VAE instead (`slimdiff.vae.load_vae`).
    """
    prompts = list(prompts)
    if not prompts:
        raise ValueError("generate needs at least one prompt")
    pipe = with_vae(resolve_pipeline(pipe_or_model, base=base), vae)
    if device is not None:
        pipe.to(device)
    steps, guidance = fill_sampling(pipe, steps, guidance)
    images: list[Image.Image] = []
    with scheduler_swapped(pipe, scheduler):
        for _, _, batch in iter_generate(pipe, prompts, steps, guidance, seed, batch_size, height, width,
                                         negative_prompt, progress):
            images.extend(batch)
    return images


def _slug(text: str, max_len: int = 48) -> str:
    keep = "".join(ch if ch.isalnum() else "_" for ch in text.lower())
    return "_".join(w for w in keep.split("_") if w)[:max_len] or "image"


def save_images(
    images: Sequence[Image.Image],
    prompts: Sequence[str],
    out_dir: str | os.PathLike,
    grid: bool = True,
    start: int = 0,
) -> list[Path]:
    """Write `NNN_<prompt>.png` per image into `out_dir` (numbered from `start`), and `grid.png`
    when `grid` and there are several. Returns the paths written (the grid last)."""
    if len(images) != len(prompts):
        raise ValueError(f"{len(images)} images for {len(prompts)} prompts")
    out_dir = Path(out_dir)
    paths = [
        save_png(im, out_dir / f"{start + i:03d}_{_slug(p)}.png") for i, (im, p) in enumerate(zip(images, prompts))
    ]
    if grid and len(images) > 1:
        cell = max(128, images[0].width)  # small toy images are enlarged for legibility
        paths.append(save_png(make_grid(images, nrow=min(4, len(images)), labels=prompts, cell_size=cell),
                               out_dir / "grid.png"))
    return paths


def read_prompts(path: str | os.PathLike) -> list[str]:
    """Prompts of a text file, one per line (blank lines skipped)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"prompts file not found: {path}")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"prompts file {path} is not UTF-8 text ({e})") from None
    return [line.strip() for line in text.splitlines() if line.strip()]


def save_png(image: Image.Image, path: str | os.PathLike) -> Path:
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG")
    return Path(path)
