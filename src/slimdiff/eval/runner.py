"""Generation and evaluation: images from prompts with fixed seeds, and the metrics on them.

    images = generate("toy", ["a small red circle on the left"], seed=0)   # toy sampler: 20 steps, cfg 5
    result = evaluate("runs/bk-small-kd", split="test", num_images=128, seed=0)
    result["alignment"], result["all_correct"], result["judge_fid"]

Seeding: image i of a call draws its noise from its own generator seeded with `seed + i`, so the
same seed gives the same images whatever the batch size. `evaluate` on the toy world uses the
test split's scenes `sample_scenes(split, N, seed)`, their captions as prompts and their
rendered images as the reference set of judge-FID.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import time
from pathlib import Path
from typing import Any, Iterator, Sequence

import torch
from diffusers import (
    DDIMScheduler,
    DDPMScheduler,
    DiffusionPipeline,
    DPMSolverMultistepScheduler,
    EulerDiscreteScheduler,
    PNDMScheduler,
)
from PIL import Image
from tqdm.auto import tqdm

from slimdiff.eval import metrics
from slimdiff.eval.images import image_files, resize, to_pil, to_tensor
from slimdiff.eval.inception import load_inception, resolve_weights
from slimdiff.eval.prompts import check_prompts
from slimdiff.eval.toy import reference_scores, toy_scores

# scheduler name -> diffusers class; built with `.from_config(pipe.scheduler.config)`
SCHEDULERS = {
    "ddim": DDIMScheduler,
    "dpm": DPMSolverMultistepScheduler,
    "pndm": PNDMScheduler,  # as Stable Diffusion configures it: PLMS only (skip_prk_steps=True)
    "euler": EulerDiscreteScheduler,
    "ddpm": DDPMScheduler,
}
# sampling defaults when steps / guidance are None: the field's protocol (METHODS.md section 7),
# and the shipped toy sampler's settings (= slimdiff.toy.evaluate's, DPM-Solver++)
FIELD_STEPS, FIELD_GUIDANCE = 25, 7.5
TOY_STEPS, TOY_GUIDANCE = 20, 5.0


# ---------------------------------------------------------------------------------------------
# models and schedulers


def resolve_pipeline(model, base: str | os.PathLike | None = None) -> DiffusionPipeline:
    """A pipeline from what a user names.

    `model`: a pipeline (returned as is); `"toy"`; a pipeline directory (`model_index.json`); a
    prune/distill output directory (its `pipeline/` subdirectory is used when present); a U-Net
    directory or a U-Net module, placed into the pipeline `base` (default: the `teacher` named in
    the directory's `recipe.json`, else "toy" for a module).
    """
    if isinstance(model, DiffusionPipeline):
        return model
    is_module = isinstance(model, torch.nn.Module)
    if not is_module and str(model) != "toy" and not Path(model).is_dir():
        raise FileNotFoundError(
            f"model {str(model)!r} is neither 'toy' nor an existing directory (a diffusers pipeline "
            f"directory, or a prune/distill output directory); hub ids are not downloaded"
        )
    from slimdiff.unet import load_pipeline  # the contract's loader: toy, pipeline dirs, slim U-Nets

    if is_module:
        return load_pipeline(str(base) if base is not None else "toy", unet=model)
    if str(model) == "toy":
        return load_pipeline("toy")
    path = Path(model)
    if (path / "pipeline" / "model_index.json").is_file():
        return load_pipeline(str(path / "pipeline"))
    if (path / "model_index.json").is_file():
        return load_pipeline(str(path))
    if (path / "config.json").is_file():  # a U-Net alone: host it in its teacher's pipeline
        from slimdiff.unet import load_unet

        if base is None and (path / "recipe.json").is_file():
            teacher = json.loads((path / "recipe.json").read_text()).get("teacher")
            base = teacher if isinstance(teacher, str) else None
        if base is None:
            raise ValueError(
                f"{path} holds a U-Net but no pipeline, and its recipe.json names no teacher: pass the "
                f"pipeline to run it in (--base toy or --base PIPELINE_DIR)"
            )
        return load_pipeline(str(base), unet=load_unet(str(path)))
    raise FileNotFoundError(
        f"{path} has no model_index.json, pipeline/ or config.json: not a diffusers pipeline, prune/distill "
        f"output or U-Net directory"
    )


def with_vae(pipe: DiffusionPipeline, vae) -> DiffusionPipeline:
    """`pipe`, or a copy of it decoding with `vae` (see `slimdiff.vae.pipeline_with_vae`)."""
    if vae is None:
        return pipe
    from slimdiff.vae import pipeline_with_vae

    return pipeline_with_vae(pipe, vae)


def make_scheduler(name: str, pipe: DiffusionPipeline):
    """A scheduler of kind `name` (see SCHEDULERS) with the pipeline's noise schedule."""
    if name not in SCHEDULERS:
        raise ValueError(f"unknown scheduler {name!r}; valid names: {', '.join(SCHEDULERS)}")
    config = dict(pipe.scheduler.config)
    overrides = {"skip_prk_steps": True} if name == "pndm" and "skip_prk_steps" not in config else {}
    if name in ("ddim", "ddpm") and "clip_sample" not in config:
        # their default clips x0 to [-1, 1]: right for pixels, wrong for latents (SD-1.5's own DDIM config
        # says clip_sample=false); a DPM-Solver config has no such key, so it would silently clip
        overrides["clip_sample"] = False
    return SCHEDULERS[name].from_config(config, **overrides)


def default_sampling(pipe: DiffusionPipeline, toy: bool | None = None) -> tuple[int, float]:
    """(steps, guidance) used when not given: what the model's recipe records (a step-distilled
    student's), else the toy sampler's on the toy world, else the field's."""
    from slimdiff.sample.defaults import recorded_sampling

    recorded = recorded_sampling(pipe)
    if recorded is not None:
        return recorded
    toy = is_toy_pipeline(pipe) if toy is None else toy
    return (TOY_STEPS, TOY_GUIDANCE) if toy else (FIELD_STEPS, FIELD_GUIDANCE)


def image_generators(seed: int, n: int, start: int = 0) -> list[torch.Generator]:
    """CPU generators for images start..start+n-1 of a call: image i is seeded with `seed + i`."""
    return [torch.Generator("cpu").manual_seed(seed + i) for i in range(start, start + n)]


# ---------------------------------------------------------------------------------------------
# generation


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


@contextlib.contextmanager
def scheduler_swapped(pipe: DiffusionPipeline, name: str | None):
    """Within the block the pipeline samples with scheduler `name` (None: its own); restored after."""
    own = pipe.scheduler
    if name is not None:
        pipe.scheduler = make_scheduler(name, pipe)
    try:
        yield pipe
    finally:
        pipe.scheduler = own


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
    `height`/`width`: default the pipeline's (U-Net sample_size x VAE scale factor).
    `steps`/`guidance` None: `default_sampling` (20 steps, 5.0 on the toy world; the field's
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
    default_steps, default_guidance = default_sampling(pipe)
    steps = default_steps if steps is None else steps
    guidance = default_guidance if guidance is None else guidance
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
    from slimdiff.report.grid import make_grid

    if len(images) != len(prompts):
        raise ValueError(f"{len(images)} images for {len(prompts)} prompts")
    out_dir = Path(out_dir)
    paths = [
        _save_png(im, out_dir / f"{start + i:03d}_{_slug(p)}.png") for i, (im, p) in enumerate(zip(images, prompts))
    ]
    if grid and len(images) > 1:
        cell = max(128, images[0].width)  # small toy images are enlarged for legibility
        paths.append(_save_png(make_grid(images, nrow=min(4, len(images)), labels=prompts, cell_size=cell),
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


# ---------------------------------------------------------------------------------------------
# evaluation


def is_toy_pipeline(pipe: DiffusionPipeline) -> bool:
    """True when the pipeline speaks the toy world's language (its tokenizer is the toy's)."""
    from slimdiff.toy.tokenizer import build_tokenizer

    tok = getattr(pipe, "tokenizer", None)
    return tok is not None and tok.get_vocab() == build_tokenizer().get_vocab()


def evaluate(
    model,
    split: str = "test",
    num_images: int = 256,
    steps: int | None = None,
    guidance: float | None = None,
    seed: int = 0,
    batch_size: int = 16,
    scheduler: str | None = None,
    toy: bool | None = None,
    prompts: Sequence[str] | None = None,
    ref_images: str | os.PathLike | None = None,
    inception_weights: str | os.PathLike | None = None,
    clip_dir: str | os.PathLike | None = None,
    grid: str | os.PathLike | None = None,
    grid_rows: int = 16,
    images_dir: str | os.PathLike | None = None,
    fid_dims: int = 2048,
    reference: bool = False,
    progress: bool = True,
    base: str | os.PathLike | None = None,
    device: str | torch.device | None = None,
    world=None,
    judge=None,
    return_images: bool = False,
    teacher_images=None,
    vae=None,
) -> dict[str, Any] | tuple[dict[str, Any], list[Image.Image]]:
    """Generate `num_images` images with fixed seeds and score them; returns a JSON-ready dict.

    `steps`/`guidance` None: `default_sampling` (the toy sampler's 20 steps and 5.0 on the toy
    world, the field's 25 and 7.5 otherwise).
    Toy world (`toy=None`: detected from the pipeline's tokenizer): prompts are the captions of
    `sample_scenes(split, num_images, seed)`; keys `alignment`, `all_correct`, the judge's
    per-attribute scores, `novel` / `seen_pairs` (scenes with / without a held-out colour-shape
    pair), `judge_fid` against the rendered images of the same scenes. `reference=True` adds the
    same figures for rendered images (the ceiling; its judge-FID: the same captions rendered
    with the objects placed anew, `world.same_caption`).
    Any model: `fid` (needs `ref_images`, a folder, and `inception_weights`; `fid_dims`: the
    Inception layer, 2048 standard, 64/192/768 as pytorch-fid's --dims), `is` and `is_std`
    (needs `inception_weights`), `clip_score` (needs `clip_dir`); these are accumulated batch by
    batch, so a 30K-image run does not hold its images. Non-toy models need `prompts`.
    `grid`: a PNG of the first `grid_rows` prompts. `images_dir`: also write every image as PNG.
    `device`: where the pipeline and the metric networks run (default: the pipeline's).
    `world`, `judge`: replacements for `slimdiff.toy.world` and `load_judge()` (tests).
    `return_images`: also return the generated images, `(result, images)` (e.g. for a report grid).
    `teacher_images`: the teacher's images for the same prompts and seeds (toy: adds the fidelity
    metrics `psnr_to_teacher`, `feature_cos_to_teacher`; `slimdiff.eval.compare` passes them).
    Toy metrics carry 95% bootstrap intervals in `result["ci"]` (see `slimdiff.eval.toy`).
    `vae`: decode with this VAE instead of the pipeline's (a module or a `load_vae` argument).
    Everything but `timing` is a function of the arguments: the same seed gives the same numbers.
    """
    # 1. check every input before the long generation: weights, pipeline, judge, prompts
    if num_images < 2:
        raise ValueError(f"num_images must be >= 2 (metrics carry bootstrap intervals), got {num_images}")
    if ref_images is not None and inception_weights is None:
        raise ValueError("ref_images was given but not inception_weights: FID needs both")
    if inception_weights is not None:
        resolve_weights(inception_weights)
        if num_images < metrics.IS_SPLITS:  # no silent change of the IS protocol's 10 splits
            raise ValueError(f"the Inception Score needs num_images >= {metrics.IS_SPLITS} (its splits), "
                             f"got {num_images}")
    if ref_images is not None:
        image_files(ref_images)
    if clip_dir is not None:
        metrics.resolve_clip_dir(clip_dir)
    pipe = with_vae(resolve_pipeline(model, base=base), vae)
    if device is not None:
        pipe.to(device)
    toy = is_toy_pipeline(pipe) if toy is None else toy
    default_steps, default_guidance = default_sampling(pipe, toy)
    steps = default_steps if steps is None else steps
    guidance = default_guidance if guidance is None else guidance
    scenes = None
    if toy:
        if prompts is not None:
            raise ValueError(
                "the toy world's prompts are its scenes' captions: pass toy=False to use your own prompts"
            )
        if world is None:
            from slimdiff.toy import world
        judge = judge if judge is not None else _load_judge()
        if split not in world.SPLITS:
            raise ValueError(f"split {split!r} is not one of {list(world.SPLITS)}")
        scenes = world.sample_scenes(split, num_images, seed)
        prompts = [world.caption(s) for s in scenes]
    elif prompts is None:
        raise ValueError(
            "this model is not the toy world's: pass prompts (--prompts FILE, one per line) to evaluate it"
        )
    else:
        prompts = list(prompts)
        if len(prompts) < num_images:
            raise ValueError(f"num_images={num_images} but only {len(prompts)} prompts were given")
        prompts = prompts[:num_images]

    # 2. real-model scorers (the FID reference statistics are computed first)
    metric_device = pipe.device
    scorers = []
    if inception_weights is not None:
        net = load_inception(inception_weights, device=metric_device)
        if ref_images is not None:
            scorers.append(metrics.FIDScorer(net, ref_images, dims=fid_dims))
        scorers.append(metrics.ISScorer(net, seed=seed))
    if clip_dir is not None:
        scorers.append(metrics.CLIPScorer(clip_dir, device=metric_device))

    # 3. generate batch by batch (image i seeded with seed + i), feeding the scorers
    keep_all = toy or return_images
    kept: list[Image.Image] = []
    t0 = time.perf_counter()
    with scheduler_swapped(pipe, scheduler):
        for start, batch_prompts, batch in iter_generate(pipe, prompts, steps, guidance, seed, batch_size,
                                                         progress=progress):
            x = to_tensor(batch)  # (B, 3, H, W) in [0, 1]
            for scorer in scorers:
                scorer.update(x, batch_prompts)
            if images_dir is not None:
                save_images(batch, batch_prompts, images_dir, grid=False, start=start)
            kept.extend(batch if keep_all else batch[: max(0, grid_rows - len(kept))])
            resolution = list(x.shape[-2:])
    gen_seconds = time.perf_counter() - t0
    result: dict[str, Any] = {}

    # 4. toy world: the judge's figures, KID / PCA-FID against the rendered scenes, fidelity
    if toy:
        rendered = to_tensor([world.render(s) for s in scenes])
        result.update(toy_scores(kept, scenes, judge=judge, world=world, rendered=rendered,
                                 teacher_images=teacher_images, seed=seed))
        if reference:
            # the ceiling: rendered images of the same captions, objects placed anew (what a
            # generator that follows every caption perfectly may draw) against the reference
            result["reference"] = reference_scores(scenes, judge=judge, world=world, seed=seed)
    for scorer in scorers:
        result.update(scorer.result())
    if grid is not None:
        _save_png(_grid(kept, prompts, grid_rows, to_pil(rendered) if toy else None), grid)

    # 5. settings, so the JSON says how its numbers were made
    result["settings"] = {
        "model": str(model) if isinstance(model, (str, os.PathLike)) else type(model).__name__,
        "vae": None if vae is None else str(vae) if isinstance(vae, (str, os.PathLike)) else type(vae).__name__,
        "world": "toy" if toy else "prompts",
        "split": split if toy else None,
        "num_images": num_images,
        "steps": steps,
        "guidance": guidance,
        "seed": seed,
        "scheduler": scheduler or type(pipe.scheduler).__name__,
        "batch_size": batch_size,
        "resolution": resolution,
        "judge_resolution": list(rendered.shape[-2:]) if toy else None,
    }
    result["timing"] = {"generate_s": gen_seconds, "s_per_image": gen_seconds / num_images}
    if toy:
        result["prompts"] = prompts
    return (result, kept) if return_images else result


def _grid(images, prompts, rows: int, rendered=None):
    """Toy: one row per prompt, [rendered | generated]; otherwise the generations, 4 per row."""
    from slimdiff.report.grid import make_grid

    n = min(rows, len(images))
    if rendered is not None:
        cells = [im for pair in zip(rendered[:n], images[:n]) for im in pair]
        return make_grid(cells, nrow=2, row_labels=prompts[:n], col_labels=["rendered", "generated"], cell_size=96)
    return make_grid(images[:n], nrow=min(4, n), labels=prompts[:n], cell_size=max(192, images[0].width))


@functools.lru_cache(maxsize=1)
def _load_judge():
    """The shipped judge, loaded once per process (searches call evaluate many times)."""
    from slimdiff.toy.judge import load_judge

    return load_judge()


METRIC_KEYS = ("alignment_score", "all_correct", "alignment", "kid", "judge_fid", "psnr_to_teacher",
               "feature_cos_to_teacher", "fid", "is", "clip_score")


def summary_rows(result: dict[str, Any]) -> list[dict[str, Any]]:
    """The headline metrics of an `evaluate` result as table rows (metric, value, 95% CI[, rendered])."""
    ref = result.get("reference", {})
    ci = result.get("ci", {})
    rows = []
    for key in METRIC_KEYS:
        if key in result:
            lo_hi = ci.get(key)
            row = {"metric": key, "value": result[key],
                   "95% CI": f"[{lo_hi[0]:.4g}, {lo_hi[1]:.4g}]" if lo_hi else None}
            if ref:
                row["rendered (ceiling)"] = ref.get(key)
            rows.append(row)
    return rows


def _plain(scores: dict) -> dict:
    """Judge output -> JSON-ready dict (tensors and numpy scalars to floats)."""
    from slimdiff.io import to_jsonable

    def plain(v):
        if isinstance(v, torch.Tensor):
            return v.item() if v.ndim == 0 else v.tolist()
        return {k: plain(x) for k, x in v.items()} if isinstance(v, dict) else v

    out = to_jsonable(plain(scores))
    for key in ("alignment", "all_correct"):
        if key not in out:
            raise KeyError(f"the judge's score() returned no {key!r} (keys: {sorted(out)})")
    return out


def _save_png(image: Image.Image, path: str | os.PathLike) -> Path:
    from slimdiff.io import atomic_path

    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG")
    return Path(path)
