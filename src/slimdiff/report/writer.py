"""The report: one HTML page and one markdown file with the same content.

    html_path, md_path = write_report(
        "runs/demo", "slimdiff demo: bk-small on the toy world",
        metrics_rows=[{"model": "teacher", "alignment": 0.93, "judge_fid": 3.1}, ...],
        images={"teacher": teacher_images, "distilled": student_images},   # same prompts and seeds
        prompts=prompts,
        plots={"U-Net latency": "runs/demo/latency.png", "Loss curves": "runs/demo/loss.png"},
        extra_sections={"Settings": "25 DPM steps, guidance 7.5, seed 0",
                        "Profile": [{"unit": "down.0", "params": 1234}]},      # text or table rows
    )

Layout of `out_dir`: `report.html`, `report.md`, `samples.png` (the side-by-side grid) and
`plots/` (copies of plots that live outside `out_dir`). Images are referenced by relative path,
so the folder can be moved as a whole; `embed_images=True` inlines them in the HTML instead.
Every file is written atomically.
"""

from __future__ import annotations

import base64
import html
import os
import shutil
from pathlib import Path
from typing import Mapping, Sequence, Union

from PIL import Image

from slimdiff.io import atomic_path, atomic_write
from slimdiff.report.grid import compare_grid
from slimdiff.report.tables import html_table, markdown_table

Section = Union[str, Sequence[dict]]  # a text (paragraphs split by blank lines) or table rows

CSS = """
body { font-family: system-ui, -apple-system, Segoe UI, Helvetica, Arial, sans-serif; margin: 2em auto;
       max-width: 1100px; color: #222; line-height: 1.45; padding: 0 1em; }
h1 { font-size: 1.6em; } h2 { font-size: 1.25em; margin-top: 1.6em; border-bottom: 1px solid #ddd; }
table.metrics { border-collapse: collapse; margin: 0.5em 0; font-size: 0.95em; }
table.metrics th, table.metrics td { border: 1px solid #ccc; padding: 0.3em 0.7em; }
table.metrics th { background: #f3f3f3; text-align: left; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
figure { margin: 1em 0; } figcaption { color: #555; font-size: 0.9em; }
img { max-width: 100%; } img.samples { image-rendering: pixelated; }
pre { background: #f6f6f6; padding: 0.6em; overflow-x: auto; }
"""


def _rel(path: Path, out_dir: Path) -> str:
    return os.path.relpath(path, out_dir).replace(os.sep, "/")


def _place_plot(name: str, src: str | os.PathLike, out_dir: Path, index: int) -> Path:
    """The plot's path inside out_dir: itself when already there, else a copy in plots/."""
    src = Path(src)
    if not src.is_file():
        raise FileNotFoundError(f"plot {name!r}: file not found: {src}")
    try:
        src.resolve().relative_to(out_dir.resolve())
        return src.resolve()
    except ValueError:
        dst = out_dir / "plots" / f"{index:02d}_{src.name}"
        with atomic_path(dst) as tmp:
            shutil.copyfile(src, tmp)
        return dst.resolve()


def _img_src(path: Path, out_dir: Path, embed: bool) -> str:
    if embed:
        return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")
    return _rel(path, out_dir)


def _sections(extra: Mapping[str, Section] | Sequence[tuple[str, Section]] | None) -> list[tuple[str, Section]]:
    if extra is None:
        return []
    return list(extra.items()) if isinstance(extra, Mapping) else [tuple(s) for s in extra]


def _paragraphs(text: str) -> list[tuple[bool, str]]:
    """Split text on blank lines; (preformatted, paragraph): a paragraph with an indented line
    (code, JSON, an aligned table) keeps its layout."""
    out = []
    for para in str(text).strip("\n").split("\n\n"):
        lines = para.split("\n")
        out.append((any(line[:1] in (" ", "\t") for line in lines), para))
    return out


def _text_html(text: str) -> str:
    """Plain text -> HTML: <pre> for preformatted paragraphs, else <p> with line breaks."""
    return "\n".join(
        f"<pre>{html.escape(para)}</pre>" if pre else "<p>" + html.escape(para).replace("\n", "<br>\n") + "</p>"
        for pre, para in _paragraphs(text)
    )


def _text_md(text: str) -> str:
    """Plain text -> markdown: preformatted paragraphs fenced as code, the rest as is."""
    return "\n\n".join(f"```\n{para}\n```" if pre else para for pre, para in _paragraphs(text))


def write_report(
    out_dir: str | os.PathLike,
    title: str,
    metrics_rows: Sequence[dict],
    images: Mapping[str, Sequence[Image.Image]] | None = None,
    prompts: Sequence[str] | None = None,
    plots: Mapping[str, str | os.PathLike] | None = None,
    extra_sections: Mapping[str, Section] | Sequence[tuple[str, Section]] | None = None,
    intro: str | None = None,
    columns: Sequence[str] | None = None,
    max_grid_rows: int = 16,
    embed_images: bool = False,
) -> tuple[Path, Path]:
    """Write `report.html` and `report.md` in `out_dir`; returns their paths. A numbered-step
    orchestration: 1 the metrics table, 2 the sample grid, 3 plots, 4 extra sections, then both pages.

    `metrics_rows`: one dict per model, e.g. {"model": "teacher", "alignment": 0.93, ...}; the
    table's columns are the keys in order of first appearance (or `columns`).
    `images`: model name -> its images, every list for the same `prompts` and seeds, drawn
    side by side in `samples.png` (at most `max_grid_rows` prompts).
    `plots`: caption -> PNG path (e.g. from `plot_bars` / `plot_loss_curves`).
    `extra_sections`: title -> text (paragraphs split by blank lines; a paragraph with indented
    lines, such as `json.dumps(settings, indent=2)`, is kept preformatted) or a list of row dicts
    (drawn as a table); given as a dict or a list of (title, body) pairs, in order.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    out_dir = out_dir.resolve()
    md: list[str] = [f"# {title}", ""]
    body: list[str] = [f"<h1>{html.escape(title)}</h1>"]
    if intro:
        md += [_text_md(intro), ""]
        body.append(_text_html(intro))

    # 1. the metrics table
    md += ["## Metrics", "", markdown_table(metrics_rows, columns), ""]
    body += ["<h2>Metrics</h2>", html_table(metrics_rows, columns)]

    # 2. the side-by-side sample grid, same prompts and seeds per column
    if images:
        grid_path = out_dir / "samples.png"
        grid = compare_grid(images, prompts, max_rows=max_grid_rows)
        with atomic_path(grid_path) as tmp:
            grid.save(tmp, format="PNG")
        caption = f"Samples: one column per model ({', '.join(images)}), one row per prompt, same seeds."
        md += ["## Samples", "", f"![samples]({_rel(grid_path, out_dir)})", "", caption, ""]
        body += [
            "<h2>Samples</h2>",
            f'<figure><img class="samples" src="{_img_src(grid_path, out_dir, embed_images)}" alt="samples">'
            f"<figcaption>{html.escape(caption)}</figcaption></figure>",
        ]
        if prompts is not None:
            shown = list(prompts)[:max_grid_rows]
            md += ["Prompts:", ""] + [f"{i + 1}. {p}" for i, p in enumerate(shown)] + [""]
            body.append("<ol>" + "".join(f"<li>{html.escape(p)}</li>" for p in shown) + "</ol>")

    # 3. plots
    if plots:
        md += ["## Plots", ""]
        body.append("<h2>Plots</h2>")
        for i, (name, src) in enumerate(plots.items()):
            path = _place_plot(name, src, out_dir, i)
            md += [f"### {name}", "", f"![{name}]({_rel(path, out_dir)})", ""]
            body.append(
                f'<figure><img src="{_img_src(path, out_dir, embed_images)}" alt="{html.escape(name)}">'
                f"<figcaption>{html.escape(name)}</figcaption></figure>"
            )

    # 4. extra sections: text or tables
    for name, content in _sections(extra_sections):
        md += [f"## {name}", ""]
        body.append(f"<h2>{html.escape(name)}</h2>")
        if isinstance(content, str):
            md += [_text_md(content), ""]
            body.append(_text_html(content))
        else:
            md += [markdown_table(list(content)), ""]
            body.append(html_table(list(content)))

    page = (
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
        f"<title>{html.escape(title)}</title>\n<style>{CSS}</style>\n</head>\n<body>\n"
        + "\n".join(body)
        + "\n</body>\n</html>\n"
    )
    html_path = atomic_write(out_dir / "report.html", page)
    md_path = atomic_write(out_dir / "report.md", "\n".join(md).rstrip() + "\n")
    return html_path, md_path
