"""slimdiff.report: metrics tables, plots, image grids and the HTML + markdown report.

    from slimdiff.report import write_report, plot_bars, plot_loss_curves, make_grid
    plot_bars({"teacher": 41.2, "bk-small": 27.9}, "U-Net latency (ms)", "out/latency.png")
    plot_loss_curves("out/kd/log.jsonl", "out/loss.png")
    html, md = write_report("out", "Title", metrics_rows=[{"model": "teacher", "alignment": 0.93}],
                            images={"teacher": imgs_a, "student": imgs_b}, prompts=prompts,
                            plots={"U-Net latency": "out/latency.png"})
"""

from slimdiff.report.grid import compare_grid, make_grid
from slimdiff.report.plots import plot_bars, plot_loss_curves, read_jsonl
from slimdiff.report.tables import format_value, html_table, markdown_table, text_table
from slimdiff.report.writer import write_report

__all__ = [
    "compare_grid",
    "format_value",
    "html_table",
    "make_grid",
    "markdown_table",
    "plot_bars",
    "plot_loss_curves",
    "read_jsonl",
    "text_table",
    "write_report",
]
