"""Several models on the same prompts and seeds in one run: one table with 95% intervals.

    result = compare(["toy", "runs/bk-small-kd", "runs/bk-small"], num_images=256)
    print(result["markdown"])

Every model generates image i of prompt i from the same initial noise (seed + i), so the
comparison is paired: the bootstrap draws are shared by all models, and a model's difference
from the baseline row (the first model, or `baseline=`) gets its own 95% interval. A cell is
marked `*` when that interval excludes 0 (the two models differ beyond their noise). With
`teacher=` (default: the baseline), every row also carries the fidelity metrics: PSNR and
judge-feature cosine of its images against the teacher's for the same prompt and noise.
Toy world only: the metrics are the judge's (`slimdiff.eval.toy`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from slimdiff.eval import stats
from slimdiff.report.images import to_tensor
from slimdiff.eval.toy import features, judge_results, pca_basis, reference_scores, shared_judge, summarize
from slimdiff.io import atomic_path, write_json
from slimdiff.report.tables import format_ci, format_value, markdown_table
from slimdiff.sample.generate import iter_generate
from slimdiff.sample.load import fill_sampling, is_toy_pipeline, resolve_pipeline, scheduler_swapped, with_vae
from slimdiff.toy import world as toy_world

# table columns: metric key -> header; higher is better except kid / judge_fid
COLUMNS = {
    "alignment_score": "alignment score",
    "all_correct": "all correct",
    "alignment": "alignment",
    "novel.all_correct": "all correct, held-out pairs",
    "kid": "KID",
    "judge_fid": "judge-FID (PCA-16)",
    "psnr_to_teacher": "PSNR to teacher (dB)",
    "feature_cos_to_teacher": "feature cos to teacher",
}


def _get(result: dict, key: str):
    if "." in key:
        group, name = key.split(".", 1)
        return result.get(group, {}).get(name)
    return result.get(key)


def compare(
    models: Sequence,
    names: Sequence[str] | None = None,
    split: str = "test",
    num_images: int = 256,
    steps: int | Sequence[int | None] | None = None,
    guidance: float | Sequence[float | None] | None = None,
    seed: int = 0,
    batch_size: int = 16,
    scheduler: str | None = None,
    baseline: int = 0,
    teacher: int | None = 0,
    reference: bool = True,
    progress: bool = True,
    judge=None,
    world=None,
    extra: dict[str, dict[str, Any]] | None = None,
    keep_images: int = 0,
    contrasts: Sequence[tuple[str, str]] = (),
    vae=None,
) -> dict[str, Any]:
    """Generate with every model on the same scenes and seeds; score, with paired intervals. A
    numbered-step orchestration (1 check the inputs, 2 generate, 3 score, then the table).

    `models`: anything `resolve_pipeline` takes (names default to their strings). `baseline`:
    the row differences are taken against; `teacher`: the row whose images define fidelity
    (None: no fidelity). `steps`/`guidance` None: each model's own defaults (a step-distilled
student's recipe, else the world's); a sequence gives one value (or None) per model. `reference`: add
    the rendered ceiling row. `extra`: more columns per model name (e.g. params, latency).
    `keep_images`: also return the first k images of each model as `images` {name: [PIL]} (not JSON).
    `judge`: the judge, or a shipped judge's version (`slimdiff.toy.JUDGES`; None: the default), recorded
    in `settings["judge"]`. `contrasts`: pairs of model names (a, b) whose paired difference a - b gets an interval too.
    `vae`: decode with this VAE (a `slimdiff.vae.load_vae` argument, e.g. a prune-vae / distill-vae
    output), one for all models or a sequence with one per model (None: the model's own).
    Returns {"rows": [...], "markdown": str, "settings": {...}}; each row holds the metrics,
    `ci` (intervals), `diff_ci` (interval of the difference from the baseline) and `marks`.
    """
    # 1. check the inputs before any generation
    models = list(models)
    if not models:
        raise ValueError("compare needs at least one model")
    names = [str(m) if isinstance(m, (str, os.PathLike)) else type(m).__name__ for m in models] \
        if names is None else list(names)
    if len(names) != len(models):
        raise ValueError(f"{len(names)} names for {len(models)} models")
    if len(set(names)) != len(names):
        raise ValueError(f"model names must be distinct, got {names}")
    if num_images < 2:
        raise ValueError(f"num_images must be >= 2 (intervals are bootstraps), got {num_images}")
    steps, guidance = (_per_model(v, label, len(models)) for v, label in ((steps, "steps"), (guidance, "guidance")))
    vaes = _per_model(vae, "vae", len(models), scalar=(str, os.PathLike, torch.nn.Module))
    for a, b in contrasts:
        if a not in names or b not in names:
            raise ValueError(f"contrast {(a, b)} names a model not in {names}")
    for label, index in (("baseline", baseline), ("teacher", teacher)):
        if index is not None and not 0 <= index < len(models):
            raise ValueError(f"{label} index {index} is not a model index in [0, {len(models) - 1}]")
    world = world if world is not None else toy_world
    if split not in world.SPLITS:
        raise ValueError(f"split {split!r} is not one of {list(world.SPLITS)}")
    pipes = [with_vae(resolve_pipeline(m), v) for m, v in zip(models, vaes)]
    for name, pipe in zip(names, pipes):  # evaluate's test of the world (`is_toy_pipeline`), for every model
        if not is_toy_pipeline(pipe):
            raise ValueError(f"{name} is not a model of the toy world (its tokenizer is not the toy's): compare "
                             f"scores with the toy world's judge; score it with `slimdiff evaluate {name} --prompts "
                             f"FILE` instead")
    judge = shared_judge(judge) if judge is None or isinstance(judge, str) else judge
    scenes = world.sample_scenes(split, num_images, seed)
    prompts = [world.caption(s) for s in scenes]
    rendered = to_tensor([world.render(s) for s in scenes])

    # 2. generate: every model, the same prompts and per-image seeds
    per_model, settings, kept = [], [], {}
    for name, pipe, n_steps, scale, vae_of in zip(names, pipes, steps, guidance, vaes):
        s, g = fill_sampling(pipe, n_steps, scale)
        images = []
        with scheduler_swapped(pipe, scheduler):
            for _, _, batch in iter_generate(pipe, prompts, s, g, seed, batch_size, progress=progress):
                images.extend(batch)
        if keep_images:
            kept[name] = images[:keep_images]
        x = to_tensor(images)
        if tuple(x.shape[-2:]) != tuple(rendered.shape[-2:]):
            raise ValueError(f"{name} generates {tuple(x.shape[-2:])} images but the toy world's are "
                             f"{tuple(rendered.shape[-2:])}")
        per = judge_results(judge, x, scenes)
        per["images"] = x
        per_model.append(per)
        settings.append({"model": name, "steps": s, "guidance": g,
                         "scheduler": scheduler or type(pipe.scheduler).__name__,
                         **({"vae": str(vae_of)} if isinstance(vae_of, (str, os.PathLike)) else {})})

    # 3. metrics with shared draws; differences from the baseline
    idx = stats.draws(num_images, seed=seed)
    novel = np.array([world.is_novel(s) for s in scenes])
    ref_features = features(judge, rendered)
    basis = pca_basis(judge, world) if num_images >= 10 * stats.PCA_DIMS else None
    teach = per_model[teacher] if teacher is not None else None
    results = [summarize(per, novel, idx, ref_features, basis, teach if i != teacher else None, keep_draws=True)
               for i, per in enumerate(per_model)]
    base = results[baseline]["_draws"]
    all_draws = {name: res["_draws"] for name, res in zip(names, results)}
    rows = []
    for name, res, st in zip(names, results, settings):
        draws_ = res.pop("_draws")
        res["diff_ci"] = {k: stats.interval(draws_[k] - base[k]) for k in draws_ if k in base and res is not results[baseline]}
        res["marks"] = {k: "*" for k, (lo, hi) in res["diff_ci"].items() if lo > 0 or hi < 0}
        rows.append({"model": name, **st, **res, **(extra or {}).get(name, {})})
    results[baseline].pop("_draws", None)
    if reference:
        ref = reference_scores(scenes, judge=judge, world=world, seed=seed)
        rows.append({"model": "rendered (ceiling)", **ref, "diff_ci": {}, "marks": {}})
    out = {"rows": rows, "contrasts": [_contrast(a, b, all_draws, results[names.index(a)], results[names.index(b)])
                                        for a, b in contrasts], "settings": {"split": split, "num_images": num_images, "seed": seed,
                                       "baseline": names[baseline],
                                       "teacher": names[teacher] if teacher is not None else None,
                                       "bootstrap_draws": len(idx), "confidence": stats.CONFIDENCE,
                                       "judge": getattr(judge, "version", None) or type(judge).__name__}}
    out["markdown_contrasts"] = contrasts_markdown(out)
    out["markdown"] = markdown(out, extra_columns=list(dict.fromkeys(k for v in (extra or {}).values() for k in v)))
    out["prompts"] = prompts
    if keep_images:
        out["images"] = kept
    return out


def _per_model(value, label: str, n: int, scalar: tuple = (int, float)) -> list:
    """One value per model: a scalar (or None) repeated, or a sequence of length n."""
    if value is None or isinstance(value, scalar):
        return [value] * n
    value = list(value)
    if len(value) != n:
        shown = value if all(v is None or isinstance(v, (int, float, str)) for v in value) else f"<{len(value)} items>"
        raise ValueError(f"{label}={shown} gives {len(value)} values for {n} models: one per model, or one for all")
    return value


def _contrast(a: str, b: str, draws: dict, res_a: dict, res_b: dict) -> dict:
    """a - b for every metric both have: the difference and its paired 95% interval."""
    keys = [k for k in draws[a] if k in draws[b]]
    diff = {k: (_get(res_a, k) - _get(res_b, k)) for k in keys}
    ci = {k: stats.interval(draws[a][k] - draws[b][k]) for k in keys}
    return {"a": a, "b": b, "diff": diff, "ci": ci,
            "significant": sorted(k for k, (lo, hi) in ci.items() if lo > 0 or hi < 0)}


def contrasts_markdown(result: dict) -> str:
    """The contrasts as a table: metric differences a - b [95% paired CI], `*` where it excludes 0."""
    rows = []
    for c in result.get("contrasts", []):
        row = {"a - b": f"{c['a']} - {c['b']}"}
        for k, header in COLUMNS.items():
            if k in c["diff"]:
                row[header] = format_ci(c["diff"][k], c["ci"][k], "*" if k in c["significant"] else "")
        rows.append(row)
    return markdown_table(rows) if rows else ""


def markdown(result: dict, extra_columns: Sequence[str] = ()) -> str:
    """The comparison as a markdown table: value [95% CI], `*` where it differs from the baseline."""
    keys = [k for k in COLUMNS if any(_get(r, k) is not None for r in result["rows"])]
    table = []
    for r in result["rows"]:
        row = {"model": r["model"]}
        for k in keys:
            v = _get(r, k)
            row[COLUMNS[k]] = format_ci(v, r.get("ci", {}).get(k), r.get("marks", {}).get(k, "")) if v is not None else None
        for k in extra_columns:
            row[k] = format_value(r.get(k))
        table.append(row)
    s = result["settings"]
    note = (f"\n\nN = {s['num_images']} {s['split']} prompts, seed {s['seed']}, the same initial noise for every "
            f"model; [95% bootstrap CI, {s['bootstrap_draws']} paired draws]; `*`: differs from "
            f"{s['baseline']} (the 95% CI of the paired difference excludes 0).")
    return markdown_table(table) + note


def write(result: dict, json_path: str | os.PathLike | None = None, md_path: str | os.PathLike | None = None) -> None:
    """Write the comparison's JSON and / or markdown table (atomically)."""
    if json_path is not None:
        write_json(json_path, {k: v for k, v in result.items() if k != "images"})
    if md_path is not None:
        with atomic_path(Path(md_path)) as tmp:
            Path(tmp).write_text(result["markdown"] + "\n", encoding="utf-8")
