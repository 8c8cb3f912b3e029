"""Render a ProfileResult: a rich table and a matplotlib bar chart (per block or per unit)."""

from __future__ import annotations

from .profiler import ProfileResult, Row

BY = ("block", "unit")  # --by choices


def _rows(result: ProfileResult, by: str) -> list[Row]:
    if by not in BY:
        raise ValueError(f"by must be one of {BY}, got {by!r}")
    return result.blocks if by == "block" else result.units


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def settings_line(result: ProfileResult) -> str:
    s = result.settings
    size = f"latent {s['latent_size']}x{s['latent_size']}"
    size = f"{s['resolution']}px ({size})" if s.get("latent_from") == "resolution" else size
    return (
        f"{result.model}: {size}, batch {s['batch']}, {s['dtype']}, {s['device_name']}, "
        f"{s['threads']} thread{'s' if s['threads'] != 1 else ''}, warmup {s['warmup']}, median of {s['repeats']}"
        + (", CPU-time clock" if s.get("clock") == "cpu" else "")
        + "; FLOPs = 2 x MACs"
    )


def make_table(result: ProfileResult, by: str = "block"):
    """A rich Table: params, GFLOPs, latency and their shares (%) of the whole U-Net."""
    from rich.table import Table

    rows = _rows(result, by)
    table = Table(title=settings_line(result), title_justify="left")
    table.add_column(by, no_wrap=True)
    if by == "unit":
        table.add_column("in->out @side", justify="right", no_wrap=True)
    for col in ("params M", "%", "GFLOPs", "%", "ms", "%"):
        table.add_column(col, justify="right", no_wrap=True)
    for r in rows + [result.other, result.total]:
        cells = [r.name]
        if by == "unit":
            cells.append(f"{r.in_channels}->{r.out_channels} @{r.spatial}" if r.kind else "")
        cells += [
            f"{r.params / 1e6:.2f}",
            _pct(r.params_share),
            f"{r.flops / 1e9:.2f}",
            _pct(r.flops_share),
            "-" if r.latency_ms is None else f"{r.latency_ms:.1f}",
            _pct(r.latency_share),
        ]
        table.add_row(*cells, end_section=r is rows[-1])
    if result.other.latency_ms is not None and result.other.latency_ms < 0:
        table.caption = (
            "other < 0: the units timed alone sum to more than the whole forward; timing noise "
            "(a loaded machine, too few --repeats) or a unit that runs faster inside the network"
        )
    return table


def print_table(result: ProfileResult, by: str = "block", console=None) -> None:
    from rich.console import Console

    if console is None:
        console = Console()
        if not console.is_terminal:  # files and pipes: wide enough for the unit table
            console = Console(width=max(console.width, 110))
    console.print(make_table(result, by))
    if result.kinds:
        console.print("by unit kind (params / FLOPs / latency shares): " + "; ".join(
            f"{k.name} {_pct(k.params_share)} / {_pct(k.flops_share)} / {_pct(k.latency_share)}" for k in result.kinds
        ))


KIND_COLORS = {"resnet": "tab:blue", "attn": "tab:orange", "downsample": "tab:green", "upsample": "tab:green", "other": "tab:gray"}


def plot(result: ProfileResult, path, by: str = "block") -> None:
    """Horizontal bars of latency (GFLOPs when latency was not measured) and parameters per
    block or unit, coloured by unit kind (per block: stacked by kind)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from slimdiff.report.plots import save_figure

    rows = _rows(result, by) + [result.other]
    has_latency = result.total.latency_ms is not None

    def left_value(r: Row) -> float:  # "other" latency can be slightly negative (noise): drawn as 0
        return max(r.latency_ms, 0.0) if has_latency else r.flops / 1e9

    # 1. bar segments: row -> {kind: (left value, params M)}
    segments = []
    for r in rows:
        members = [u for u in result.units if u.block == r.name] if by == "block" and r is not result.other else [r]
        kinds: dict[str, list[float]] = {}
        for u in members:
            acc = kinds.setdefault(u.kind or "other", [0.0, 0.0])
            acc[0] += left_value(u)
            acc[1] += u.params / 1e6
        segments.append(kinds)

    # 2. two panels sharing the row axis, stacked by kind
    fig, axes = plt.subplots(1, 2, figsize=(11, max(3.0, 0.28 * len(rows) + 1.5)), sharey=True)
    y = list(range(len(rows)))
    for panel, ax in enumerate(axes):
        start = [0.0] * len(rows)
        for kind, color in KIND_COLORS.items():
            width = [seg.get(kind, [0.0, 0.0])[panel] for seg in segments]
            if any(width):
                label = "down/upsample" if kind == "downsample" else None if kind == "upsample" else kind
                ax.barh(y, width, left=start, color=color, label=label)
                start = [a + b for a, b in zip(start, width)]
        ax.set_xlim(0, 1.05 * max(start + [1e-9]))
    if has_latency:
        axes[0].set_xlabel(f"latency (ms), total {result.total.latency_ms:.1f} ms")
    else:
        axes[0].set_xlabel(f"GFLOPs, total {result.total.flops / 1e9:.1f}")
    axes[1].set_xlabel(f"parameters (M), total {result.total.params / 1e6:.1f} M")
    axes[0].set_yticks(y, [r.name for r in rows], fontsize=8 if by == "unit" else 10)
    axes[0].invert_yaxis()
    legend = {}
    for ax in axes:
        legend.update(zip(*reversed(ax.get_legend_handles_labels())))  # label -> handle
    labels, handles = list(legend), list(legend.values())
    fig.legend(handles, labels, loc="upper center", bbox_to_anchor=(0.5, 0.985), ncol=len(labels), fontsize=8, frameon=False)
    fig.suptitle(settings_line(result), fontsize=9, y=0.999)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.3 / fig.get_figheight()))
    save_figure(fig, path, dpi=120, tight=False)
