"""slimdiff.eval: the evaluation engine: metrics, evaluation, comparison, whole-model latency.
(Generation with fixed seeds is `slimdiff.sample.generate`.)

    from slimdiff.eval import evaluate, judge_fid, fid, clip_score, unet_latency
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
from slimdiff.eval.config import EvalConfig
from slimdiff.eval.evaluation import evaluate, summary_rows
from slimdiff.eval.toy import toy_scores

__all__ = [
    "EvalConfig",
    "CLIPScorer",
    "FIDScorer",
    "FrechetScorer",
    "ISScorer",
    "clip_score",
    "evaluate",
    "fid",
    "frechet_distance",
    "inception_score",
    "judge_fid",
    "pipeline_latency",
    "summary_rows",
    "toy_scores",
    "unet_latency",
]
