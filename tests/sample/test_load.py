"""`slimdiff.sample.load`: a pipeline as its model_index class, parts swapped, defaults read once."""

import json

import numpy as np
import pytest
import torch

from slimdiff.io import read_json
from slimdiff.recipe import write_recipe
from slimdiff.sample import generate, is_toy_pipeline, resolve_pipeline, sampling_defaults
from slimdiff.sample.load import FIELD_GUIDANCE, FIELD_STEPS, TOY_GUIDANCE, TOY_STEPS, SamplingDefaults, fill_sampling
from slimdiff.testing import tiny_pipeline, tiny_unet
from slimdiff.unet import save_pipeline_with_unet

STEP_SAMPLING = {"steps": 4, "guidance": 3.0, "scheduler": "DDIMScheduler", "timestep_spacing": "trailing",
                 "prediction_type": "v_prediction", "timesteps": [999, 749, 499, 249], "guidance_embedded": False,
                 "unet_calls_per_step": 2}


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return tiny_pipeline(tmp_path_factory.mktemp("tiny") / "pipe", seed=0)


def test_sdxl_directory_loads_as_its_class_and_samples(tiny_sdxl_dir):
    from diffusers import StableDiffusionXLPipeline

    pipe = resolve_pipeline(tiny_sdxl_dir)
    assert type(pipe) is StableDiffusionXLPipeline and not is_toy_pipeline(pipe)
    assert sampling_defaults(pipe) == SamplingDefaults(FIELD_STEPS, FIELD_GUIDANCE, origin="field")
    a = generate(pipe, ["a red circle", "a blue square"], steps=2, seed=0, progress=False)
    b = generate(pipe, ["a blue square"], steps=2, seed=1, progress=False)
    assert a[0].size == (32, 32) and np.array_equal(np.asarray(a[1]), np.asarray(b[0]))  # image i: seed + i


def test_saving_with_a_part_swapped_keeps_every_component(tiny_sdxl_dir, tmp_path):
    from slimdiff.vae import save_pipeline_with_vae

    index = read_json(tiny_sdxl_dir / "model_index.json")
    base = resolve_pipeline(tiny_sdxl_dir)
    out = save_pipeline_with_unet(tiny_sdxl_dir, base.unet, tmp_path / "unet-swapped")
    assert {"text_encoder_2", "tokenizer_2"} <= {p.name for p in out.iterdir()}
    assert read_json(out / "model_index.json") == index  # a plain U-Net again: the same index
    out = save_pipeline_with_vae(tiny_sdxl_dir, base.vae, tmp_path / "vae-swapped")
    assert {"text_encoder_2", "tokenizer_2"} <= {p.name for p in out.iterdir()}
    again = resolve_pipeline(out)
    for name in ("text_encoder_2", "unet", "vae"):
        mine, theirs = getattr(again, name).state_dict(), getattr(base, name).state_dict()
        assert all(torch.equal(mine[k], theirs[k]) for k in theirs), name


def test_sampling_defaults_are_read_once_from_the_recipe(tiny_dir, tmp_path):
    assert fill_sampling(resolve_pipeline(tiny_dir), None, None) == (TOY_STEPS, TOY_GUIDANCE)  # the toy world's
    student = save_pipeline_with_unet(tiny_dir, tiny_unet(seed=1), tmp_path / "step" / "pipeline")
    write_recipe(student, {"teacher": str(tiny_dir), "sampling": STEP_SAMPLING})
    pipe = resolve_pipeline(tmp_path / "step")  # a distill output: its pipeline/ and that recipe
    assert sampling_defaults(pipe) == SamplingDefaults(4, 3.0, "DDIMScheduler", False, 2, "recipe")
    assert fill_sampling(pipe, None, 5.0) == (4, 5.0) and is_toy_pipeline(pipe)
    (student / "recipe.json").unlink()  # read at load, never again (nothing re-opens it later)
    assert sampling_defaults(pipe).steps == 4
    pipe.unet = tiny_unet(seed=3)  # another U-Net put in its place: the record was the saved one's
    assert sampling_defaults(pipe).origin == "world"
    (student / "recipe.json").write_text(json.dumps({"sampling": {**STEP_SAMPLING, "steps": 0}}))  # damaged
    with pytest.raises(ValueError, match="integer steps >= 1"):
        resolve_pipeline(student)


def test_a_unet_of_another_kind_loaded_in_its_place_drops_the_record(tiny_dir, tmp_path):
    from diffusers import UNet2DConditionModel

    from slimdiff.sample import load_pipeline
    from slimdiff.testing import tiny_unet_config

    student = save_pipeline_with_unet(tiny_dir, tiny_unet(seed=1), tmp_path / "pipe")
    write_recipe(student, {"sampling": STEP_SAMPLING})
    assert sampling_defaults(load_pipeline(student, unet=tiny_unet(seed=2))).origin == "recipe"  # same kind
    embedded = UNet2DConditionModel(**{**tiny_unet_config(), "time_cond_proj_dim": 8})
    assert sampling_defaults(load_pipeline(student, unet=embedded)).origin == "world"


def test_a_pipeline_class_diffusers_lacks_is_one_line(tiny_dir, tmp_path):
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(tiny_dir, bad)
    index = read_json(bad / "model_index.json")
    (bad / "model_index.json").write_text(json.dumps({**index, "_class_name": "NoSuchPipeline"}))
    with pytest.raises(ValueError, match="cannot load pipeline class 'NoSuchPipeline'"):
        resolve_pipeline(bad)
