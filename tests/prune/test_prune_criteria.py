"""Criteria and the calibration set, on the tiny U-Net."""

import copy

import pytest
import torch

from slimdiff.prune.calibration import CalibrationConfig, random_calibration, spread_timesteps
from slimdiff.prune.criteria import (
    CRITERIA,
    MagnitudeCriterion,
    OutputLossCriterion,
    RandomCriterion,
)
from slimdiff.unet import get_module


def test_spread_timesteps_cover_the_schedule():
    assert spread_timesteps(4, 1000).tolist() == [125, 375, 625, 875]
    assert spread_timesteps(1, 1000).tolist() == [500]


def test_calibration_is_a_function_of_the_seed(tiny_slim):
    cfg = CalibrationConfig(size=3, seed=7)
    a, b = random_calibration(tiny_slim, cfg, seq_len=5), random_calibration(tiny_slim, cfg, seq_len=5)
    assert torch.equal(a.sample, b.sample) and torch.equal(a.encoder_hidden_states, b.encoder_hidden_states)
    assert a.sample.shape == (3, 4, 8, 8) and a.encoder_hidden_states.shape == (3, 5, 16)
    c = random_calibration(tiny_slim, CalibrationConfig(size=3, seed=8), seq_len=5)
    assert not torch.equal(a.sample, c.sample)
    with pytest.raises(ValueError, match="calibration size must be >= 1, got 0"):
        CalibrationConfig(size=0)


def test_removable_units_exclude_channel_changers_and_samplers(tiny_candidates):
    cands = tiny_candidates
    assert "down.1.layer.0.resnet" not in cands  # 8 -> 16 channels: removal refused
    assert "down.0.downsample" not in cands and "up.0.upsample" not in cands
    assert "mid.attn" in cands and "up.3.layer.2.attn" in cands
    assert len(cands) == 34


def test_output_loss_of_a_zero_output_unit_is_zero(tiny_slim, tiny_calibration):
    model = copy.deepcopy(tiny_slim)
    with torch.no_grad():
        attn = get_module(model, "down.1.layer.1.attn")  # Transformer2DModel: out = proj_out(h) + x
        attn.proj_out.weight.zero_()
        attn.proj_out.bias.zero_()
        res = get_module(model, "down.2.layer.1.resnet")  # ResnetBlock2D: out = x + conv2(h)
        res.conv2.weight.zero_()
        res.conv2.bias.zero_()
    crit = OutputLossCriterion(tiny_calibration)
    names = ["down.1.layer.1.attn", "down.2.layer.1.resnet", "mid.attn"]
    scores = crit(model, names)
    assert scores["down.1.layer.1.attn"] == pytest.approx(0.0, abs=1e-12)
    assert scores["down.2.layer.1.resnet"] == pytest.approx(0.0, abs=1e-12)
    assert scores["mid.attn"] > 1e-8
    # removing nothing changes nothing; removing both identities together changes nothing
    assert crit.loss(model, []) == 0.0
    assert crit.loss(model, names[:2]) == pytest.approx(0.0, abs=1e-12)


def test_magnitude_on_hand_set_weights(tiny_slim):
    model = copy.deepcopy(tiny_slim)
    res = get_module(model, "down.0.layer.0.resnet")  # conv1, conv2: 8x8x3x3; time_emb_proj: 32 -> 8
    with torch.no_grad():
        for p in res.parameters():
            p.fill_(100.0)  # biases and norm scales: not counted
        res.conv1.weight.fill_(1.0)  # 576 weights
        res.conv2.weight.fill_(-2.0)  # 576 weights
        res.time_emb_proj.weight.fill_(0.25)  # 256 weights
    assert MagnitudeCriterion()(model, ["down.0.layer.0.resnet"]) == {"down.0.layer.0.resnet": 576 + 1152 + 64}
    mean = MagnitudeCriterion("mean")(model, ["down.0.layer.0.resnet"])["down.0.layer.0.resnet"]
    assert mean == pytest.approx(1792 / 1408)
    with pytest.raises(ValueError, match="reduction must be 'sum' or 'mean', got 'max'"):
        MagnitudeCriterion("max")


def test_random_criterion_is_seeded_and_order_free():
    a = RandomCriterion(3)(None, ["x", "y", "z"])
    b = RandomCriterion(3)(None, ["z", "x", "y"])
    assert a == b and list(b) == ["z", "x", "y"]
    assert RandomCriterion(4)(None, ["x", "y", "z"]) != a
    assert set(CRITERIA) == {"output", "magnitude", "random"}


def test_toy_calibration_on_a_tiny_pipeline(tmp_path):
    from diffusers import StableDiffusionPipeline

    from slimdiff.prune.calibration import toy_calibration
    from slimdiff.testing import tiny_pipeline

    pipe = StableDiffusionPipeline.from_pretrained(tiny_pipeline(tmp_path / "pipe"))
    cal = toy_calibration(pipe, CalibrationConfig(size=3, seed=1))
    assert cal.sample.shape == (3, 4, 8, 8) and cal.encoder_hidden_states.shape == (3, 24, 16)  # 24 toy tokens
    assert cal.timesteps.tolist() == [166, 500, 833]
    assert len(cal.prompts) == 3 and all(p.startswith("a ") for p in cal.prompts)
    again = toy_calibration(pipe, CalibrationConfig(size=3, seed=1))
    assert torch.equal(cal.sample, again.sample) and cal.prompts == again.prompts


def test_additivity_study_on_the_tiny_unet(tiny_slim, tiny_calibration, tmp_path):
    from slimdiff.prune.additivity import additivity_study, correlations, plot_additivity

    crit = OutputLossCriterion(tiny_calibration)
    cands = ["down.2.layer.1.attn", "mid.attn", "up.1.layer.2.attn", "up.3.layer.2.attn"]
    singles = {u: float(i + 1) for i, u in enumerate(cands)}  # given, so only the sets are evaluated
    res = additivity_study(tiny_slim, crit, cands, sizes=(2, 3), sets_per_size=2, seed=0, singles=singles)
    assert [r["size"] for r in res.rows] == [2, 2, 3, 3] and res.refused == 0
    assert all(r["predicted"] == sum(singles[u] for u in r["units"]) for r in res.rows)
    assert res.rows[0]["real"] == pytest.approx(crit.loss(tiny_slim, res.rows[0]["units"]))
    assert -1.0 <= res.pearson <= 1.0 and res.per_size[2]["n"] == 2
    assert plot_additivity(res, tmp_path / "add.png").stat().st_size > 0
    assert correlations([1, 2, 3, 4], [2, 4, 6, 9]) == (pytest.approx(11.5 / 133.75**0.5), 1.0)  # hand-computed
