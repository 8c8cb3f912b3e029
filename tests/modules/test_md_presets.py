"""MobileDiffusion presets `md`, `md-lite` (seed 001 Table 1): counts, parameters and FLOPs at sd15-arch 512 px
against the table, inheritance from the teacher, the toy-scaled twin, save/load, the feature-KD block map."""

import pytest
import torch
from diffusers import UNet2DConditionModel

from slimdiff.distill.features import FeatureRecorder, check_shapes, default_feature_map, resolve_block_map
from slimdiff.modules import mobilediffusion  # noqa: F401 (registers md, md-lite)
from slimdiff.profile import ProfileSettings, profile_unet
from slimdiff.testing import tiny_unet
from slimdiff.unet import PRESETS, SlimUNet2DConditionModel, apply_preset, list_units
from slimdiff.unet.builtins import SD15_CONFIG

# seed 001 Table 1: params (M), GFLOPs (one forward, 64x64 latent); SD-1.5 in the same table: 862M, 392 GFLOPs
TABLE = {"md": (386e6, 182e9), "md-lite": (278e6, 153e9)}
SD15_TABLE_GFLOPS = 392e9


def _meta_sd15():
    with torch.device("meta"):
        return UNet2DConditionModel(**SD15_CONFIG)


def _flops(model) -> int:
    settings = ProfileSettings(resolution=512, device="meta", measure_latency=False)
    return profile_unet(model.to("meta"), settings).total.flops


def _attention_layers(student) -> tuple[int, int]:
    """(self-attentions, cross-attentions) over every transformer block."""
    sa = ca = 0
    for u in list_units(student):
        if u.kind == "attn":
            for blk in student.get_submodule(u.name.replace("attn.", "attn_")).transformer_blocks:
                sa, ca = sa + (blk.attn1 is not None), ca + (blk.attn2 is not None)
    return sa, ca


def test_md_and_md_lite_at_sd15_arch_512px_match_the_table():
    assert {"md", "md-lite"} <= set(PRESETS)
    teacher = _meta_sd15()
    sd15 = _flops(teacher)
    assert sd15 == 803_273_441_280
    convention = SD15_TABLE_GFLOPS / sd15  # the table's FLOPs per slimdiff FLOP (2 x MACs): 0.488
    counts = {"md": (15, 18, 1024), "md-lite": (12, 15, 896)}
    for name, (params, gflops) in TABLE.items():
        student, info = apply_preset(teacher, name)
        units = list_units(student)
        assert sum(u.kind == "resnet" for u in units) == 11
        sa, ca, width = counts[name]
        assert _attention_layers(student) == (sa, ca)
        assert max(u.out_channels for u in units) == width
        assert not any(u.kind == "attn" and u.level == 0 for u in units)  # no transformer at 64x64
        assert abs(info["student_params"] / params - 1) < 0.05, (name, info["student_params"])
        assert abs(_flops(student) * convention / gflops - 1) < 0.05, (name, _flops(student) * convention)


def test_md_inherits_where_shapes_match_and_the_toy_twin_scales():
    teacher = tiny_unet()  # SD topology at widths (8, 16, 16, 32): the bottleneck is 0.8 x 16 -> 12
    student, _ = apply_preset(teacher, "md")
    assert {u.name: u.out_channels for u in list_units(student)}["mid.resnet.0"] == 12
    inh = student.inheritance
    assert inh["down.0.layer.0.resnet.conv1.weight"] == "down_blocks.0.resnets.0.conv1.weight"
    assert inh["up.2.layer.1.resnet.conv1.weight"] == "up_blocks.3.resnets.2.conv1.weight"  # (8 + 8) -> 8
    assert inh["down.1.layer.0.attn.transformer_blocks.0.attn2.to_k.weight"] == \
        "down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k.weight"
    assert inh["mid.attn.transformer_blocks.0.attn1.to_q.weight"] is None  # 12 wide: new
    assert inh["conv_in.weight"] == "conv_in.weight"
    g = torch.Generator().manual_seed(0)
    x, ehs = torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 5, 16, generator=g)
    with torch.no_grad():
        out = student(x, torch.tensor([3, 700]), ehs).sample
    assert out.shape == x.shape and torch.isfinite(out).all()


def test_md_saves_and_loads(tmp_path):
    student, _ = apply_preset(tiny_unet(), "md-lite")
    student.save_pretrained(tmp_path)
    back = SlimUNet2DConditionModel.from_pretrained(tmp_path)
    g = torch.Generator().manual_seed(0)
    x, ehs = torch.randn(1, 4, 8, 8, generator=g), torch.randn(1, 5, 16, generator=g)
    with torch.no_grad():
        assert torch.allclose(back(x, 5, ehs).sample, student(x, 5, ehs).sample, atol=1e-6)


def _features(model, names):
    rec = FeatureRecorder(model, names)
    g = torch.Generator().manual_seed(0)
    x, ehs = torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 5, 16, generator=g)
    with torch.no_grad():
        model(x, torch.tensor([3, 700]), ehs)
    feats = rec.pop()
    rec.remove()
    return feats


def test_md_feature_kd_pairs_the_blocks_at_the_teacher_widths():
    teacher = tiny_unet()  # widths (8, 16, 16, 32): md's bottleneck is 12 wide, the teacher's down.2 16
    student, info = apply_preset(teacher, "md")
    pairs = {"down.0": "down.0", "down.1": "down.1", "up.1": "up.2", "up.2": "up.3"}
    assert info["block_map"] == pairs  # written to recipe.json by save_student, read by slimdiff.distill
    block_map, source = resolve_block_map(student, teacher, info)
    assert source == "recipe.json block_map" and default_feature_map(block_map, student, teacher) == pairs
    check_shapes(_features(student, pairs), _features(teacher, list(pairs.values())), pairs)
    # the inheritance alone pairs the 12-wide bottleneck with the teacher's 16-wide down.2: distillation's dry run fails
    inherited, source = resolve_block_map(student, teacher, None)
    assert source == "inheritance" and inherited["down.2"] == "down.2"
    fmap = default_feature_map(inherited, student, teacher)
    with pytest.raises(ValueError, match="down.2"):
        check_shapes(_features(student, list(fmap)), _features(teacher, list(fmap.values())), fmap)
