"""The toy world's metrics of generated images, each with a 95% bootstrap interval.

    out = toy_scores(images, scenes)                       # one image per scene, in order
    out["all_correct"], out["ci"]["all_correct"]           # value, [lo, hi]

Keys (values; their intervals under the same name in `out["ci"]`):
- `alignment`: share of the captions' attributes the judge confirms (pooled over images);
- `alignment_score`: the judge's mean probability of the caption's attributes (continuous;
  the toy analogue of CLIP score; it does not saturate when every argmax is right);
- `all_correct`: share of images with every attribute right (extra, missing and blob objects
  count as wrong: the judge's count head has '0' and '4+', its shape head 'blob');
- `per_attribute`: accuracy per family (count, layout, colour, shape, size);
- `novel` / `seen_pairs`: the same for scenes with / without a held-out colour-shape pair;
- `kid`: KID of the standardised judge features against the rendered scenes (unbiased; 0 =
  indistinguishable from the renderer; may be slightly negative by chance);
- `judge_fid`: Fréchet distance on a fixed whitened 16-dim PCA of judge features (only N >= 160);
- with `teacher_images` (the same prompts and seeds): `psnr_to_teacher` (dB) and
  `feature_cos_to_teacher` (judge features), how closely a student copies its teacher.
"""

from __future__ import annotations

import functools
from typing import Any, Sequence

import numpy as np
import torch

from slimdiff.eval import stats
from slimdiff.report.images import to_tensor
from slimdiff.toy import DEFAULT_JUDGE, JUDGES
from slimdiff.toy import world as toy_world
from slimdiff.toy.judge import load_judge
from slimdiff.toy.judge import summarize as judge_summary

FAMILY_KEYS = ("count", "layout", "colour", "shape", "size")


def shared_judge(version: str | None = None):
    """The shipped judge `version` (a name in `slimdiff.toy.JUDGES`; None: `DEFAULT_JUDGE`), loaded
    once per process (searches evaluate many times); its features and PCA basis travel with it."""
    return _shared_judge(DEFAULT_JUDGE if version is None else version)


@functools.lru_cache(maxsize=len(JUDGES))
def _shared_judge(version: str):
    return load_judge(version=version)


def _judge(judge):
    return judge if judge is not None else shared_judge()


def pca_basis(judge, world=None, n: int = 4096, seed: int = 0) -> dict[str, torch.Tensor]:
    """The judge's fixed feature standardisation and 16-dim whitened PCA (`stats.fit_pca`),
    fitted on `n` rendered train-split scenes; cached on the judge (`judge.pca`) and shipped
    beside the judge's weights (`pca.safetensors`)."""
    if getattr(judge, "pca", None) is not None:
        return judge.pca
    world = world if world is not None else toy_world
    with torch.no_grad():
        rendered = world.to_tensor(world.render_batch(world.sample_scenes("train", n, seed=seed + 31337)))
        feats = torch.cat([judge.features(rendered[i : i + 512]) for i in range(0, n, 512)])
    basis = stats.fit_pca(feats, min(stats.PCA_DIMS, feats.shape[1]))
    try:
        judge.pca = basis
    except AttributeError:  # a stand-in judge without attributes (tests)
        pass
    return basis


def features(judge, images: torch.Tensor) -> torch.Tensor:
    """The judge's features (N, D) of images, standardised with its fixed basis (`pca_basis`)."""
    with torch.no_grad():
        raw = torch.cat([judge.features(images[i : i + 256]) for i in range(0, len(images), 256)])
    return stats.standardize(raw, pca_basis(judge))


def judge_results(judge, images: torch.Tensor, scenes: Sequence) -> dict[str, np.ndarray]:
    """The judge's per-image arrays (`Judge.per_image`) plus its standardised features (`features`)."""
    per = dict(judge.per_image(images, scenes))
    per["features"] = features(judge, images)
    return per


def summarize(per: dict[str, np.ndarray], novel: np.ndarray, idx: np.ndarray,
              ref_features: torch.Tensor | None = None, basis=None, teacher: dict | None = None,
              keep_draws: bool = False) -> dict[str, Any]:
    """Values and intervals of every metric from per-image arrays (see the module docstring).

    `idx`: bootstrap draws (draws, N) shared by every metric and by every model compared.
    `teacher`: the teacher's per-image arrays on the same prompts and seeds (for fidelity).
    `keep_draws`: also return the per-draw values (`_draws`), for paired differences.
    """

    n = len(per["hits"])
    out: dict[str, Any] = {}
    ci: dict[str, list[float]] = {}
    boots: dict[str, np.ndarray] = {}  # per-draw values of the headline metrics (paired comparisons)

    def add(name: str, stat, subset: np.ndarray | None = None, where: dict | None = None):
        rows = np.arange(n) if subset is None else subset
        if len(rows) < 2:
            return
        value = stat(rows)
        boot = [stat(rows[i]) for i in (idx if subset is None else _sub_draws(idx, rows, n))]
        (where if where is not None else out)[name] = value
        key = name if where is None else f"{where['_prefix']}.{name}"
        ci[key], boots[key] = stats.interval(np.array(boot)), np.array(boot)

    # 1. judge figures, pooled over images: alignment, alignment_score, all_correct, per family
    overall = judge_summary(per)
    for key in ("alignment", "alignment_score", "all_correct"):
        add(key, lambda r, k=key: judge_summary(per, r)[k])
    out["per_attribute"] = {"_prefix": "per_attribute"}
    for fam in overall["per_attribute"]:
        add(fam, lambda r, f=fam: judge_summary(per, r)["per_attribute"].get(f, np.nan), where=out["per_attribute"])
    # 2. held-out colour-shape pairs vs the rest (compositional generalisation)
    novel_rows, seen_rows = np.flatnonzero(novel), np.flatnonzero(~novel)
    for name, rows in (("novel", novel_rows), ("seen_pairs", seen_rows)):
        if len(rows) >= 2 and len(rows) < n:
            out[name] = {"_prefix": name, "n": int(len(rows))}
            for key in ("alignment", "alignment_score", "all_correct"):
                add(key, lambda r, k=key: judge_summary(per, r)[k], subset=rows, where=out[name])
    # 3. distribution: KID and PCA-FID of judge features against the rendered scenes
    if ref_features is not None:
        k = stats.kid(per["features"], ref_features, idx=idx)
        out["kid"], ci["kid"], boots["kid"] = k["value"], k["ci"], k["boot"]
        if basis is not None and n >= 10 * basis["components"].shape[1]:
            f = stats.pca_fid(per["features"], ref_features, basis, idx=idx)
            out["judge_fid"], ci["judge_fid"] = f["value"], f["ci"]
    # 4. fidelity to the teacher: the same prompt and noise, how close is the image
    if teacher is not None:
        psnr = stats.psnr_per_image(per["images"], teacher["images"])
        cos = stats.cosine_per_image(per["features"], teacher["features"])
        for name, arr in (("psnr_to_teacher", psnr), ("feature_cos_to_teacher", cos)):
            m = stats.mean_ci(arr, idx=idx)
            out[name], ci[name], boots[name] = m["value"], m["ci"], m["boot"]
    for group in ("per_attribute", "novel", "seen_pairs"):
        if group in out:
            out[group].pop("_prefix", None)
    out["ci"] = ci
    out["n"] = n
    if keep_draws:
        out["_draws"] = boots
    return out


def _sub_draws(idx: np.ndarray, rows: np.ndarray, n: int) -> list[np.ndarray]:
    """Restrict full draws to a subset of images: per draw, the positions into `rows` drawn."""
    where = -np.ones(n, dtype=np.int64)
    where[rows] = np.arange(len(rows))
    out = []
    for draw in idx:
        pos = where[draw]
        pos = pos[pos >= 0]
        out.append(pos if len(pos) >= 1 else np.zeros(1, dtype=np.int64))
    return out


def toy_scores(images, scenes, judge=None, world=None, rendered=None, fid: bool = True,
               teacher_images=None, seed: int = 0) -> dict[str, Any]:
    """The toy world's metrics of `images` generated from `scenes`, with intervals (module docstring).

    `rendered`: the reference images of the scenes (default: rendered by `world`).
    `fid`: also the distribution metrics (`kid`, `judge_fid`). `teacher_images`: the teacher's
    images for the same prompts and seeds, for the fidelity metrics.
    """
    world = world if world is not None else toy_world
    judge = _judge(judge)
    gen = to_tensor(images)
    if gen.shape[0] != len(scenes):
        raise ValueError(f"{gen.shape[0]} images for {len(scenes)} scenes")
    if len(scenes) < 2:
        raise ValueError(f"the toy metrics need at least 2 images (their intervals are bootstraps), got {len(scenes)}")
    if rendered is None:
        rendered = to_tensor([world.render(s) for s in scenes])
    if tuple(gen.shape[-2:]) != tuple(rendered.shape[-2:]):
        raise ValueError(f"images are {tuple(gen.shape[-2:])} but the toy world's are {tuple(rendered.shape[-2:])}: "
                         f"generate at the world's resolution")
    per = judge_results(judge, gen, scenes)
    per["images"] = gen
    teacher = None
    if teacher_images is not None:
        t = to_tensor(teacher_images)
        teacher = {"images": t, "features": features(judge, t)}
    novel = np.array([bool(getattr(world, "is_novel", lambda s: False)(s)) for s in scenes])
    ref_features = features(judge, rendered) if fid else None
    basis = pca_basis(judge, world)
    basis = basis if fid and len(scenes) >= 10 * basis["components"].shape[1] else None
    return summarize(per, novel, stats.draws(len(scenes), seed=seed), ref_features, basis, teacher)


def reference_scores(scenes, judge=None, world=None, seed: int = 0) -> dict[str, Any]:
    """The ceiling: rendered images of the same captions with the objects placed anew
    (`world.same_caption`) scored against the rendered scenes, as `toy_scores` scores a model."""
    world = world if world is not None else toy_world
    other = [world.same_caption(s, seed + 1 + i) for i, s in enumerate(scenes)]
    return toy_scores([world.render(s) for s in other], scenes, judge=judge, world=world, seed=seed)
