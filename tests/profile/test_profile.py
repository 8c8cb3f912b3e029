"""profile_unet: rows, shares, identities, JSON, settings validation."""

import json

import pytest
import torch

from slimdiff.profile import ProfileResult, ProfileSettings, profile_unet
from slimdiff.profile.report import make_table, plot
from slimdiff.unet import SlimUNet2DConditionModel


def test_params_per_unit_sum_to_blocks_and_total(unet, profile):
    assert profile.total.params == sum(p.numel() for p in unet.parameters())
    for b in profile.blocks:
        assert b.params == sum(r.params for r in profile.units if r.block == b.name)
    stem = sum(sum(p.numel() for p in getattr(unet, m).parameters()) for m in ("conv_in", "time_embedding", "conv_norm_out", "conv_out"))
    assert profile.other.params == stem
    assert sum(b.params for b in profile.blocks) + profile.other.params == profile.total.params


def test_flops_blocks_plus_other_equal_total(profile):
    assert sum(b.flops for b in profile.blocks) + profile.other.flops == profile.total.flops
    assert profile.other.flops > 0  # conv_in, time embedding, conv_out


@pytest.mark.parametrize("what", ["params", "flops", "latency"])
@pytest.mark.parametrize("by", ["units", "blocks", "kinds"])
def test_shares_sum_to_one(profile, what, by):
    rows = getattr(profile, by) + [profile.other]
    assert sum(getattr(r, f"{what}_share") for r in rows) == pytest.approx(1.0, abs=1e-9)
    assert getattr(profile.total, f"{what}_share") == pytest.approx(1.0)


def test_json_has_expected_keys_and_round_trips(profile, fast, tmp_path):
    path = tmp_path / "p.json"
    profile.save_json(path)
    d = json.loads(path.read_text())
    assert set(d) >= {"model", "settings", "units", "blocks", "other", "total"}
    for key in ("resolution", "latent_size", "batch", "dtype", "threads", "device", "device_name", "warmup", "repeats"):
        assert key in d["settings"]
    assert d["settings"]["threads"] == 1 and d["settings"]["latent_size"] == 8
    unit = d["units"][0]
    for key in ("name", "kind", "block", "params", "flops", "latency_ms", "params_share", "flops_share", "latency_share", "signature"):
        assert key in unit
    assert len(unit["latency_samples_ms"]) == fast["repeats"]
    assert [b["name"] for b in d["blocks"]] == ["down.0", "down.1", "down.2", "down.3", "mid", "up.0", "up.1", "up.2", "up.3"]
    assert ProfileResult.from_dict(d).to_dict() == profile.to_dict()


def test_slim_model_profiles_like_its_diffusers_original(unet, profile, fast):
    slim = SlimUNet2DConditionModel.from_diffusers(unet)
    result = profile_unet(slim, ProfileSettings(**fast, measure_latency=False))
    assert [r.name for r in result.units] == [r.name for r in profile.units]
    assert [(r.params, r.flops, r.signature) for r in result.units] == [(r.params, r.flops, r.signature) for r in profile.units]
    assert result.total.flops == profile.total.flops and result.total.latency_ms is None


def test_table_and_plot(profile, tmp_path):
    assert make_table(profile, "block").row_count == len(profile.blocks) + 2
    assert make_table(profile, "unit").row_count == len(profile.units) + 2
    plot(profile, tmp_path / "p.png", by="unit")
    assert (tmp_path / "p.png").read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(ValueError, match="by must be one of"):
        make_table(profile, "layer")


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(dtype="float64"), "dtype 'float64' is not supported"),
        (dict(resolution=500), "not a multiple of vae_scale_factor"),
        (dict(repeats=0), "repeats must be >= 1"),
        (dict(clock="cpu"), "clock 'cpu' measures process CPU time"),
        (dict(clock="gpu"), "clock 'gpu' is not one of"),
    ],
)
def test_settings_are_validated(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ProfileSettings(**kwargs)


def test_model_placement_and_latent_size_are_checked(unet):
    with pytest.raises(ValueError, match="call model.to"):
        profile_unet(unet, ProfileSettings(latent_size=8, dtype="bfloat16", measure_latency=False))
    with pytest.raises(ValueError, match="latent size 12 is not a multiple of 8"):
        profile_unet(unet, ProfileSettings(latent_size=12, measure_latency=False))
    assert torch.get_num_threads() >= 1


def test_cpu_clock_profile(unet, fast):
    result = profile_unet(unet, ProfileSettings(**fast, clock="cpu"))
    assert result.settings["clock"] == "cpu"
    assert all(r.latency_ms > 0 for r in result.units) and result.total.latency_ms > 0
