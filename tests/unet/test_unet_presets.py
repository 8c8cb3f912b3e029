"""Presets: BK-SDM equals its own diffusers config; exports; SnapFusion topology; sd15 counts."""

import json

import pytest
import torch
from diffusers import UNet2DConditionModel

from slimdiff.unet import PRESETS, apply_preset, get_module, load_unet, save_unet, to_diffusers
from slimdiff.unet.builtins import SD15_CONFIG, SD21_BASE_CONFIG

CA, DOWN, CA_UP, UP = "CrossAttnDownBlock2D", "DownBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"
# BK-SDM's released diffusers configs (as changes to the teacher's), written independently of
# slimdiff's export code
BK_CHANGES = {
    "bk-base": dict(layers_per_block=1),
    "bk-small": dict(layers_per_block=1, mid_block_type=None),
    "bk-tiny": dict(layers_per_block=1, mid_block_type=None, block_out_channels=(8, 16, 32),
                    down_block_types=(CA, CA, CA), up_block_types=(CA_UP, CA_UP, CA_UP)),
}


def bk_source(name: str, preset: str) -> str:
    """BK-SDM's initialisation (METHODS.md section 2): kept down layer <- teacher layer 0; up
    layers <- teacher layers 0 and 2; Tiny: student up.k <- teacher up.k+1; rest by name."""
    parts = name.split(".")
    if parts[0] == "up_blocks":
        parts[1] = str(int(parts[1]) + (preset == "bk-tiny"))
        if parts[2] in ("resnets", "attentions"):
            parts[3] = {"0": "0", "1": "2"}[parts[3]]
    return ".".join(parts)


@pytest.mark.parametrize("preset", list(BK_CHANGES))
def test_bk_presets_equal_bk_sdm(unet, inputs, preset, tmp_path, run, tiny_config):
    student, info = apply_preset(unet, preset)
    teacher = unet.state_dict()
    ref = UNet2DConditionModel(**{**tiny_config, **BK_CHANGES[preset]}).eval()
    ref.load_state_dict({n: teacher[bk_source(n, preset)] for n in ref.state_dict()})
    expected = run(ref, inputs)
    assert (run(student, inputs) - expected).abs().max() <= 1e-5
    assert info["student_params"] == ref.num_parameters()
    # exported as a plain diffusers config, loadable without slimdiff
    assert to_diffusers(student) is not None
    kind = save_unet(student, tmp_path, recipe={"inheritance": student.inheritance})
    assert kind == ["diffusers", "UNet2DConditionModel"]
    plain = UNet2DConditionModel.from_pretrained(tmp_path).eval()
    assert (run(plain, inputs) - expected).abs().max() <= 1e-5
    recipe = json.loads((tmp_path / "recipe.json").read_text())
    assert recipe["inheritance"] == {n: bk_source(n, preset) for n in ref.state_dict()}  # in diffusers names


def test_snapfusion_topology(unet, inputs, tmp_path, run):
    student, info = apply_preset(unet, "snapfusion")
    units = student.units()
    count = lambda kind, pred: sum(u.kind == kind and pred(u) for u in units)  # noqa: E731
    # seed 001 Table 3, per stage: (cross-attention, resnets)
    stages = {"down.0": (0, 2), "down.1": (2, 2), "down.2": (2, 1), "up.1": (3, 2), "up.2": (6, 3), "up.3": (0, 3)}
    for block, (n_attn, n_res) in stages.items():
        in_block = lambda u: u.block == block  # noqa: E731
        assert (count("attn", in_block), count("resnet", in_block)) == (n_attn, n_res)
    deep = ("down.3", "mid", "up.0")
    assert count("resnet", lambda u: u.block in deep) == 4 and count("attn", lambda u: u.block in deep) == 1
    assert count("resnet", lambda u: True) == 17 and count("attn", lambda u: True) == 14
    assert not any(u.kind == "attn" and u.level == 0 for u in units)
    added = sum(p.numel() for k in range(3) for p in get_module(student, f"up.2.layer.{k}.attn.1").parameters())
    assert added == sum(p.numel() for k in range(3) for p in get_module(unet, f"up.2.layer.{k}.attn").parameters())
    # not a diffusers config: saved and reloaded as slimdiff's class
    assert to_diffusers(student) is None
    assert save_unet(student, tmp_path) == ["slimdiff", "SlimUNet2DConditionModel"]
    assert torch.equal(run(load_unet(tmp_path), inputs), run(student, inputs))


def test_preset_errors(unet):
    with pytest.raises(ValueError, match="unknown preset 'bk-huge'; valid: .*bk-base"):
        apply_preset(unet, "bk-huge")
    small = apply_preset(unet, "bk-base")[0]
    with pytest.raises(ValueError, match="SD-1.x/2.x U-Net topology"):
        apply_preset(small, "bk-small")


def _meta(config):
    with torch.device("meta"):
        return UNet2DConditionModel(**config)


def test_sd15_sd21_parameter_counts():
    # SD-1.5 UNet: 859,520,964 params; BK-SDM paper: Base 579.4M, Small 482.3M, Tiny 323.4M
    sd15 = _meta(SD15_CONFIG)
    assert sd15.num_parameters() == 859_520_964
    expected = {"bk-base": 579_384_964, "bk-small": 482_346_884, "bk-tiny": 323_384_964, "snapfusion": 664_583_684}
    assert set(expected) == {n for n, p in PRESETS.items() if p.teacher == "sd" and p.build is None}  # SDXL ones:
    # tests/unet/test_sdxl_presets.py; plug-in presets: tests/modules
    for name, n in expected.items():
        student, info = apply_preset(sd15, name)
        assert (info["teacher_params"], info["student_params"]) == (859_520_964, n)
        assert (to_diffusers(student) is not None) == name.startswith("bk-")
    sd21 = _meta(SD21_BASE_CONFIG)
    assert sd21.num_parameters() == 865_910_724
    assert apply_preset(sd21, "bk-small")[1]["student_params"] == 485_787_524
