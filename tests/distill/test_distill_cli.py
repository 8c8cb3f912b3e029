"""`slimdiff distill` on a tiny pipeline: every output written."""

import json

import pytest

from slimdiff.cli import main
from slimdiff.cli.distill import parse_feat_map


def test_cli_distill_writes_all_outputs(tiny_pipe, student_dir, tmp_path, capsys):
    out = tmp_path / "out"
    code = main(["distill", "--teacher", str(tiny_pipe), "--student", str(student_dir), "--data", "toy",
                 "--out", str(out), "--toy-size", "8", "--max-steps", "2", "--batch-size", "2",
                 "--checkpoint-every", "1", "--feat-loss", "normalized", "--lambda-mid", "0.5", "--quiet"])
    assert code == 0
    assert "distilled 2 steps" in capsys.readouterr().out
    for name in ("config.json", "diffusion_pytorch_model.safetensors", "recipe.json", "train_log.jsonl",
                 "loss_curves.png", "pipeline/model_index.json", "pipeline/unet/config.json",
                 "checkpoints/checkpoint-1/train_state.json"):
        assert (out / name).is_file(), name
    records = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2]
    assert {"loss", "loss_task", "loss_out", "loss_feat", "loss_mid", "lr", "grad_norm"} <= set(records[0])
    recipe = json.loads((out / "recipe.json").read_text())
    assert recipe["distill"]["config"]["feat_loss"] == "normalized"
    assert recipe["distill"]["feature_map"]["up.0"] == "up.0" and recipe["unet_class"][1] == "UNet2DConditionModel"


def test_cli_bad_input_is_one_line_error(tiny_pipe, tmp_path, capsys):
    code = main(["distill", "--teacher", str(tiny_pipe), "--student", str(tmp_path / "nope"), "--data", "toy",
                 "--out", str(tmp_path / "o")])
    assert code == 2
    assert "--student" in capsys.readouterr().err


def test_parse_feat_map():
    assert parse_feat_map(["up.0=up.1", "down.0"]) == {"up.0": "up.1", "down.0": "down.0"}
    with pytest.raises(ValueError, match="'up.0='"):
        parse_feat_map(["up.0="])
