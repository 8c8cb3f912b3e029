"""DeepCache-style caching on every U-Net and scheduler; the --accelerate specs and their errors."""

import importlib

import pytest
import torch

from slimdiff.sample.cache import FeatureCache
from slimdiff.sample.peers import apply_accelerator, parse_accelerator
from slimdiff.testing import tiny_pipeline, tiny_unet
from slimdiff.unet import apply_preset
from slimdiff.sample import load_pipeline


@pytest.fixture(scope="module")
def pipe(tmp_path_factory):
    p = load_pipeline(str(tiny_pipeline(tmp_path_factory.mktemp("pipe") / "pipe", seed=0)))
    p.set_progress_bar_config(disable=True)
    return p


def images(pipe, steps=7):
    return pipe(["red circle", "blue square"], num_inference_steps=steps, guidance_scale=3.0, output_type="np",
                generator=[torch.Generator().manual_seed(i) for i in range(2)]).images


def test_interval_one_is_the_plain_unet_and_disable_restores_it(pipe):
    plain = images(pipe)
    with FeatureCache(pipe.unet, interval=1) as cache:
        assert (images(pipe) == plain).all() and cache.full_calls == 7
    assert "forward" not in pipe.unet.__dict__ and (images(pipe) == plain).all()


def test_cached_call_with_the_full_calls_inputs_gives_its_output_exactly():
    for unet in (tiny_unet(seed=0), apply_preset(tiny_unet(seed=0), "bk-small")[0]):  # with / without mid block
        x, text = torch.randn(1, 4, 8, 8), torch.randn(1, 3, 16)
        with torch.no_grad():
            full = unet(x, torch.tensor(500), text).sample
            with FeatureCache(unet, interval=3) as cache:
                outs = [unet(x, torch.tensor(t), text).sample for t in (500, 500, 400)]
                assert "mid.attn" not in cache.recomputed_units and cache.recomputed_units[-1].startswith("up.3")
        assert torch.equal(outs[0], full) and torch.equal(outs[1], full)  # call 2 is cached, same inputs
        assert not torch.equal(outs[2], unet(x, torch.tensor(400), text).sample)  # cached deep features


@pytest.mark.parametrize("scheduler", ["dpm", "euler", "pndm", "ddim"])
def test_every_scheduler_and_a_no_mid_block_student_run_cached(pipe, scheduler):
    from slimdiff.sample import scheduler_swapped

    student = apply_preset(pipe.unet, "bk-small")[0]  # SlimUNet2DConditionModel, no mid block
    own = pipe.unet
    pipe.unet = student
    try:
        with scheduler_swapped(pipe, scheduler):
            plain = images(pipe, steps=6)
            with FeatureCache(student, interval=3) as cache:
                cached = images(pipe, steps=6)
                images(pipe, steps=6)  # a second trajectory restarts the count
        calls = 6 if scheduler != "pndm" else 7  # PLMS takes one extra call at the start
        assert cache.full_calls == 2 * len(range(0, calls, 3))
        assert not (cached == plain).all()
    finally:
        pipe.unet = own


def test_equals_the_deepcache_package_on_a_unet_with_a_mid_block(pipe):
    pytest.importorskip("DeepCache")
    undo = apply_accelerator(pipe, "deepcache-lib:3")
    theirs = images(pipe)
    undo()
    undo = apply_accelerator(pipe, "deepcache:3")
    mine = images(pipe)
    undo()
    assert (mine == theirs).all()


def test_specs_and_one_line_errors(pipe, monkeypatch):
    assert parse_accelerator("deepcache:3") == ("deepcache", 3) and parse_accelerator("tome:0.5") == ("tome", 0.5)
    for spec, match in (("fast:2", "unknown; valid forms: deepcache:N, deepcache-lib:N, tome:R"),
                        ("tome:1.5", r"merge ratio R in \[0, 1\)"), ("deepcache:x", "cache interval N >= 1")):
        with pytest.raises(ValueError, match=match):
            parse_accelerator(spec)
    real = importlib.import_module

    def no_tomesd(name, *a, **k):
        if name == "tomesd":
            raise ImportError("No module named 'tomesd'")
        return real(name, *a, **k)

    monkeypatch.setattr(importlib, "import_module", no_tomesd)
    with pytest.raises(ValueError, match=r"needs the tomesd package: pip install 'slimdiff\[peers\]'") as e:
        apply_accelerator(pipe, "tome:0.5")
    assert "\n" not in str(e.value)
    monkeypatch.undo()
    own = pipe.unet
    pipe.unet = apply_preset(own, "bk-small")[0]
    try:
        with pytest.raises(ValueError, match="use deepcache:3 .slimdiff's own."):
            pytest.importorskip("DeepCache") and apply_accelerator(pipe, "deepcache-lib:3")
    finally:
        pipe.unet = own


def test_generate_and_evaluate_cli_take_accelerate(pipe, tmp_path, capsys):
    from slimdiff.cli import main

    path = str(pipe.config._name_or_path)
    assert main(["generate", path, "red circle", "--steps", "3", "--accelerate", "deepcache:2",
                 "--out", str(tmp_path / "img")]) == 0
    assert (tmp_path / "img" / "000_red_circle.png").is_file()
    for command in (["generate", path, "red circle"], ["evaluate", path]):
        capsys.readouterr()
        assert main(command + ["--accelerate", "tome"]) == 2
        err = capsys.readouterr().err.strip()
        assert "\n" not in err and "--accelerate 'tome': unknown; valid forms" in err
