"""remove_units / insert_unit: structure, skip wiring, refusals, inheritance."""

import pytest
import torch
from diffusers.models.resnet import ResnetBlock2D

from slimdiff.unet import (
    UNetEditError,
    get_module,
    insert_unit,
    register_unit_type,
    remove_units,
    replace_unit,
    to_slim,
)


def test_removing_nothing_is_identity(unet, inputs, run):
    student = remove_units(unet, [])
    assert torch.equal(run(student, inputs), run(unet, inputs))
    assert student is not to_slim(unet)


def test_removal_is_structural(unet, inputs, run):
    slim = to_slim(unet)
    student = remove_units(slim, ["down.1.layer.1.attn", "mid"])
    names = [u.name for u in student.units()]
    assert "down.1.layer.1.attn" not in names and not any(n.startswith("mid") for n in names)
    assert student.mid is None
    gone = sum(p.numel() for n in ("down.1.layer.1.attn", "mid") for p in get_module(slim, n).parameters())
    assert student.num_parameters() == slim.num_parameters() - gone
    assert run(student, inputs).shape == inputs[0].shape


def test_skip_aliasing_bk_base(unet):
    # a removed down layer's skip point aliases its input: up.0.layer.0 (teacher layer 0) now
    # reads down.3.layer.0; teacher up layer 2 becomes layer 1 and keeps down.2's downsampler
    student = remove_units(unet, [f"down.{k}.layer.1" for k in range(4)] + [f"up.{k}.layer.1" for k in range(4)])
    skips = {u.name: u.skip for u in student.units() if u.skip}
    assert skips == {
        "up.0.layer.0.resnet": "down.3.layer.0", "up.0.layer.1.resnet": "down.2.downsample",
        "up.1.layer.0.resnet": "down.2.layer.0", "up.1.layer.1.resnet": "down.1.downsample",
        "up.2.layer.0.resnet": "down.1.layer.0", "up.2.layer.1.resnet": "down.0.downsample",
        "up.3.layer.0.resnet": "down.0.layer.0", "up.3.layer.1.resnet": "conv_in",
    }


def test_unconsumed_skips_are_not_stored(unet):
    student = remove_units(unet, ["up.3.layer.2.resnet", "up.3.layer.1.resnet"])
    assert "conv_in" not in student._skips_needed and "down.0.layer.0" not in student._skips_needed


@pytest.mark.parametrize("names, unit", [
    (["down.1.layer.0.resnet"], "it changes channels 8->16 and down.1.layer.0.attn expects 16"),
    (["up.2.layer.0.resnet"], "it changes channels 32->16 and up.2.layer.0.attn expects 16"),
    (["down.1"], "down.1.layer.0.resnet changes channels 8->16 and down.2.layer.0.resnet expects 16"),
    (["down.0.downsample"], "up.2.upsample upsamples above the latent resolution"),
    (["up.1.upsample"], "up.2.layer.0.resnet concatenates skip down.1.layer.1 at level 1 to the main path at level 2"),
])
def test_refused_removals_name_the_unit(unet, names, unit):
    with pytest.raises(UNetEditError, match=f"cannot remove {names[0]}") as err:
        remove_units(unet, names)
    assert unit in str(err.value)


def test_unknown_names_list_valid_ones(unet):
    with pytest.raises(ValueError, match=r"unknown .*\['down.7'\].*valid names: .*mid.attn"):
        remove_units(unet, ["down.7"])


def test_inheritance_composes_back_to_the_teacher(unet):
    # two edits: BK-Tiny's shift (student up.0 <- teacher up.1; layer 1 <- teacher layer 2)
    first = remove_units(unet, [f"down.{k}.layer.1" for k in range(4)] + [f"up.{k}.layer.1" for k in range(4)])
    student = remove_units(first, ["mid", "down.3", "up.0", "down.2.downsample"])
    inh = student.inheritance
    assert inh["up.0.layer.1.resnet.conv1.weight"] == "up_blocks.1.resnets.2.conv1.weight"
    assert inh["up.0.layer.0.attn.proj_in.weight"] == "up_blocks.1.attentions.0.proj_in.weight"
    assert inh["up.2.layer.1.resnet.conv_shortcut.weight"] == "up_blocks.3.resnets.2.conv_shortcut.weight"
    assert inh["down.2.layer.0.resnet.conv1.weight"] == "down_blocks.2.resnets.0.conv1.weight"
    assert inh["conv_in.weight"] == "conv_in.weight"
    assert student.unit_sources["up.0.layer.1.resnet"] == "up.1.layer.2.resnet"
    teacher = unet.state_dict()
    for name, tensor in student.state_dict().items():
        assert torch.equal(tensor, teacher[inh[name]])


def test_insert_unit(unet, inputs, run):
    student = insert_unit(unet, "up.1.layer.0.attn", "up.1.layer.0.attn")
    source = get_module(unet, "up.1.layer.0.attn")
    assert student.num_parameters() - unet.num_parameters() == source.num_parameters()
    names = [u.name for u in student.units() if u.block == "up.1"]
    assert names[:3] == ["up.1.layer.0.resnet", "up.1.layer.0.attn", "up.1.layer.0.attn.1"]
    assert student.inheritance["up.1.layer.0.attn_1.proj_in.weight"] == "up_blocks.1.attentions.0.proj_in.weight"
    copy = get_module(student, "up.1.layer.0.attn.1")
    assert copy is not get_module(student, "up.1.layer.0.attn")
    assert torch.isfinite(run(student, inputs)).all()
    # a resnet copy (in == out) goes into a down layer; then removing the copy gives the teacher back
    twice = insert_unit(student, "down.2.layer.1.resnet", "down.2.layer.1.attn")
    assert [u.name for u in twice.units() if u.name.startswith("down.2.layer.1")][-1] == "down.2.layer.1.resnet.1"
    back = remove_units(twice, ["up.1.layer.0.attn.1", "down.2.layer.1.resnet.1"])
    assert torch.equal(run(back, inputs), run(unet, inputs))


@pytest.mark.parametrize("source, after, why", [
    ("up.1.layer.0.resnet", "up.1.layer.0.attn", "not channel-preserving"),  # consumes a skip
    ("down.1.layer.0.resnet", "down.1.layer.0.attn", "not channel-preserving"),  # 8 -> 16
    ("up.1.layer.0.attn", "up.2.layer.0.attn", "gives 16 channels and up.1.layer.0.attn expects 32"),
    ("down.2.layer.0.attn", "down.3.layer.0.resnet", "works at level 3"),
    ("down.0.downsample", "down.0.layer.1.attn", "not a unit inside a layer"),
    ("up.1.layer.0.attn", "up.1.layer.9.attn", "unknown after unit"),
])
def test_refused_insertions(unet, source, after, why):
    with pytest.raises(UNetEditError, match=why):
        insert_unit(unet, source, after)


class WideShortcutResnet(ResnetBlock2D):
    """A stand-in for a new unit type (e.g. a CondConv ResNet): a resnet with a forced shortcut."""

    def __init__(self, **kwargs):
        super().__init__(conv_shortcut=False, use_in_shortcut=True, **kwargs)


def test_replace_unit_with_a_registered_type(unet, inputs, tmp_path, run):
    register_unit_type("wide_shortcut_resnet", WideShortcutResnet, role="resnet")
    student = replace_unit(unet, "down.1.layer.1.resnet", "wide_shortcut_resnet")
    info = {u.name: u for u in student.units()}["down.1.layer.1.resnet"]
    assert (info.kind, info.type) == ("resnet", "wide_shortcut_resnet")
    inh = student.inheritance
    assert inh["down.1.layer.1.resnet.conv1.weight"] == "down_blocks.1.resnets.1.conv1.weight"
    assert inh["down.1.layer.1.resnet.conv_shortcut.weight"] is None  # new tensor
    assert torch.isfinite(run(student, inputs)).all()
    student.save_pretrained(tmp_path)  # reloads while the type is registered
    assert torch.equal(run(type(student).from_pretrained(tmp_path), inputs), run(student, inputs))
    with pytest.raises(UNetEditError, match="roles must match"):
        replace_unit(unet, "down.1.layer.1.resnet", "attn")
    with pytest.raises(ValueError, match="unknown role"):
        register_unit_type("x", WideShortcutResnet, role="conv")
