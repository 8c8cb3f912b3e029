"""Metrics tables as markdown, HTML and plain text, from a list of row dicts.

    rows = [{"model": "teacher", "alignment": 0.93, "params": 1_234_567},
            {"model": "bk-small", "alignment": 0.88, "params": 812_345}]
    print(text_table(rows))

Columns are the keys in order of first appearance (or `columns`); a missing value prints as '-'.
"""

from __future__ import annotations

import html
from typing import Any, Sequence

MISSING = "-"


def format_value(value: Any) -> str:
    """Numbers for people: ints with thousands separators, floats with 4 significant digits."""
    if value is None:
        return MISSING
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if value != value:  # NaN
            return "nan"
        if abs(value) >= 1e4:
            return f"{value:,.0f}"
        return f"{value:.4g}"
    return str(value)


def format_ci(value: float | None, ci: Sequence[float] | None, mark: str = "") -> str:
    """A value with its 95% interval for tables: '0.8125 [0.7617, 0.8594]' (+ a mark, e.g. '*')."""
    if value is None:
        return MISSING
    text = format_value(float(value))
    if ci is not None and len(ci) == 2:
        text += f" [{format_value(float(ci[0]))}, {format_value(float(ci[1]))}]"
    return text + mark


def table_columns(rows: Sequence[dict], columns: Sequence[str] | None = None) -> list[str]:
    if columns is not None:
        return list(columns)
    return list(dict.fromkeys(k for row in rows for k in row))


def _cells(rows: Sequence[dict], columns: Sequence[str] | None) -> tuple[list[str], list[list[str]]]:
    cols = table_columns(rows, columns)
    return cols, [[format_value(row.get(c)) for c in cols] for row in rows]


def _md_escape(text: str) -> str:
    return str(text).replace("|", "\\|")


def markdown_table(rows: Sequence[dict], columns: Sequence[str] | None = None) -> str:
    """A GitHub-flavoured markdown table (numbers right-aligned)."""
    cols, cells = _cells(rows, columns)
    if not cols:
        return ""
    numeric = [all(isinstance(r.get(c), (int, float)) or r.get(c) is None for r in rows) for c in cols]
    lines = ["| " + " | ".join(_md_escape(c) for c in cols) + " |"]
    lines.append("|" + "|".join("---:" if num else ":---" for num in numeric) + "|")
    lines += ["| " + " | ".join(_md_escape(v) for v in row) + " |" for row in cells]
    return "\n".join(lines)


def html_table(rows: Sequence[dict], columns: Sequence[str] | None = None) -> str:
    """An HTML <table> (class "metrics"); numeric cells get class "num"."""
    cols, cells = _cells(rows, columns)
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in cols)
    body = []
    for row, texts in zip(rows, cells):
        tds = []
        for c, t in zip(cols, texts):
            num = isinstance(row.get(c), (int, float)) and not isinstance(row.get(c), bool)
            tds.append(f'<td class="num">{html.escape(t)}</td>' if num else f"<td>{html.escape(t)}</td>")
        body.append("<tr>" + "".join(tds) + "</tr>")
    rows_html = "\n".join(body)
    return f'<table class="metrics">\n<thead><tr>{head}</tr></thead>\n<tbody>\n{rows_html}\n</tbody>\n</table>'


def text_table(rows: Sequence[dict], columns: Sequence[str] | None = None) -> str:
    """A plain aligned table for terminals."""
    cols, cells = _cells(rows, columns)
    if not cols:
        return ""
    widths = [max(len(str(c)), *(len(r[i]) for r in cells)) for i, c in enumerate(cols)]

    def line(values: Sequence[str]) -> str:  # first column left-aligned, the rest right-aligned
        return "  ".join(str(v).rjust(w) if i else str(v).ljust(w) for i, (v, w) in enumerate(zip(values, widths)))

    return "\n".join([line(cols), "  ".join("-" * w for w in widths)] + [line(r) for r in cells])
