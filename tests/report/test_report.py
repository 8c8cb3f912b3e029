"""Report writer, tables, grids and plots."""

import json

import pytest
from PIL import Image

from slimdiff.report import (
    compare_grid,
    format_value,
    make_grid,
    markdown_table,
    plot_bars,
    plot_loss_curves,
    text_table,
    write_report,
)
from slimdiff.report.plots import loss_keys

ROWS = [
    {"model": "teacher", "alignment": 0.9312, "judge_fid": 3.14159, "params": 1234567},
    {"model": "bk-small", "alignment": 0.8, "params": 812345, "unet_latency_ms": 12.5},
]


def _solid(colour, size=(32, 32)):
    return Image.new("RGB", size, colour)


def test_format_value():
    assert [format_value(v) for v in (None, True, 1234567, 0.93123, 3.14159, 12345.6, "x")] == [
        "-", "yes", "1,234,567", "0.9312", "3.142", "12,346", "x"]


def test_markdown_table_exact():
    assert markdown_table(ROWS) == (
        "| model | alignment | judge_fid | params | unet_latency_ms |\n"
        "|:---|---:|---:|---:|---:|\n"
        "| teacher | 0.9312 | 3.142 | 1,234,567 | - |\n"
        "| bk-small | 0.8 | - | 812,345 | 12.5 |"
    )
    assert text_table(ROWS, columns=["model", "alignment"]).splitlines() == [
        "model     alignment", "--------  ---------", "teacher      0.9312", "bk-small        0.8"]


def test_make_grid_layout_and_label_checks():
    images = [_solid((255, 0, 0)), _solid((0, 255, 0)), _solid((0, 0, 255))]
    plain = make_grid(images, nrow=2, pad=2)
    assert plain.size == (2 + 2 * 34, 2 + 2 * 34)  # 2 columns, 2 rows of 32 px cells + padding
    assert plain.getpixel((2 + 5, 2 + 5)) == (255, 0, 0) and plain.getpixel((2 + 5, 36 + 5)) == (0, 0, 255)
    labelled = make_grid(images, nrow=3, labels=["red", "green", "blue"], cell_size=64,
                         row_labels=["row"], col_labels=["a", "b", "c"])
    assert labelled.width > 3 * 64 and labelled.height > 64
    with pytest.raises(ValueError, match="labels has 2 entries, expected 3"):
        make_grid(images, nrow=3, labels=["a", "b"])
    with pytest.raises(ValueError, match="row_labels has 1 entries, expected 2"):
        make_grid(images, nrow=2, row_labels=["a"])


def test_compare_grid_needs_the_same_prompts():
    a, b = [_solid((255, 0, 0))] * 2, [_solid((0, 0, 255))] * 2
    grid = compare_grid({"teacher": a, "student": b}, ["p1", "p2"], cell_size=32)
    assert grid.width > 2 * 32
    with pytest.raises(ValueError, match="same number of images"):
        compare_grid({"teacher": a, "student": b[:1]})


def test_plots(tmp_path):
    bars = plot_bars({"teacher": 41.2, "bk-small": 27.9}, "U-Net latency (ms)", tmp_path / "bars.png", title="t")
    log = tmp_path / "log.jsonl"
    records = [{"step": s, "loss": 1 / (s + 1), "loss_task": 0.5 / (s + 1), "lr": 1e-4} for s in range(20)]
    log.write_text("\n".join(json.dumps(r) for r in records) + "\n")
    curves = plot_loss_curves(log, tmp_path / "loss.png")
    for path in (bars, curves):
        with Image.open(path) as im:
            assert im.format == "PNG" and im.width > 200
    assert loss_keys(records) == ["loss", "loss_task"]
    assert loss_keys([{"step": 1, "task": 1.0, "kd_out": 2.0, "lr": 0.1}]) == ["task", "kd_out"]
    assert loss_keys([{"step": 1, "loss": 1.0, "loss_sas": 0.0}, {"step": 2, "loss": 0.5, "loss_sas": 0.0}]) == ["loss"]
    with pytest.raises(ValueError, match="'nope' is not in the log"):
        plot_loss_curves(records, tmp_path / "x.png", keys=["nope"])
    assert not list(tmp_path.glob(".*.tmp*"))  # atomic writes leave no temporaries


def test_write_report(tmp_path):
    out = tmp_path / "report"
    outside = plot_bars({"a": 1.0, "b": 2.0}, "ms", tmp_path / "latency.png")
    inside = plot_bars({"a": 1.0}, "ms", out / "inside.png")
    images = {"teacher": [_solid((255, 0, 0))] * 2, "distilled": [_solid((0, 0, 255))] * 2}
    html_path, md_path = write_report(
        out, "Demo <report>", ROWS, images=images, prompts=["a red circle", "a blue square"],
        plots={"Latency": outside, "Inside": inside},
        extra_sections={"Settings": "25 steps\n\nseed 0", "Profile": [{"unit": "down.0", "params": 10}],
                        "JSON": json.dumps({"steps": 25, "a": [1]}, indent=2)},
    )
    md, page = md_path.read_text(), html_path.read_text()
    assert markdown_table(ROWS) in md
    assert "| down.0 | 10 |" in md and "![samples](samples.png)" in md and "1. a red circle" in md
    assert "![Latency](plots/00_latency.png)" in md and "![Inside](inside.png)" in md
    assert (out / "samples.png").is_file() and (out / "plots" / "00_latency.png").is_file()
    assert "<title>Demo &lt;report&gt;</title>" in page
    assert "```\n{\n  \"steps\": 25," in md and "<pre>{\n  &quot;steps&quot;: 25," in page
    assert '<td class="num">0.9312</td>' in page and 'src="samples.png"' in page and "<p>seed 0</p>" in page
    embedded = write_report(tmp_path / "embedded", "t", ROWS, images=images, embed_images=True)[0].read_text()
    assert 'src="data:image/png;base64,' in embedded
    with pytest.raises(FileNotFoundError, match="plot 'missing'"):
        write_report(tmp_path / "bad", "t", ROWS, plots={"missing": tmp_path / "none.png"})
