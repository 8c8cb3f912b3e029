"""Every loss on hand-computed values (METHODS.md sections 2-4)."""

import math

import pytest
import torch

from slimdiff.train.ema import EMA
from slimdiff.distill.losses import (
    feature_distance,
    feature_kd,
    mse,
    normalized_sq_error,
    perceptual_loss,
)
from slimdiff.train.maths import task_target, x0_estimate


def test_mse_hand_value():
    a = torch.tensor([[1.0, 2.0, 3.0]])
    b = torch.tensor([[1.0, 1.0, 1.0]])
    assert mse(a, b).item() == pytest.approx((0 + 1 + 4) / 3)
    with pytest.raises(ValueError, match=r"\(1, 3\) vs \(3,\)"):
        mse(a, b[0])


def test_normalized_kd_of_a_scaled_feature():
    f_t = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    # ||c F - F||^2 / ||F||^2 = (c - 1)^2 whatever F is
    assert normalized_sq_error(3 * f_t, f_t).item() == pytest.approx(4.0, rel=1e-6)
    assert normalized_sq_error(0.5 * f_t, f_t).item() == pytest.approx(0.25, rel=1e-6)
    # per example, then the batch mean: example 0 scaled by 2 (1.0), example 1 identical (0.0)
    f_s = f_t.clone()
    f_s[0] *= 2
    assert normalized_sq_error(f_s, f_t).item() == pytest.approx(0.5, rel=1e-6)
    # the plain loss of the same pair is the raw MSE: (F_0^2 summed) / numel
    assert feature_distance(f_s, f_t, "plain").item() == pytest.approx(f_t[0].pow(2).sum().item() / f_t.numel(),
                                                                        rel=1e-6)


def test_feature_kd_sums_terms_and_is_zero_for_identical_features():
    t = {"a": torch.ones(1, 2, 2, 2), "b": torch.full((1, 1, 2, 2), 2.0)}
    s = {"x": torch.zeros(1, 2, 2, 2), "y": torch.full((1, 1, 2, 2), 4.0)}
    fmap = {"x": "a", "y": "b"}
    # plain: MSE(0, 1) + MSE(4, 2) = 1 + 4
    assert feature_kd(s, t, fmap, "plain").item() == pytest.approx(5.0)
    # normalized: ||0 - 1||^2/||1||^2 + ||4 - 2||^2/||2||^2 = 1 + 1
    assert feature_kd(s, t, fmap, "normalized").item() == pytest.approx(2.0)
    same = {"x": t["a"].clone(), "y": t["b"].clone()}
    assert feature_kd(same, t, fmap, "plain").item() == 0.0
    assert feature_kd(same, t, fmap, "normalized").item() == 0.0
    with pytest.raises(ValueError, match="'cosine'"):
        feature_distance(t["a"], t["a"], "cosine")


def test_targets_and_x0_estimates():
    # alphas_cumprod[t] = 0.25 -> a = 0.5, s = sqrt(0.75)
    ab = torch.tensor([0.9, 0.25])
    t = torch.tensor([1])
    x0, eps = torch.full((1, 1, 1, 1), 2.0), torch.full((1, 1, 1, 1), -1.0)
    a, s = 0.5, math.sqrt(0.75)
    assert task_target("epsilon", x0, eps, t, ab).item() == -1.0
    assert task_target("sample", x0, eps, t, ab).item() == 2.0
    v = task_target("v_prediction", x0, eps, t, ab)
    assert v.item() == pytest.approx(a * -1.0 - s * 2.0)
    x_t = a * x0 + s * eps
    assert x0_estimate("epsilon", x_t, eps, t, ab).item() == pytest.approx(2.0, rel=1e-6)
    assert x0_estimate("v_prediction", x_t, v, t, ab).item() == pytest.approx(2.0, rel=1e-6)
    with pytest.raises(ValueError, match="'flow'"):
        task_target("flow", x0, eps, t, ab)


def test_perceptual_loss_sums_levels_and_only_the_student_gets_gradient():
    def features(x):  # two "levels": x and 2x
        return [x, 2 * x]

    img_t = torch.zeros(1, 3, 2, 2, requires_grad=True)
    img_s = torch.ones(1, 3, 2, 2, requires_grad=True)
    loss = perceptual_loss(features, img_s, img_t)
    assert loss.item() == pytest.approx(1.0 + 4.0)  # MSE(1, 0) + MSE(2, 0)
    loss.backward()
    assert img_s.grad is not None and img_t.grad is None


def test_ema_decay_warmup_and_average():
    p = torch.nn.Parameter(torch.zeros(2))
    ema = EMA([p], decay=0.5)
    with torch.no_grad():
        p.fill_(1.0)
    ema.update([p])  # n=1: d = min(0.5, 2/11) = 2/11 -> shadow = 9/11
    assert ema.shadow[0][0].item() == pytest.approx(9 / 11)
    ema.update([p])  # n=2: d = min(0.5, 3/12) = 0.25 -> shadow = 0.25 * 9/11 + 0.75
    assert ema.shadow[0][0].item() == pytest.approx(0.25 * 9 / 11 + 0.75)
    q = torch.nn.Parameter(torch.zeros(2))
    other = EMA([q], decay=0.5)
    other.load_state_dict(ema.state_dict())
    other.copy_to([q])
    assert torch.equal(q.detach(), ema.shadow[0])
