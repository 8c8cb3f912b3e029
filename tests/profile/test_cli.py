"""`slimdiff profile` on a tiny pipeline directory writes a table, JSON, PNG and a LUT."""

import json

import pytest

from slimdiff.cli import main
from slimdiff.profile import LatencyLUT
from slimdiff.profile.profiler import vae_scale_factor_of
from slimdiff.testing import tiny_pipeline
from slimdiff.unet import load_unet


def test_cli_profile_writes_json_plot_and_lut(tmp_path, capsys):
    pipe = tiny_pipeline(tmp_path / "pipe")
    assert vae_scale_factor_of(pipe) == 8  # the tiny VAE has 4 levels: 64px images -> 8x8 latents
    out = tmp_path / "out"
    code = main(
        ["profile", str(pipe), "--resolution", "64", "--threads", "1", "--repeats", "2", "--by", "unit",
         "--json", str(out / "p.json"), "--plot", str(out / "p.png"), "--lut", str(out / "lut.json")]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert "up.3.layer.2.attn" in printed and "other" in printed
    d = json.loads((out / "p.json").read_text())
    assert d["settings"]["latent_size"] == 8 and d["settings"]["vae_scale_factor"] == 8
    assert d["settings"]["threads"] == 1 and d["settings"]["repeats"] == 2
    assert (out / "p.png").read_bytes()[:4] == b"\x89PNG"
    lut = LatencyLUT.load(out / "lut.json")
    assert lut.predict(load_unet(pipe)) == pytest.approx(d["total"]["latency_ms"])


def test_cli_profile_errors_name_the_value(tmp_path, capsys):
    pipe = tiny_pipeline(tmp_path / "pipe")
    assert main(["profile", str(pipe), "--resolution", "15", "--no-latency"]) == 2
    assert "resolution 15 is not a multiple of vae_scale_factor 8" in capsys.readouterr().err
    assert main(["profile", str(pipe), "--resolution", "64", "--no-latency", "--lut", "x.json"]) == 2
