"""slimdiff.eval: generation with fixed seeds, metrics, evaluation, whole-model latency.

    from slimdiff.eval import generate, evaluate, judge_fid, fid, clip_score, unet_latency
    images = generate("toy", ["a small red circle on the left"], seed=0)   # image i: seed + i
    result = evaluate("toy", split="test", num_images=64, seed=0)   # alignment, all_correct, judge_fid
    result = evaluate("sd-dir/", prompts=coco_prompts, num_images=30_000, inception_weights=W,
                      ref_images="coco_256/", clip_dir="clip-vit-g-14/", device="cuda")  # fid, is, clip_score
"""

from slimdiff.eval.latency import pipeline_latency, unet_latency
from slimdiff.eval.metrics import (
    CLIPScorer,
    FIDScorer,
    FrechetScorer,
    ISScorer,
    clip_score,
    fid,
    frechet_distance,
    inception_score,
    judge_fid,
)
from slimdiff.eval.runner import (
    SCHEDULERS,
    evaluate,
    generate,
    iter_generate,
    make_scheduler,
    resolve_pipeline,
    save_images,
    summary_rows,
    toy_scores,
)

__all__ = [
    "CLIPScorer",
    "FIDScorer",
    "FrechetScorer",
    "ISScorer",
    "SCHEDULERS",
    "clip_score",
    "evaluate",
    "fid",
    "frechet_distance",
    "generate",
    "inception_score",
    "iter_generate",
    "judge_fid",
    "make_scheduler",
    "pipeline_latency",
    "resolve_pipeline",
    "save_images",
    "summary_rows",
    "toy_scores",
    "unet_latency",
]
