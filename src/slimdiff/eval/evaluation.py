"""Evaluation: generate with fixed seeds and score the images.

    result = evaluate("runs/bk-small-kd", split="test", num_images=128, seed=0)
    result["alignment"], result["all_correct"], result["judge_fid"], result["ci"]["all_correct"]

Loading, sampling defaults and generation are `slimdiff.sample`'s; `evaluate` on the toy world uses
the test split's scenes `sample_scenes(split, N, seed)`, their captions as prompts and their
rendered images as the reference set of judge-FID.
"""

from __future__ import annotations

import dataclasses
import os
import time
from typing import Any, Sequence

import torch
from diffusers import DiffusionPipeline
from PIL import Image

from slimdiff.eval import metrics
from slimdiff.eval.config import EvalConfig
from slimdiff.eval.inception import load_inception
from slimdiff.eval.toy import reference_scores, shared_judge, toy_scores
from slimdiff.report.grid import make_grid
from slimdiff.report.images import to_pil, to_tensor
from slimdiff.sample.generate import iter_generate, save_images, save_png
from slimdiff.sample.load import fill_sampling, is_toy_pipeline, resolve_pipeline, scheduler_swapped, with_vae
from slimdiff.toy import world as toy_world

def evaluate(
    model,
    config: EvalConfig | None = None,
    *,
    base: str | os.PathLike | None = None,
    world=None,
    judge=None,
    return_images: bool = False,
    teacher_images=None,
    vae=None,
    **settings,
) -> dict[str, Any] | tuple[dict[str, Any], list[Image.Image]]:
    """Generate `num_images` images with fixed seeds and score them; returns a JSON-ready dict. A
    numbered-step orchestration: 1 check every input, 2 the scorers, 3 generate, 4 toy figures, 5 settings.

    `config`: the validated `EvalConfig` (`slimdiff.eval.config`), or its fields as keyword arguments
    (`evaluate(model, num_images=128, seed=0)`); both at once: the keywords replace the config's fields.

    `steps`/`guidance` None: `slimdiff.sample.fill_sampling` (the toy sampler's 20 steps and 5.0 on the toy
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
    `judge_version`: which shipped judge scores the toy world (`slimdiff.toy.JUDGES`; recorded in
    `settings["judge"]`); `world`, `judge`: replacements for `slimdiff.toy.world` and the judge (tests).
    `return_images`: also return the generated images, `(result, images)` (e.g. for a report grid).
    `teacher_images`: the teacher's images for the same prompts and seeds (toy: adds the fidelity
    metrics `psnr_to_teacher`, `feature_cos_to_teacher`; `slimdiff.eval.compare` passes them).
    Toy metrics carry 95% bootstrap intervals in `result["ci"]` (see `slimdiff.eval.toy`).
    `vae`: decode with this VAE instead of the pipeline's (a module or a `load_vae` argument).
    Everything but `timing` is a function of the arguments: the same seed gives the same numbers.
    """
    # 1. check every input before the long generation: settings (EvalConfig), pipeline, judge, prompts
    config = dataclasses.replace(config, **settings) if config is not None else EvalConfig(**settings)
    c = config
    split, num_images, steps, guidance, seed, batch_size = c.split, c.num_images, c.steps, c.guidance, c.seed, c.batch_size
    scheduler, toy, prompts, reference, progress, device = c.scheduler, c.toy, c.prompts, c.reference, c.progress, c.device
    ref_images, inception_weights, clip_dir, fid_dims = c.ref_images, c.inception_weights, c.clip_dir, c.fid_dims
    grid, grid_rows, images_dir = c.grid, c.grid_rows, c.images_dir
    pipe = with_vae(resolve_pipeline(model, base=base), vae)
    if device is not None:
        pipe.to(device)
    toy = is_toy_pipeline(pipe) if toy is None else toy
    steps, guidance = fill_sampling(pipe, steps, guidance, toy)
    scenes = None
    if toy:
        if prompts is not None:
            raise ValueError(
                "the toy world's prompts are its scenes' captions: pass toy=False to use your own prompts"
            )
        world = world if world is not None else toy_world
        judge = judge if judge is not None else shared_judge(c.judge_version)
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
            scorers.append(metrics.FIDScorer(net, ref_images, dims=fid_dims, seed=seed))
        scorers.append(metrics.ISScorer(net, seed=seed))
    if clip_dir is not None:
        scorers.append(metrics.CLIPScorer(clip_dir, device=metric_device, seed=seed))

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
        scored = scorer.result()  # {metric: value, ..., "ci": {metric: [lo, hi]}}
        result.setdefault("ci", {}).update(scored.pop("ci", {}))
        result.update(scored)
    if grid is not None:
        save_png(_grid(kept, prompts, grid_rows, to_pil(rendered) if toy else None), grid)

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
        "judge": (getattr(judge, "version", None) or type(judge).__name__) if toy else None,  # which judge scored
    }
    result["timing"] = {"generate_s": gen_seconds, "s_per_image": gen_seconds / num_images}
    if toy:
        result["prompts"] = prompts
    return (result, kept) if return_images else result


def _grid(images, prompts, rows: int, rendered=None):
    """Toy: one row per prompt, [rendered | generated]; otherwise the generations, 4 per row."""
    n = min(rows, len(images))
    if rendered is not None:
        cells = [im for pair in zip(rendered[:n], images[:n]) for im in pair]
        return make_grid(cells, nrow=2, row_labels=prompts[:n], col_labels=["rendered", "generated"], cell_size=96)
    return make_grid(images[:n], nrow=min(4, n), labels=prompts[:n], cell_size=max(192, images[0].width))


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


