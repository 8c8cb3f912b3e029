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
        f"{s['threads']} threads, warmup {s['warmup']}, median of {s['repeats']}; FLOPs = 2 x MACs"
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


def plot(result: ProfileResult, path, by: str = "block") -> None:
    """Horizontal bars of latency (or GFLOPs when latency was not measured) and parameters."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from slimdiff.io import atomic_path

    rows = _rows(result, by) + [result.other]
    names = [r.name for r in rows]
    has_latency = result.total.latency_ms is not None
    if has_latency:
        left = [max(r.latency_ms, 0.0) for r in rows]  # "other" can be slightly negative (noise)
        left_label = f"latency (ms), total {result.total.latency_ms:.1f} ms"
    else:
        left = [r.flops / 1e9 for r in rows]
        left_label = f"GFLOPs, total {result.total.flops / 1e9:.1f}"
    params = [r.params / 1e6 for r in rows]
    height = max(3.0, 0.28 * len(rows) + 1.5)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, height), sharey=True)
    y = range(len(rows))
    colors = [_color(r) for r in rows]
    ax1.barh(y, left, color=colors)
    ax1.set_xlabel(left_label)
    ax2.barh(y, params, color=colors)
    ax2.set_xlabel(f"parameters (M), total {result.total.params / 1e6:.1f} M")
    ax1.set_yticks(list(y), names, fontsize=8 if by == "unit" else 10)
    ax1.invert_yaxis()
    fig.suptitle(settings_line(result), fontsize=9)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)


def _color(r: Row) -> str:
    return {"attn": "tab:orange", "resnet": "tab:blue", "downsample": "tab:green", "upsample": "tab:green"}.get(
        r.kind or "", "tab:gray" if r.name == "other" else "tab:purple"
    )
