"""Distillation losses as small pure functions (METHODS.md sections 2-4).

All losses are computed in float32 and are means over the batch of per-example values, so the
mean over processes of per-process losses equals the loss of the whole global batch (what makes
1 process and N processes with the same global batch take the same step).

    L = l_task * MSE(pred_S, target)                      task (BK-SDM eq. 1)
      + l_out  * MSE(pred_S, pred_T)                       output KD (BK-SDM eq. 2)
      + l_feat * sum_k d(F_S^k, F_T^k)                     feature KD (BK-SDM eq. 3; LAPTOP-Diff)
      + l_mid  * d(M_S, M_T)                               A-SDM SAS: mid-block output
      + l_perc * sum_l MSE(phi_l(D(x0_S)), phi_l(D(x0_T))) A-SDM SAS: perceptual

with d = MSE ("plain") or the normalized distance ||F_S - F_T||^2 / ||F_T||^2 ("normalized").
The task target and the x0 estimate (x0 / eps / v) are `slimdiff.train.maths`'.
"""

from __future__ import annotations

from typing import Callable, Mapping, Sequence

import torch
import torch.nn.functional as F

Tensor = torch.Tensor


def mse(a: Tensor, b: Tensor) -> Tensor:
    """Mean squared error over every element, in float32: mean((a - b)^2)."""
    if a.shape != b.shape:
        raise ValueError(f"mse: shapes differ: {tuple(a.shape)} vs {tuple(b.shape)}")
    return F.mse_loss(a.float(), b.float())


def normalized_sq_error(f_s: Tensor, f_t: Tensor, eps: float = 1e-8) -> Tensor:
    """LAPTOP-Diff normalized distance, per example then averaged over the batch.

    f_s, f_t: (B, ...). Returns mean_b ||f_s[b] - f_t[b]||^2 / (||f_t[b]||^2 + eps).
    The paper does not publish the exact normalisation; this per-example energy ratio is
    slimdiff's interpretation (METHODS.md section 3). A scaled copy f_s = c * f_t gives (c - 1)^2.
    """
    if f_s.shape != f_t.shape:
        raise ValueError(f"normalized_sq_error: shapes differ: {tuple(f_s.shape)} vs {tuple(f_t.shape)}")
    diff = (f_s.float() - f_t.float()).flatten(1).pow(2).sum(1)  # (B,)
    energy = f_t.float().flatten(1).pow(2).sum(1)  # (B,)
    return (diff / (energy + eps)).mean()


def feature_distance(f_s: Tensor, f_t: Tensor, mode: str = "plain") -> Tensor:
    """One feature term: "plain" = MSE (BK-SDM), "normalized" = LAPTOP-Diff's energy ratio."""
    if mode == "plain":
        return mse(f_s, f_t)
    if mode == "normalized":
        return normalized_sq_error(f_s, f_t)
    raise ValueError(f"feature loss mode {mode!r} is not one of ['plain', 'normalized']")


def feature_kd(student_feats: Mapping[str, Tensor], teacher_feats: Mapping[str, Tensor],
               feat_map: Mapping[str, str], mode: str = "plain") -> Tensor:
    """sum_k d(F_S^k, F_T^k) over the pairs `feat_map` (student name -> teacher name)."""
    terms = [feature_distance(student_feats[s], teacher_feats[t], mode) for s, t in feat_map.items()]
    if not terms:
        raise ValueError("feature_kd: empty feature map")
    return torch.stack(terms).sum()


def perceptual_loss(features: Callable[[Tensor], Sequence[Tensor]], images_s: Tensor, images_t: Tensor) -> Tensor:
    """A-SDM SAS perceptual term: sum_l MSE(phi_l(img_S), phi_l(img_T)); images (B, 3, H, W) in [0, 1].

    The teacher side is computed without gradient; gradient flows into the student's images.
    """
    with torch.no_grad():
        feats_t = [f.detach() for f in features(images_t)]
    feats_s = features(images_s)
    return torch.stack([mse(fs, ft) for fs, ft in zip(feats_s, feats_t, strict=True)]).sum()


def gan_losses(real_logits: Tensor, fake_logits: Tensor) -> tuple[Tensor, Tensor]:
    """(discriminator, generator) non-saturating logistic losses (DMD2 sec. 4.3): softplus(D(fake)) +
    softplus(-D(real)) and softplus(-D(fake)), means over rows."""
    return F.softplus(fake_logits).mean() + F.softplus(-real_logits).mean(), F.softplus(-fake_logits).mean()
