"""Loading, saving, pipelines and the `units` / `prune` commands."""

import json

import pytest
import torch
from diffusers import StableDiffusionPipeline, UNet2DConditionModel

from slimdiff.cli import main
from slimdiff.testing import tiny_pipeline
from slimdiff.unet import SlimUNet2DConditionModel, insert_unit, load_unet, remove_units, save_student, save_unet
from slimdiff.sample import load_pipeline


@pytest.fixture(scope="module")
def pipe_dir(tmp_path_factory):
    return tiny_pipeline(tmp_path_factory.mktemp("pipe") / "pipe")


def test_save_load_round_trips(unet, inputs, tmp_path, run):
    plain = remove_units(unet, ["mid"])  # expressible: mid_block_type=None
    odd = insert_unit(unet, "mid.attn", "mid.attn")  # not expressible
    for student, cls in ((plain, UNet2DConditionModel), (odd, SlimUNet2DConditionModel)):
        out = tmp_path / cls.__name__
        save_unet(student, out)
        assert json.loads((out / "config.json").read_text())["_class_name"] == cls.__name__
        loaded = load_unet(out)
        assert isinstance(loaded, cls) and not loaded.training
        assert torch.equal(run(loaded, inputs), run(student, inputs))
    direct = SlimUNet2DConditionModel.from_pretrained(tmp_path / "SlimUNet2DConditionModel")
    assert direct.config.blocks == odd.config.blocks


def test_load_errors(tmp_path):
    with pytest.raises(ValueError, match="Hub id.*download"):
        load_unet("runwayml/stable-diffusion-v1-5")
    with pytest.raises(ValueError, match="built-ins: .*sd15-arch"):
        load_unet("sd99-arch")
    with pytest.raises(FileNotFoundError, match="neither a diffusers pipeline"):
        load_unet(tmp_path)


def test_pipeline_with_slim_unet(pipe_dir, tmp_path):
    teacher = load_unet(pipe_dir)
    assert isinstance(teacher, UNet2DConditionModel)
    student = insert_unit(remove_units(teacher, ["up.3.layer.1"]), "up.1.layer.0.attn", "up.1.layer.0.attn")
    pipe = load_pipeline(pipe_dir, unet=student)
    kw = dict(num_inference_steps=1, guidance_scale=2.0, output_type="np", generator=torch.Generator().manual_seed(0))
    image = pipe("a red circle", **kw).images
    assert image.shape[-1] == 3 and image.min() >= 0
    written = save_student(student, tmp_path / "out", source=pipe_dir, recipe={"edits": "test"})
    index = json.loads((tmp_path / "out/pipeline/model_index.json").read_text())
    assert index["unet"] == ["slimdiff", "SlimUNet2DConditionModel"] == written["unet_class"]
    reloaded = StableDiffusionPipeline.from_pretrained(tmp_path / "out/pipeline")
    assert isinstance(reloaded.unet, SlimUNet2DConditionModel)
    again = reloaded("a red circle", **{**kw, "generator": torch.Generator().manual_seed(0)}).images
    assert abs(again - image).max() < 1e-4
    recipe = json.loads((tmp_path / "out/recipe.json").read_text())
    assert recipe["teacher"] == str(pipe_dir) and recipe["edits"] == "test" and "slimdiff_version" in recipe
    assert recipe["inheritance"]["up.1.layer.0.attn_1.proj_in.weight"] == "up_blocks.1.attentions.0.proj_in.weight"


def test_cli_units_and_prune(pipe_dir, tmp_path, capsys):
    assert main(["units", str(pipe_dir)]) == 0
    out = capsys.readouterr().out
    assert "up.0.layer.2.resnet" in out and "down.2.downsample" in out and "44 units" in out
    assert main(["prune", "--list-presets"]) == 0
    assert "bk-tiny" in capsys.readouterr().out
    assert main(["prune", str(pipe_dir), "--preset", "bk-small", "--out", str(tmp_path / "bk")]) == 0
    recipe = json.loads((tmp_path / "bk/recipe.json").read_text())
    assert recipe["preset"] == "bk-small" and recipe["unet_class"] == ["diffusers", "UNet2DConditionModel"]
    assert recipe["inheritance"]["up_blocks.0.resnets.1.conv1.weight"] == "up_blocks.0.resnets.2.conv1.weight"
    index = json.loads((tmp_path / "bk/pipeline/model_index.json").read_text())
    assert index["unet"] == ["diffusers", "UNet2DConditionModel"]
    assert UNet2DConditionModel.from_pretrained(tmp_path / "bk/pipeline/unet").config.mid_block_type is None
    assert main(["prune", str(pipe_dir), "--remove", "down.1.layer.0.resnet", "--out", str(tmp_path / "x")]) == 2
    assert "cannot remove down.1.layer.0.resnet" in capsys.readouterr().err
