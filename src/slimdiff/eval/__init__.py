"""slimdiff.eval: generation with fixed seeds, metrics, evaluation, whole-model latency.

    from slimdiff.eval import generate, evaluate, judge_fid, fid, clip_score, unet_latency
    images = generate("toy", ["a small red circle on the left"], steps=25, guidance=7.5, seed=0)
    result = evaluate("toy", split="test", num_images=64, seed=0)   # alignment, all_correct, judge_fid
"""

from slimdiff.eval.latency import pipeline_latency, unet_latency
from slimdiff.eval.metrics import clip_score, fid, frechet_distance, inception_score, judge_fid
from slimdiff.eval.runner import SCHEDULERS, evaluate, generate, make_scheduler, resolve_pipeline

__all__ = [
    "SCHEDULERS",
    "clip_score",
    "evaluate",
    "fid",
    "frechet_distance",
    "generate",
    "inception_score",
    "judge_fid",
    "make_scheduler",
    "pipeline_latency",
    "resolve_pipeline",
    "unet_latency",
]
