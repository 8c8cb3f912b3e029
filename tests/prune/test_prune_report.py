"""The search report: layout of unit names, the markdown table, the plot."""

from slimdiff.prune.report import layout, plot_unit_scores, score_table, split_name


def test_layout_puts_blocks_on_x_and_unit_positions_on_y():
    names = ["down.0.layer.0.resnet", "down.0.layer.0.attn", "down.0.downsample", "mid.resnet.0", "mid.attn",
             "up.0.layer.2.resnet", "up.1.layer.0.attn.1"]
    assert split_name("mid.resnet.0") == ("mid", "resnet.0")
    blocks, rows = layout(names)
    assert blocks == ["down.0", "mid", "up.0", "up.1"]
    assert rows == ["layer.0.resnet", "layer.0.attn", "layer.2.resnet", "resnet.0", "attn", "downsample",
                    "layer.0.attn.1"]


def test_score_table_ranks_and_marks_removed(tmp_path):
    table = score_table({"a": 0.5, "b": 0.1}, removed=["b"], costs={"a": 10, "b": 20}, cost_name="params")
    assert table.splitlines() == [
        "| unit | kind | score | rank | params | removed |",
        "|---|---|---|---|---|---|",
        "| a |  | 0.5 | 2 | 10 |  |",
        "| b |  | 0.1 | 1 | 20 | yes |",
    ]
    png = plot_unit_scores(tmp_path / "s.png", {"down.0.layer.0.attn": 1e-4, "mid.attn": 1.0}, ["mid.attn"],
                           ["down.0.layer.0.resnet", "down.0.layer.0.attn", "mid.attn"])
    assert png.read_bytes()[:4] == b"\x89PNG"
