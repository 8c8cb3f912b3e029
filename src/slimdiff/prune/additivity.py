"""Measure the additivity of the output-loss criterion (LAPTOP-Diff, METHODS.md section 3).

One-shot selection is only sound if  L(S) ~ sum_{u in S} L({u}).  For random sets S of several
sizes, compute the real L(S) (remove S, compare outputs on the calibration set) and the
predicted sum of single-unit losses, and report their Pearson and Spearman correlation, pooled
over all sets and per set size (pooled correlations are inflated by the size itself: bigger
sets have bigger losses; the per-size figures show whether the ranking holds at a fixed size).

    res = additivity_study(model, criterion, sizes=(2, 4, 8), sets_per_size=8)
    res.pearson, res.spearman; plot_additivity(res, "additivity.png")

Random sets that `remove_units` refuses are redrawn (up to `max_tries` draws per size) and
counted in `refused`.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Sequence

import numpy as np


from slimdiff.report.plots import save_figure
from slimdiff.unet import UNetEditError, remove_units

from .criteria import OutputLossCriterion, as_slim, removable_units


@dataclasses.dataclass
class AdditivityResult:
    rows: list[dict]  # {"size", "units", "predicted" = sum L({u}), "real" = L(S)}
    singles: dict[str, float]  # L({u}) per candidate
    pearson: float  # pooled over all sets
    spearman: float
    per_size: dict[int, dict]  # size -> {"n", "pearson", "spearman"}
    refused: int  # random draws refused by remove_units (redrawn)


def correlations(x: Sequence[float], y: Sequence[float]) -> tuple[float, float]:
    """(Pearson r, Spearman rho); NaN when fewer than 3 points or a constant input."""
    from scipy import stats

    x, y = np.asarray(x, float), np.asarray(y, float)
    if len(x) < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return math.nan, math.nan
    return float(stats.pearsonr(x, y)[0]), float(stats.spearmanr(x, y)[0])


def additivity_study(
    model,
    criterion: OutputLossCriterion,
    candidates: Sequence[str] | None = None,
    sizes: Sequence[int] = (2, 4, 8),
    sets_per_size: int = 8,
    seed: int = 0,
    singles: dict[str, float] | None = None,
    max_tries: int = 20,
) -> AdditivityResult:
    """Real L(S) vs sum L({u}) for `sets_per_size` random sets of each size (module docstring).

    `singles`: precomputed L({u}) (e.g. the scores of a LAPTOP search) to avoid recomputing.
    """
    model = as_slim(model)
    candidates = list(candidates) if candidates is not None else removable_units(model)
    bad = [k for k in sizes if not 1 <= k <= len(candidates)]
    if bad:
        raise ValueError(f"set sizes {bad} are outside [1, {len(candidates)}] (number of candidates)")
    # 1. single-unit losses
    if singles is None:
        singles = criterion(model, candidates)
    missing = [u for u in candidates if u not in singles]
    if missing:
        raise ValueError(f"singles lack units {missing}")
    # 2. random sets of each size: real vs predicted
    rng = np.random.default_rng(seed)
    rows, refused = [], 0
    for k in sizes:
        got, tries = 0, 0
        while got < sets_per_size and tries < max_tries * sets_per_size:
            tries += 1
            idx = sorted(rng.choice(len(candidates), size=k, replace=False).tolist())
            S = [candidates[i] for i in idx]
            try:
                pruned = remove_units(model, S)
            except UNetEditError:
                refused += 1
                continue
            real = criterion.loss_of_model(model, pruned)
            rows.append({"size": k, "units": S, "predicted": sum(singles[u] for u in S), "real": real})
            got += 1
    # 3. correlations, pooled and per size
    p, s = correlations([r["predicted"] for r in rows], [r["real"] for r in rows])
    per_size = {}
    for k in sizes:
        sub = [r for r in rows if r["size"] == k]
        pk, sk = correlations([r["predicted"] for r in sub], [r["real"] for r in sub])
        per_size[k] = {"n": len(sub), "pearson": pk, "spearman": sk}
    return AdditivityResult(rows, dict(singles), p, s, per_size, refused)


def plot_additivity(result: AdditivityResult, path: str | Path, title: str = "additivity of the output loss") -> Path:
    """Scatter of real L(S) against sum L({u}), one colour per set size, with y = x."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 4.5))
    for k in sorted({r["size"] for r in result.rows}):
        sub = [r for r in result.rows if r["size"] == k]
        ax.scatter([r["predicted"] for r in sub], [r["real"] for r in sub], s=18, label=f"|S| = {k}")
    vals = [v for r in result.rows for v in (r["predicted"], r["real"])]
    if vals:
        lo, hi = min(vals), max(vals)
        ax.plot([lo, hi], [lo, hi], "k--", lw=0.8, label="y = x")
        if lo > 0 and hi / lo > 100:
            ax.set_xscale("log")
            ax.set_yscale("log")
    ax.set_xlabel("predicted: sum of L({u})")
    ax.set_ylabel("real: L(S)")
    ax.set_title(f"{title}\nPearson {result.pearson:.3f}, Spearman {result.spearman:.3f}")
    ax.legend(fontsize=8)
    return save_figure(fig, path, dpi=110)
