"""Feature hooks, the student -> teacher block map (presets with missing blocks), stochastic depth."""

import pytest
import torch

from slimdiff.distill.features import (
    FeatureRecorder,
    block_map_from_inheritance,
    block_of_tensor,
    check_shapes,
    default_feature_map,
    resolve_block_map,
    structural_block_map,
)
from slimdiff.distill.stochastic_depth import StochasticDepth
from slimdiff.toy import components
from slimdiff.unet import apply_preset, get_module, to_diffusers

TEACHER_BLOCKS = ["down.0", "down.1", "down.2", "down.3", "mid", "up.0", "up.1", "up.2", "up.3"]


def tiny_teacher(seed=0):
    """SD-1.5 topology whose last two levels share a width, so bk-tiny fits (as in SD)."""
    cfg = components.unet_config(block_out_channels=(8, 16, 32, 32), cross_attention_dim=16, attention_head_dim=2,
                                 norm_num_groups=4, sample_size=8)
    return components.build_unet(cfg, seed=seed).eval()


def run(unet, batch=2):
    g = torch.Generator().manual_seed(3)
    x, c = torch.randn(batch, 4, 8, 8, generator=g), torch.randn(batch, 5, 16, generator=g)
    with torch.no_grad():
        return unet(x, torch.tensor([10, 700][:batch]), encoder_hidden_states=c).sample


def test_block_of_tensor_reads_both_namings():
    assert block_of_tensor("down_blocks.1.resnets.0.conv1.weight") == "down.1"
    assert block_of_tensor("up.2.layer.0.attn.proj_in.weight") == "up.2"
    assert block_of_tensor("mid_block.attentions.0.norm.weight") == "mid"
    assert block_of_tensor("mid.resnet_0.conv1.weight") == "mid"
    assert block_of_tensor("conv_in.weight") is None


def test_block_maps_from_inheritance_and_structure():
    inheritance = {"up.0.layer.0.resnet.conv1.weight": "up_blocks.1.resnets.0.conv1.weight",
                   "up.0.layer.1.resnet.conv1.weight": "up_blocks.1.resnets.2.conv1.weight",
                   "down.0.layer.0.resnet.conv1.weight": "down_blocks.0.resnets.0.conv1.weight",
                   "down.0.new.weight": None}
    assert block_map_from_inheritance(inheritance) == {"up.0": "up.1", "down.0": "down.0"}
    # bk-tiny: 3 down, no mid, 3 up -> down by index, up aligned from the output side
    tiny = ["down.0", "down.1", "down.2", "up.0", "up.1", "up.2"]
    assert structural_block_map(tiny, TEACHER_BLOCKS) == {
        "down.0": "down.0", "down.1": "down.1", "down.2": "down.2", "up.0": "up.1", "up.1": "up.2", "up.2": "up.3"}
    assert default_feature_map({"down.0": "down.0", "mid": "mid", "up.0": "up.1"}) == {"down.0": "down.0",
                                                                                       "up.0": "up.1"}


@pytest.mark.parametrize("form", ["slim", "diffusers", "recipe"])
def test_bk_tiny_block_map_matches_inherited_blocks_and_shapes(form):
    teacher = tiny_teacher()
    slim, _ = apply_preset(teacher, "bk-tiny")
    student = slim if form == "slim" else to_diffusers(slim)
    recipe = {"block_map": {"up.0": "up.1", "up.1": "up.2", "up.2": "up.3"}} if form == "recipe" else None
    block_map, source = resolve_block_map(student, teacher, recipe)
    assert source == {"slim": "inheritance", "diffusers": "structure", "recipe": "recipe.json block_map"}[form]
    for k in range(3):
        assert block_map[f"up.{k}"] == f"up.{k + 1}"
    fmap = default_feature_map(block_map, student, teacher)
    if form != "recipe":  # student down.2 lost its downsampler: BK-SDM's pre-residual proj_out hooks
        assert fmap["down.2.layer.0.attn.proj_out"] == "down.2.layer.1.attn.proj_out" and "down.2" not in fmap
        unit_map = default_feature_map(block_map, student, teacher, presampler="unit")
        assert unit_map["down.2.layer.0.attn"] == "down.2.layer.1.attn"
        with pytest.raises(ValueError, match="presampler 'post' is not one of"):
            default_feature_map(block_map, student, teacher, presampler="post")
    s_rec, t_rec = FeatureRecorder(student, fmap), FeatureRecorder(teacher, [*fmap.values(), "up.0"])
    run(student), run(teacher)
    s_feats, t_feats = s_rec.pop(), t_rec.pop()
    check_shapes(s_feats, t_feats, fmap)  # every inherited block has the teacher block's shape
    if form != "recipe":  # proj_out: the Transformer's output before its residual is added
        attn = get_module(teacher, "down.2.layer.1.attn")
        g = torch.Generator().manual_seed(0)
        x, c = torch.randn(1, 32, 2, 2, generator=g), torch.randn(1, 5, 16, generator=g)
        rec = FeatureRecorder(teacher, ["down.2.layer.1.attn.proj_out"])
        with torch.no_grad():
            out = attn(x, encoder_hidden_states=c, return_dict=False)[0]
        assert torch.allclose(rec.pop()["down.2.layer.1.attn.proj_out"] + x, out, atol=1e-6)
        rec.remove()
    with pytest.raises(ValueError, match=r"up\.0 .* vs teacher up\.0"):
        check_shapes(s_feats, t_feats, {"up.0": "up.0"})  # same name, different level


def test_recorder_hooks_block_outputs_and_rejects_unknown_names():
    teacher = tiny_teacher()
    rec = FeatureRecorder(teacher, ["down.0", "mid", "up.3", "up.3.layer.0.attn"])
    run(teacher)
    feats = rec.pop()
    assert feats["down.0"].shape == (2, 8, 4, 4)  # down block output after its downsampler
    assert feats["up.3"].shape == (2, 8, 8, 8) and feats["mid"].shape == (2, 32, 1, 1)
    assert rec.pop() == {}
    rec.remove()
    run(teacher)
    assert rec.pop() == {}
    with pytest.raises(ValueError, match="'down.9'"):
        FeatureRecorder(teacher, ["down.9"], "student feature")


@pytest.mark.parametrize("slim", [False, True])
def test_stochastic_depth_skips_exactly_the_removable_units(slim):
    from slimdiff.prune.criteria import removable_units
    from slimdiff.unet import remove_units, to_slim

    unet = to_slim(tiny_teacher()) if slim else tiny_teacher()
    reference = run(unet)
    sd = StochasticDepth(unet, p=0.5)
    units = sd.probe(lambda: run(unet))
    # every unit whose structural removal is well formed, up-side ResNets included
    assert units == removable_units(unet)
    assert "up.1.layer.0.resnet" in units and "mid.attn" in units and "down.1.layer.1.resnet" in units
    assert "down.1.layer.0.resnet" not in units  # changes width 8 -> 16: its removal is refused
    assert torch.equal(run(unet), reference)  # nothing skipped: same function
    # skipping a set == removing it: up-side ResNets pass on the main path of cat([h, skip])
    up_resnets = [u for u in units if u.startswith("up.") and u.endswith("resnet")]
    assert len(up_resnets) >= 4
    for skipped in [[u] for u in up_resnets] + [["mid.attn", "down.1.layer.1.resnet", *up_resnets[::3]]]:
        sd.set_skipped(frozenset(skipped))
        assert torch.allclose(run(unet), run(remove_units(unet, skipped)), atol=1e-6), skipped
    sd.set_skipped(frozenset())
    # the draw: p of the units on average, deterministic per generator
    draws = [len(sd.sample(torch.Generator().manual_seed(i))) for i in range(200)]
    assert abs(sum(draws) / 200 / len(units) - 0.5) < 0.05
    assert sd.sample(torch.Generator().manual_seed(7)) == sd.sample(torch.Generator().manual_seed(7))
    sd.remove()
    assert "forward" not in get_module(unet, "mid.attn").__dict__
    assert torch.equal(run(unet), reference)
