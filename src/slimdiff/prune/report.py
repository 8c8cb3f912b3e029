"""What a search decided, readable: a table, a plot of per-unit scores on the U-Net layout, and
the `recipe.json` fields (scores, choices, predicted vs measured budget).

    write_search_report(out_dir, recipe, units)   # -> search.md, unit_scores.png

Layout of the plot: blocks on x in forward order (down.0 .. mid .. up.3), the unit's position
inside its block on y (layer.0.resnet, layer.0.attn, ..., downsample/upsample), each cell
coloured by its score, removed units crossed out, cells without a unit left blank.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

from slimdiff.io import atomic_write, to_jsonable
from slimdiff.report.plots import save_figure

# y order of unit positions inside a block; positions not listed go below, in order of appearance
ROW_ORDER = (
    "layer.0.resnet", "layer.0.attn", "layer.1.resnet", "layer.1.attn", "layer.2.resnet", "layer.2.attn",
    "resnet.0", "attn", "resnet.1", "downsample", "upsample",
)


def split_name(name: str) -> tuple[str, str]:
    """`down.1.layer.0.attn` -> ("down.1", "layer.0.attn"); `mid.resnet.0` -> ("mid", "resnet.0")."""
    parts = name.split(".")
    if parts[0] == "mid":
        return "mid", ".".join(parts[1:])
    return ".".join(parts[:2]), ".".join(parts[2:])


def layout(names: Sequence[str]) -> tuple[list[str], list[str]]:
    """(blocks in order of appearance, unit positions in ROW_ORDER then appearance)."""
    blocks, rows = [], []
    for n in names:
        b, r = split_name(n)
        if b not in blocks:
            blocks.append(b)
        if r not in rows:
            rows.append(r)
    known = [r for r in ROW_ORDER if r in rows]
    return blocks, known + [r for r in rows if r not in ROW_ORDER]


def score_table(
    scores: dict[str, float],
    removed: Sequence[str] = (),
    costs: dict[str, float] | None = None,
    cost_name: str = "cost",
    kinds: dict[str, str] | None = None,
) -> str:
    """A markdown table, one row per scored unit in forward order: score, rank (1 = removed first),
    cost, removed."""
    order = sorted(scores, key=lambda u: scores[u])
    rank = {u: i + 1 for i, u in enumerate(order)}
    removed = set(removed)
    head = "| unit | kind | score | rank | " + (f"{cost_name} | " if costs else "") + "removed |"
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for u in scores:
        kind = (kinds or {}).get(u, "")
        cost = f"{costs[u]:.4g} | " if costs else ""
        lines.append(f"| {u} | {kind} | {scores[u]:.4g} | {rank[u]} | {cost}{'yes' if u in removed else ''} |")
    return "\n".join(lines)


def plot_unit_scores(
    path: str | Path,
    scores: dict[str, float],
    removed: Sequence[str] = (),
    all_units: Sequence[str] | None = None,
    title: str = "per-unit scores",
) -> Path:
    """Heat map of `scores` on the U-Net layout (module docstring); returns `path` (PNG).

    `all_units`: every unit of the model (unscored ones are drawn grey), default the scored ones.
    A log colour scale is used when every score is > 0 and they span more than 100x.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    from matplotlib.colors import LogNorm, Normalize

    names = list(all_units) if all_units is not None else list(scores)
    blocks, rows = layout(names)
    grid = np.full((len(rows), len(blocks)), np.nan)
    present = np.zeros_like(grid, dtype=bool)
    for n in names:
        b, r = split_name(n)
        present[rows.index(r), blocks.index(b)] = True
        if n in scores:
            grid[rows.index(r), blocks.index(b)] = scores[n]
    vals = np.array([v for v in scores.values()], dtype=float)
    if len(vals) and (vals > 0).all() and vals.max() / vals.min() > 100:
        norm = LogNorm(vals.min(), vals.max())
    else:
        norm = Normalize(vals.min() if len(vals) else 0, vals.max() if len(vals) else 1)

    fig, ax = plt.subplots(figsize=(1.1 * len(blocks) + 2.5, 0.5 * len(rows) + 1.8))
    # grey: a unit that exists but has no score (not a candidate); white: no unit there
    ax.imshow(np.where(present & np.isnan(grid), 1.0, np.nan), cmap="Greys", vmin=0, vmax=4, aspect="auto")
    im = ax.imshow(np.ma.masked_invalid(grid), cmap="viridis", norm=norm, aspect="auto")
    for n in removed:
        b, r = split_name(n)
        if b in blocks and r in rows:
            ax.text(blocks.index(b), rows.index(r), "x", ha="center", va="center", color="red", fontsize=16,
                    weight="bold")
    for (i, j), v in np.ndenumerate(grid):
        if not math.isnan(v):
            ax.text(j, i + 0.32, f"{v:.2g}", ha="center", va="center", color="white", fontsize=6)
    ax.set_xticks(range(len(blocks)), blocks)
    ax.set_yticks(range(len(rows)), rows)
    ax.set_xlabel("block (forward order)")
    ax.set_title(title + ("   (x = removed; grey = not scored)" if removed else "   (grey = not scored)"))
    fig.colorbar(im, ax=ax, label="score (lower = removed first)")
    return save_figure(fig, path, dpi=110)


def search_markdown(recipe: dict, kinds: dict[str, str] | None = None) -> str:
    """The readable report of a search recipe (see `laptop_recipe`, `evolve_recipe`)."""
    s = recipe["search"]
    lines = [f"# Search: {s['method']}", ""]
    if s["method"] == "laptop":
        b = s["budget"]
        lines += [
            f"- budget: {b['spec']} (remove >= {b['required']:.6g} of {b['total']:.6g} {b['metric']})",
            f"- criterion: {s['criterion']['name']}",
            f"- removed {len(s['removed'])} of {len(s['candidates'])} candidates; summed score {s['score_sum']:.6g}",
            f"- predicted {b['metric']} ratio removed: {b['predicted_ratio']:.4f}; measured: {b['measured_ratio']:.4f}",
        ]
        for m, v in b.get("measured_other", {}).items():
            lines.append(f"- measured {m} ratio removed: {v:.4f}")
        for r in s.get("repairs", []):
            lines.append(f"- repair: kept {r['kept']} (refused: {r['reason']})")
        lines += ["", "![per-unit scores](unit_scores.png)", "",
                  score_table(s["scores"], s["removed"], s["costs"], b["metric"], kinds)]
    elif s["method"] == "laptop-choices":
        lines += [f"- budget: {s['budget']} of {s['total']:.6g}; criterion: {s['criterion']['name']}",
                  f"- removed {len(s['removed'])}, replaced {len(s['replaced'])}; summed score {s['score_sum']:.6g}",
                  f"- predicted ratio saved: {s['predicted_ratio']:.4f}; measured: {s['measured_ratio']:.4f}"]
        lines += [f"- measured {m} ratio removed: {v:.4f}" for m, v in s.get("measured_other", {}).items()]
        lines += ["", "| unit | choice | options (score / saved) |", "|---|---|---|"]
        for u, opts in s["options"].items():
            cells = "; ".join(f"{c} {o['score']:.4g} / {o['saved']:.4g}" for c, o in opts.items())
            lines.append(f"| {u} | {s['chosen'].get(u, 'keep')} | {cells} |")
    else:
        lines += [
            f"- target latency: {s['target_latency_ms']:.4g} ms (lookup table)",
            f"- latency {s['initial_latency']:.4g} -> {s['final_latency']:.4g} ms; "
            f"score {s['initial_score']:.4g} -> {s['final_score']:.4g}",
            f"- measured latency of the result: {s.get('measured_latency_ms')}",
            f"- stop: {s['stop_reason']}", "",
            "| round | action | unit | d score | d latency (ms) | latency after |", "|---|---|---|---|---|---|",
        ]
        for a in s["actions"]:
            lines.append(f"| {a['round']} | {a['action']} | {a['unit']} | {a['d_score']:.4g} | "
                         f"{a['d_latency']:.4g} | {a['latency_after']:.4g} |")
        if s["rounds"]:
            first = s["rounds"][0]
            scores = {u: e["ratio"] for u, e in first.items() if e["ratio"] is not None and ":" not in u}
            lines += ["", "First-round d score / d latency per unit (lower = removed first):", "",
                      "![per-unit scores](unit_scores.png)", "", score_table(scores, kinds=kinds)]
    return "\n".join(lines) + "\n"


def write_search_report(out_dir: str | Path, recipe: dict, all_units: Sequence[str] | None = None,
                        kinds: dict[str, str] | None = None) -> list[Path]:
    """Write `search.md` and `unit_scores.png` into `out_dir`; returns the paths."""
    out_dir = Path(out_dir)
    recipe = to_jsonable(recipe)
    s = recipe["search"]
    if s["method"] == "laptop":
        scores, removed, title = s["scores"], s["removed"], f"{s['criterion']['name']} criterion"
    elif s["method"] == "laptop-choices":  # the removal scores; replacements are listed in search.md
        scores = {u: o["remove"]["score"] for u, o in s["options"].items() if "remove" in o}
        removed, title = s["removed"], f"{s['criterion']['name']} criterion (removal)"
    else:
        first = s["rounds"][0] if s["rounds"] else {}
        scores = {u: e["ratio"] for u, e in first.items() if e["ratio"] is not None and ":" not in u}
        removed = [a["unit"] for a in s["actions"] if a["action"] == "remove"]
        title = "d score / d latency (round 0)"
    png = plot_unit_scores(out_dir / "unit_scores.png", scores, removed, all_units, title)
    md = atomic_write(out_dir / "search.md", search_markdown(recipe, kinds))
    return [md, png]
