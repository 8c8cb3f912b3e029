"""Multi-U-Net pipeline (A-SDM 2.4): k = 0 is the large U-Net's pipeline, switching, save/load, errors."""

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionPipeline

from slimdiff.cli import main
from slimdiff.sample import MultiUNetStableDiffusionPipeline, multi_unet_pipeline, parse_schedule
from slimdiff.testing import tiny_pipeline
from slimdiff.unet import apply_preset


@pytest.fixture(scope="module")
def pipe_dir(tmp_path_factory):
    return tiny_pipeline(tmp_path_factory.mktemp("pipe") / "pipe", seed=0)


@pytest.fixture(scope="module")
def parts(pipe_dir):
    large = StableDiffusionPipeline.from_pretrained(pipe_dir)
    small, _ = apply_preset(large.unet, "bk-small")
    return large, small.eval()


def _images(pipe, steps=3):
    out = pipe(prompt=["a red circle", "a blue square"], num_inference_steps=steps, guidance_scale=2.0,
               generator=[torch.Generator().manual_seed(i) for i in range(2)], output_type="np")
    return out.images


def _multi(large, small, k, total=3):
    comps = {n: large.components[n] for n in ("vae", "text_encoder", "tokenizer", "unet", "scheduler")}
    return MultiUNetStableDiffusionPipeline(**comps, unet_first=small, first_steps=k, total_steps=total)


def test_k_zero_is_the_large_unet_pipeline(parts):
    large, small = parts
    assert np.array_equal(_images(_multi(large, small, 0)), _images(large))


def test_small_runs_exactly_the_first_k_steps(parts):
    large, small = parts
    calls = []
    hooks = [m.register_forward_pre_hook(lambda m, a, tag=tag: calls.append(tag)) for tag, m in
             (("small", small), ("large", large.unet))]
    try:
        mixed = _images(_multi(large, small, 2))
    finally:
        for h in hooks:
            h.remove()
    assert calls == ["small", "small", "large"]
    assert not np.array_equal(mixed, _images(large))
    # all steps small == the small U-Net in the large one's pipeline
    comps = {n: large.components[n] for n in ("vae", "text_encoder", "tokenizer", "scheduler")}
    alone = StableDiffusionPipeline(**comps, unet=small, safety_checker=None, feature_extractor=None,
                                    requires_safety_checker=False)
    assert np.array_equal(_images(_multi(large, small, 3)), _images(alone))


def test_save_load_round_trip(parts, tmp_path):
    large, small = parts
    pipe = _multi(large, small, 1)
    pipe.save_pretrained(tmp_path / "s1")
    back = MultiUNetStableDiffusionPipeline.from_pretrained(tmp_path / "s1")
    assert type(back.unet_first).__name__ == "SlimUNet2DConditionModel" and back.config.first_steps == 1
    assert np.allclose(_images(back), _images(pipe), atol=1e-6)


def test_schedule_from_models(pipe_dir, parts, tmp_path):
    large, _ = parts
    pipe = multi_unet_pipeline(f"{pipe_dir}:0,{pipe_dir}:3")
    assert pipe.config.total_steps == 3 and np.array_equal(_images(pipe), _images(large))
    assert parse_schedule("runs/small:10, toy:15") == [("runs/small", 10), ("toy", 15)]


@pytest.mark.parametrize("spec, match", [
    ("small10,large:15", r"'small10' is not MODEL:STEPS"),
    ("a:1,b:2,c:3", "give one or two MODEL:STEPS entries, got 3"),
])
def test_bad_schedules(spec, match):
    with pytest.raises(ValueError, match=match):
        parse_schedule(spec)


def test_steps_must_sum_to_the_samplers(parts, pipe_dir, tmp_path, capsys):
    large, small = parts
    with pytest.raises(ValueError, match=r"runs 2 \+ 1 = 3 steps, but the sampler was asked for num_inference_steps=4"):
        _images(_multi(large, small, 2), steps=4)
    code = main(["generate", str(pipe_dir), "a red circle", "--unets", f"{pipe_dir}:2,{pipe_dir}:3", "--steps", "4",
                 "--out", str(tmp_path / "img")])
    err = capsys.readouterr().err
    assert code == 2 and "sums to 5 steps but the sampler runs 4" in err and len(err.strip().splitlines()) == 1
