"""The intervals of FID, IS and CLIP score (every number carries a 95% bootstrap interval)."""

import numpy as np
import pytest
import torch
from PIL import Image
from torchmetrics.image.fid import FrechetInceptionDistance
from torchmetrics.image.inception import InceptionScore

from slimdiff.eval import evaluate, stats


def test_inception_score_of_matches_torchmetrics():
    torch.manual_seed(0)
    logits = torch.randn(40, 11) * 3
    metric = InceptionScore(feature=torch.nn.Identity(), splits=1, normalize=False)
    metric.features = [logits]  # one split: torchmetrics' shuffle does not matter
    assert stats.inception_score_of(logits, 1) == pytest.approx(float(metric.compute()[0]), rel=1e-6)


def test_frechet_draws_of_the_whole_set_equal_torchmetrics():
    torch.manual_seed(0)
    gen, ref = torch.randn(50, 6).double(), (torch.randn(60, 6) * 1.5 + 0.3).double()
    metric = FrechetInceptionDistance(feature=torch.nn.Identity())
    metric.real_features_sum, metric.real_features_num_samples = ref.sum(0), torch.tensor(60)
    metric.real_features_cov_sum = ref.T @ ref
    metric.fake_features_sum, metric.fake_features_num_samples = gen.sum(0), torch.tensor(50)
    metric.fake_features_cov_sum = gen.T @ gen
    metric.orig_dtype = torch.float64
    ref_np = ref.numpy()
    whole = stats.frechet_draws(gen.numpy(), ref_np.mean(0), np.cov(ref_np, rowvar=False), np.arange(50)[None])
    assert whole[0] == pytest.approx(float(metric.compute()), rel=1e-6)


def test_fid_is_and_clip_score_carry_intervals(tiny_pipe, tmp_path, inception_file, tiny_clip_dir):
    ref = tmp_path / "ref"
    ref.mkdir()
    for i in range(4):
        Image.new("RGB", (24, 24), (40 * i, 100, 200)).save(ref / f"{i}.png")
    prompts = ["a small red circle on the left", "a large blue square at the top"] * 5
    out = evaluate(tiny_pipe, toy=False, prompts=prompts, num_images=10, batch_size=5, steps=1, progress=False,
                   inception_weights=inception_file, ref_images=ref, clip_dir=tiny_clip_dir, fid_dims=64)
    assert set(out["ci"]) == {"fid", "is", "clip_score"}
    for key, (lo, hi) in out["ci"].items():
        assert np.isfinite(lo) and lo <= hi, key
    lo, hi = out["ci"]["clip_score"]
    assert lo - 1e-9 <= out["clip_score"] <= hi + 1e-9


def test_eval_config_checks_on_construction(tmp_path):
    from slimdiff.eval import EvalConfig

    with pytest.raises(ValueError, match="num_images must be >= 2"):
        EvalConfig(num_images=1)
    with pytest.raises(ValueError, match="unknown scheduler 'heun'"):
        EvalConfig(scheduler="heun")
    with pytest.raises(ValueError, match="FID needs both"):
        EvalConfig(ref_images=tmp_path)
