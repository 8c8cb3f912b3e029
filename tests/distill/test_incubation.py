"""A-SDM two-stage recipe on the CLI: prune (+CondConv), distil, assemble, distil with the
teacher parts frozen by default (progressive incubation, A-SDM 2.2)."""

import json

import torch

from slimdiff.cli import main
from slimdiff.unet import load_unet


def _distill(teacher, student, out, *extra):
    return main(["distill", "--teacher", str(teacher), "--student", str(student), "--data", "toy", "--out", str(out),
                 "--toy-size", "4", "--max-steps", "2", "--batch-size", "2", "--checkpoint-every", "0",
                 "--lr", "1e-2", "--quiet", *extra])


def test_two_stage_recipe_freezes_the_teacher_parts(tiny_pipe, tmp_path, capsys):
    base, kd, m2, kd2 = (tmp_path / n for n in ("base", "base-kd", "m2", "m2-kd"))
    assert main(["prune", str(tiny_pipe), "--preset", "bk-base", "--condconv", "2", "--out", str(base)]) == 0
    assert json.loads((base / "recipe.json").read_text())["condconv"]["experts"] == 2
    assert _distill(tiny_pipe, base, kd) == 0
    assert main(["assemble", "--teacher", str(tiny_pipe), "--student", str(kd), "--take", "M2", "--out", str(m2)]) == 0
    assert "frozen by default in the next `slimdiff distill`: down.2, down.3, mid" in capsys.readouterr().out
    recipe = json.loads((m2 / "recipe.json").read_text())
    assert recipe["assemble"]["blocks"]["down.1"] == "student:down.1"
    assert recipe["inheritance"]["down.0.layer.0.resnet.conv1.weight.1"] == "down_blocks.0.resnets.1.conv1.weight"
    assert _distill(tiny_pipe, m2, kd2, "--lambda-mid", "1") == 0
    after = json.loads((kd2 / "recipe.json").read_text())
    assert after["distill"]["frozen"] == recipe["assemble"]["freeze"] and "distill_history" in after
    before_m, after_m = load_unet(m2).state_dict(), load_unet(kd2).state_dict()
    assert torch.equal(before_m["mid.attn.proj_in.weight"], after_m["mid.attn.proj_in.weight"])  # teacher: frozen
    assert torch.equal(before_m["time_embedding.linear_1.weight"], after_m["time_embedding.linear_1.weight"])
    assert not torch.equal(before_m["down.0.layer.0.resnet.conv1.weight.0"],
                           after_m["down.0.layer.0.resnet.conv1.weight.0"])  # student part: trained


def test_assemble_cli_bad_input_is_one_line_error(tiny_pipe, tmp_path, capsys):
    code = main(["assemble", "--teacher", str(tiny_pipe), "--student", str(tiny_pipe), "--take", "down.9",
                 "--out", str(tmp_path / "o")])
    assert code == 2
    err = capsys.readouterr().err
    assert "take names ['down.9'] are not positions of the teacher" in err and len(err.strip().splitlines()) == 1
