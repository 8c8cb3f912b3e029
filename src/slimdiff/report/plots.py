"""Plots for reports, written as PNG with matplotlib's object API (no pyplot, no global state).

    plot_bars({"teacher": 41.2, "bk-small": 27.9}, ylabel="U-Net latency (ms)", path="latency.png")
    plot_loss_curves("runs/kd/log.jsonl", "loss.png")         # every loss term against `step`
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Iterable, Mapping, Sequence

from matplotlib.figure import Figure

from slimdiff.io import atomic_path

# keys of a training log that are bookkeeping, not loss terms
NON_LOSS_KEYS = {"step", "epoch", "lr", "learning_rate", "time", "time_s", "elapsed", "steps_per_s",
                 "samples_per_s", "grad_norm", "tokens", "images"}


def save_figure(fig: Figure, path: str | os.PathLike, dpi: float | None = None, tight: bool = True) -> Path:
    """Write `fig` as a PNG atomically (temporary name, then rename) and close it: the one
    figure-saving helper. `tight`: `fig.tight_layout()` first (False: the caller laid it out);
    `dpi`: default the figure's own."""
    import matplotlib.pyplot as plt

    if tight:
        fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi or fig.dpi)
    plt.close(fig)  # a no-op for a Figure pyplot does not manage
    return Path(path)


def plot_bars(
    values: Mapping[str, float],
    ylabel: str,
    path: str | os.PathLike,
    title: str | None = None,
    annotate: bool = True,
) -> Path:
    """One bar per entry of `values` (name -> number), each annotated with its value."""
    if not values:
        raise ValueError("plot_bars needs at least one value")
    names, heights = list(values), [float(v) for v in values.values()]
    fig = Figure(figsize=(max(4.0, 1.1 * len(names) + 1.5), 3.6), dpi=110)
    ax = fig.subplots()
    bars = ax.bar(names, heights, color=[f"C{i % 10}" for i in range(len(names))])
    if annotate:
        ax.bar_label(bars, labels=[f"{h:.3g}" for h in heights], padding=2, fontsize=9)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    ax.margins(y=0.15)
    ax.grid(axis="y", alpha=0.3)
    if max(len(n) for n in names) > 10:
        for label in ax.get_xticklabels():
            label.set_rotation(20)
            label.set_ha("right")
    return save_figure(fig, path)


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    """Records of a JSONL file (one JSON object a line; blank lines skipped)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"training log not found: {path}")
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def loss_keys(records: Sequence[dict]) -> list[str]:
    """The loss terms of a log: numeric keys with 'loss' in their name, else every numeric
    key that is not bookkeeping (NON_LOSS_KEYS); in order of first appearance. Terms that are
    zero throughout (a loss switched off with weight 0) are left out."""
    numeric = [k for r in records for k, v in r.items() if isinstance(v, (int, float)) and not isinstance(v, bool)]
    numeric = list(dict.fromkeys(numeric))
    with_loss = [k for k in numeric if "loss" in k.lower()]
    keys = with_loss or [k for k in numeric if k not in NON_LOSS_KEYS]
    return [k for k in keys if any(r.get(k) not in (None, 0, 0.0) for r in records)]


def plot_loss_curves(
    log: str | os.PathLike | Iterable[dict],
    path: str | os.PathLike,
    keys: Sequence[str] | None = None,
    title: str | None = None,
    logy: bool | None = None,
) -> Path:
    """Loss terms of a training log against `step`.

    `log`: a JSONL path or its records (dicts with a `step` key). `keys`: the terms to draw
    (default: `loss_keys`). `logy`: log-scale y axis (default: when every value is positive).
    """
    records = read_jsonl(log) if isinstance(log, (str, os.PathLike)) else list(log)
    records = [r for r in records if "step" in r]
    if not records:
        raise ValueError("the training log has no records with a 'step' key")
    keys = list(keys) if keys is not None else loss_keys(records)
    if not keys:
        raise ValueError(f"no loss terms found in the log; keys present: {sorted(set().union(*records))}")
    fig = Figure(figsize=(6.4, 4.0), dpi=110)
    ax = fig.subplots()
    all_values = []
    for key in keys:
        points = [(r["step"], r[key]) for r in records if isinstance(r.get(key), (int, float))]
        if not points:
            raise ValueError(f"loss term {key!r} is not in the log")
        xs, ys = zip(*points)
        all_values += [y for y in ys if math.isfinite(y)]
        ax.plot(xs, ys, label=key, linewidth=1.2)
    if logy is None:
        logy = bool(all_values) and min(all_values) > 0
    if logy:
        ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    if title:
        ax.set_title(title)
    return save_figure(fig, path)
