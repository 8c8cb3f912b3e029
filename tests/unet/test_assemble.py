"""Progressive incubation by assembly (A-SDM 2.2): identities, wiring, inheritance, errors."""

import pytest
import torch

from slimdiff.unet import ASSEMBLIES, SlimUNet2DConditionModel, apply_preset, assemble, to_diffusers
from slimdiff.unet.structure import UNetEditError


def _student(unet, preset, seed=5):
    student, _ = apply_preset(unet, preset)
    torch.manual_seed(seed)  # a "distilled" student: weights differ from the teacher's
    for p in student.parameters():
        p.data.add_(0.05 * torch.randn_like(p))
    return student


def test_take_nothing_is_the_teacher(unet, inputs, run):
    m = assemble(_student(unet, "bk-base"), unet, take="none")
    assert torch.equal(run(m, inputs), run(unet, inputs))
    assert m.assembly["freeze"][:2] == ["down.0", "down.1"] and "time_embedding" in m.assembly["freeze"]
    assert to_diffusers(m) is not None  # the teacher's structure: plain diffusers


@pytest.mark.parametrize("preset", ["bk-base", "bk-small", "bk-tiny"])
def test_take_everything_is_the_student(unet, inputs, run, preset):
    student = _student(unet, preset)
    m = assemble(student, unet, take="all")
    assert torch.equal(run(m, inputs), run(student, inputs))
    assert m.assembly["freeze"] == []


@pytest.mark.parametrize("name", list(ASSEMBLIES))
def test_m_presets_wire_student_and_teacher_blocks(unet, inputs, run, name):
    student = _student(unet, "bk-base")
    m = assemble(student, unet, take=name)
    taken = [b for b in ASSEMBLIES[name] if "." in b]
    assert [b for b, src in m.assembly["blocks"].items() if src.startswith("student")] == taken
    s, t = student.state_dict(), dict(unet.state_dict())
    got = m.state_dict()
    # a taken block's tensors are the student's; the others the teacher's (diffusers names)
    assert torch.equal(got["down.0.layer.0.resnet.conv1.weight"], s["down.0.layer.0.resnet.conv1.weight"])
    assert torch.equal(got["down.3.layer.1.resnet.conv1.weight"], t["down_blocks.3.resnets.1.conv1.weight"])
    assert torch.equal(got["time_embedding.linear_1.weight"], t["time_embedding.linear_1.weight"])
    assert m.inheritance["down.3.layer.1.resnet.conv1.weight"] == "down_blocks.3.resnets.1.conv1.weight"
    assert m.inheritance["up.3.layer.1.resnet.conv1.weight"] == "up_blocks.3.resnets.2.conv1.weight"
    assert "mid" in m.assembly["freeze"] and "down.0" not in m.assembly["freeze"]
    out = run(m, inputs)
    assert out.shape == inputs[0].shape and torch.isfinite(out).all()
    assert to_diffusers(m) is not None  # uneven layers per block: still a plain diffusers config


def test_bk_tiny_blocks_sit_at_their_teacher_positions(unet):
    m = assemble(_student(unet, "bk-tiny"), unet, take="M1")
    assert m.assembly["blocks"]["up.3"] == "student:up.2"
    assert m.assembly["block_map"]["up.3"] == "up.3"


def test_save_load_round_trip(tmp_path, unet, inputs, run):
    from slimdiff.modules import CondConvSettings, apply_condconv

    student = apply_condconv(_student(unet, "bk-base"), unet, CondConvSettings(experts=2))
    m = assemble(student, unet, take="M2")
    assert to_diffusers(m) is None  # CondConv units: saved as the slim class
    m.save_pretrained(tmp_path)
    back = SlimUNet2DConditionModel.from_pretrained(tmp_path)
    assert torch.allclose(run(back, inputs), run(m, inputs), atol=1e-6)


def test_bad_takes_are_one_line_errors(unet, make_unet):
    student = _student(unet, "bk-base")
    with pytest.raises(UNetEditError, match=r"take names \['down.7'\] are not positions of the teacher"):
        assemble(student, unet, take=["down.7"])
    # teacher up.3 consumes down.0's second layer, which the student's down.0 does not have
    with pytest.raises(UNetEditError, match=r"cannot assemble take=\['down.0'\]: .*skip point 'down.0.layer.1'"):
        assemble(student, unet, take=["down.0"])
    with pytest.raises(UNetEditError, match=r"different topologies: .*model_channels: teacher 8, student 16"):
        assemble(make_unet(block_out_channels=(16, 16, 32, 32)), unet, take="M1")
    with pytest.raises(UNetEditError, match=r"different topologies: cross_attention_dim: \[12, 16\]"):
        assemble(make_unet(cross_attention_dim=16), unet, take="M1")
