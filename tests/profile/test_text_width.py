"""One text-width helper and one timing stack, on diffusers and slim U-Nets (issue 12 item 4)."""

import pytest
import torch

from slimdiff.profile import LatencyLUT, ProfileSettings
from slimdiff.testing import TINY_CROSS_ATTENTION_DIM, tiny_unet
from slimdiff.unet import SlimUNet2DConditionModel, apply_preset, remove_units, text_width, text_widths, to_slim
from slimdiff.unet import load_unet, save_unet
from slimdiff.unet.access import DEFAULT_TEXT_WIDTH


@pytest.fixture(scope="module")
def models():
    teacher = tiny_unet(seed=0)
    snap, _ = apply_preset(teacher, "snapfusion")  # a SlimUNet2DConditionModel: no config.cross_attention_dim
    return teacher, to_slim(teacher), snap


def test_text_width_of_diffusers_and_slim_models(models):
    teacher, slim, snap = models
    assert type(snap).__name__ == "SlimUNet2DConditionModel"
    snap_says = SlimUNet2DConditionModel.from_structure(snap.config.blocks, **{**snap.base_config(),
                                                                              "cross_attention_dim": 32})
    assert text_width(snap_says) == TINY_CROSS_ATTENTION_DIM  # the units' width, not the config's
    for model in models:
        assert text_widths(model) == {TINY_CROSS_ATTENTION_DIM} and text_width(model) == TINY_CROSS_ATTENTION_DIM
    no_attn = remove_units(slim, [u.name for u in slim.units() if u.kind == "attn"])
    # no unit reads the text: the width the model was made for (issue 19 item 7), else the default
    assert text_widths(no_attn) == set() and text_width(no_attn) == TINY_CROSS_ATTENTION_DIM
    unsaid = SlimUNet2DConditionModel.from_structure(no_attn.config.blocks, **{**no_attn.base_config(),
                                                                              "cross_attention_dim": None})
    assert text_width(unsaid) == DEFAULT_TEXT_WIDTH
    two = to_slim(teacher)
    kwargs = two.config.blocks["down"][0]["layers"][0][1]["kwargs"]  # a unit reading another width
    kwargs["cross_attention_dim"] = 32
    with pytest.raises(ValueError, match=r"different widths \[16, 32\]"):
        text_width(two)


def test_every_consumer_reads_the_slim_width(models):
    from slimdiff.train.parts import check_compatible
    from slimdiff.eval import unet_latency
    from slimdiff.profile import ProfileSettings, model_latencies, profile_unet
    from slimdiff.prune.calibration import CalibrationConfig, random_calibration

    teacher, _, snap = models
    assert unet_latency(snap, batch_size=2, seq_len=4, repeats=1, warmup=0) > 0
    assert set(model_latencies({"t": teacher, "s": snap}, 8, text_width(snap), repeats=1, warmup=0)) == {"t", "s"}
    calib = random_calibration(snap, CalibrationConfig(size=2, batch_size=2), seq_len=3)
    assert calib.encoder_hidden_states.shape == (2, 3, TINY_CROSS_ATTENTION_DIM)
    check_compatible(teacher, snap, TINY_CROSS_ATTENTION_DIM, 4)
    with pytest.raises(ValueError, match="does not match the text encoder"):
        check_compatible(teacher, snap, 8, 4)
    prof = profile_unet(snap, ProfileSettings(latent_size=8, measure_latency=False, context_length=4))
    assert prof.total.params == sum(p.numel() for p in snap.parameters())
    with torch.no_grad():
        assert snap(torch.zeros(1, 4, 8, 8), 1, encoder_hidden_states=torch.zeros(1, 4, 16)).sample.shape == (1, 4, 8, 8)


def test_a_candidate_without_attention_keeps_the_teachers_text_signature(models, tmp_path):
    """Issue 19 item 7: LAPTOP's latency budget priced a candidate with no attention left at
    ctx=...x768 ("signature ... missing from the latency table"); its width is the teacher's."""
    teacher, slim, _ = models
    lut = LatencyLUT.build(teacher, ProfileSettings(latent_size=8, threads=1, warmup=0, repeats=1, context_length=4))
    no_attn = remove_units(slim, [u.name for u in slim.units() if u.kind == "attn"])
    assert lut.predict(no_attn) > 0  # every unit and the stem found in the teacher's table
    save_unet(no_attn, tmp_path / "s")  # the mid block without attention: slimdiff's own class
    saved = load_unet(tmp_path / "s")
    assert saved.config.cross_attention_dim == TINY_CROSS_ATTENTION_DIM and lut.predict(saved) > 0
