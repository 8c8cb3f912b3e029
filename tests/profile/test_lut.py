"""LatencyLUT: save/load, predict vs measured, unit removal, missing signatures, extend."""

import pytest

from slimdiff.profile import LatencyLUT, LUTMissError, ProfileSettings
from slimdiff.profile.latency import make_unet_inputs, median, num_threads, time_model
from slimdiff.unet import SlimUNet2DConditionModel, remove_units


@pytest.fixture(scope="module")
def lut(unet):
    # one thread, 5 repeats, latent 8 (the `fast` settings of conftest.py)
    return LatencyLUT.build(unet, ProfileSettings(latent_size=8, threads=1, warmup=2, repeats=5))


def test_build_deduplicates_signatures(lut, profile):
    assert len(lut) == len({r.signature for r in profile.units}) < len(profile.units)
    assert len(lut.overhead) == 1


def test_save_load_round_trip(lut, unet, tmp_path):
    lut.save(tmp_path / "lut.json")
    again = LatencyLUT.load(tmp_path / "lut.json")
    assert again.units == lut.units and again.overhead == lut.overhead
    assert again.settings == lut.settings
    assert again.predict(unet) == lut.predict(unet)


def test_predict_is_close_to_a_fresh_measurement(lut, unet):
    inputs = make_unet_inputs(unet, 8, 16)
    with num_threads(1):
        measured = median(time_model(unet, inputs, warmup=2, repeats=7))
    assert 0.5 < lut.predict(unet) / measured < 2.0  # tiny models on a shared machine are noisy


def test_from_profile_predicts_the_profiled_whole(profile, unet):
    lut = LatencyLUT.from_profile(profile)
    assert lut.predict(unet) == pytest.approx(profile.total.latency_ms)


def test_removing_a_unit_lowers_the_prediction_by_its_entry(lut, unet):
    slim = SlimUNet2DConditionModel.from_diffusers(unet)
    assert lut.predict(slim) == pytest.approx(lut.predict(unet))  # same structure, same signatures
    entry = lut.breakdown(slim)["down.1.layer.1.attn"]
    student = remove_units(slim, ["down.1.layer.1.attn"])
    assert lut.predict(student) == pytest.approx(lut.predict(slim) - entry)


def test_missing_signature_is_named_and_extend_measures_it(lut, unet):
    # a table without the entry of down.3.layer.0.resnet (16 -> 32 channels, the only one)
    sig = next(k for k in lut.units if k.startswith("resnet") and " 16->32 " in k)
    partial = LatencyLUT(lut.settings)
    partial.units = {k: v for k, v in lut.units.items() if k != sig}
    partial.overhead = dict(lut.overhead)
    with pytest.raises(LUTMissError, match="down.3.layer.0.resnet: resnet ResnetBlock2D 16->32 @1x1"):
        partial.predict(unet)
    assert partial.extend(unet) == [sig]
    assert set(partial.units) == set(lut.units)
    assert partial.extend(unet) == []  # nothing left to measure
    partial.predict(unet)
