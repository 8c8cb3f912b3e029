"""Bootstrap intervals, KID, PCA-FID and fidelity: exact identities on small seeded data."""

import numpy as np
import pytest
import torch

from slimdiff.eval import stats


def test_draws_are_seeded_and_intervals_hold_the_mean():
    assert np.array_equal(stats.draws(10, seed=1), stats.draws(10, seed=1))
    assert not np.array_equal(stats.draws(10, seed=1), stats.draws(10, seed=2))
    x = np.random.default_rng(0).normal(size=400)
    m = stats.mean_ci(x)
    lo, hi = m["ci"]
    assert lo < x.mean() < hi and m["n"] == 400
    # the half-width matches the normal approximation 1.96 sd / sqrt(n) within 15%
    assert (hi - lo) / 2 == pytest.approx(1.96 * x.std() / 20, rel=0.15)
    const = stats.mean_ci(np.ones(50))
    assert const["value"] == 1.0 and const["ci"] == [1.0, 1.0]
    with pytest.raises(ValueError, match="at least 2 images, got 1"):
        stats.draws(1)


def test_kid_is_zero_for_identical_sets_and_unbiased_for_same_distribution():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(200, 16, generator=g)
    same = stats.kid(a, a.clone())
    assert same["value"] == pytest.approx(0.0, abs=1e-12) and same["ci"] == pytest.approx([0.0, 0.0], abs=1e-12)
    # two independent draws of one distribution: the unbiased estimate's CI contains 0
    b = torch.randn(200, 16, generator=g)
    k = stats.kid(a, b)
    assert k["ci"][0] <= 0.0 <= k["ci"][1]
    # a shifted distribution is far from 0
    far = stats.kid(a, b + 1.0)
    assert far["ci"][0] > 0
    # the full-set value equals the textbook U-statistic
    kxx, kyy, kxy = [(x.double() @ y.double().T / 16 + 1) ** 3 for x, y in ((a, a), (b, b), (a, b))]
    n = 200
    off = lambda m: (m.sum() - m.diagonal().sum()) / (n * (n - 1))  # noqa: E731
    want = off(kxx) + off(kyy) - 2 * off(kxy)
    assert k["value"] == pytest.approx(float(want), rel=1e-6)
    with pytest.raises(ValueError, match="paired feature sets"):
        stats.kid(a, b[:10])


def test_pca_fid_refuses_small_sets_and_is_zero_on_identical():
    g = torch.Generator().manual_seed(0)
    ref = torch.randn(500, 32, generator=g)
    basis = stats.fit_pca(ref, 4)
    assert basis["components"].shape == (32, 4)
    z = stats.standardize(ref, basis)
    assert torch.allclose(z.mean(dim=0), torch.zeros(32), atol=1e-5) and torch.allclose(z.std(dim=0), torch.ones(32), atol=1e-4)
    proj = z @ basis["components"]  # whitened: unit variance, uncorrelated along the principal axes
    assert torch.allclose(torch.cov(proj.T), torch.eye(4), atol=1e-3)
    same = stats.pca_fid(z[:100], z[:100], basis)
    assert same["value"] == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(ValueError, match="at least 40 images"):
        stats.pca_fid(z[:39], z[:39], basis)
    with pytest.raises(ValueError, match="PCA dims"):
        stats.fit_pca(ref, 64)


def test_fidelity_metrics():
    x = torch.rand(3, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    assert np.all(stats.psnr_per_image(x, x) == 100.0)
    y = (x + 0.1).clamp(0, 1)
    p = stats.psnr_per_image(x, y)
    mse = ((x - y) ** 2).mean(dim=(1, 2, 3)).double()
    assert p == pytest.approx((10 * torch.log10(1 / mse)).numpy())
    f = torch.randn(3, 5)
    assert stats.cosine_per_image(f, 2 * f) == pytest.approx(np.ones(3))
    with pytest.raises(ValueError, match="one shape"):
        stats.psnr_per_image(x, x[:2])
