"""CondConv unit type (A-SDM 2.3): identities, both implementations, cross-layer init, save/load."""

import pytest
import torch
from torch import nn

from slimdiff.modules import CondConv2d, CondConvSettings, apply_condconv
from slimdiff.testing import tiny_unet
from slimdiff.unet import SlimUNet2DConditionModel, apply_preset, list_units


def _inputs(unet, batch=2, seed=1):
    g = torch.Generator().manual_seed(seed)
    size = unet.config.sample_size
    return (torch.randn(batch, 4, size, size, generator=g), torch.tensor([10, 500][:batch]),
            torch.randn(batch, 5, 16, generator=g))


def _out(model, inputs):
    with torch.no_grad():
        return model(*inputs).sample


def test_one_expert_constant_routing_equals_the_plain_conv():
    torch.manual_seed(0)
    conv = nn.Conv2d(6, 5, 3, padding=1)
    x = torch.randn(3, 6, 7, 9)
    for impl in ("grouped", "mixed"):
        cc = CondConv2d(6, 5, num_experts=1, routing="constant", impl=impl)
        cc.weight[0].data.copy_(conv.weight)
        cc.bias[0].data.copy_(conv.bias)
        assert torch.allclose(cc(x), conv(x), atol=1e-6), impl


def test_grouped_and_mixed_compute_the_same_per_example_kernel():
    torch.manual_seed(0)
    a = CondConv2d(6, 5, num_experts=3, impl="grouped")
    nn.init.normal_(a.routing.weight)  # routing that differs per example
    b = CondConv2d(6, 5, num_experts=3, impl="mixed")
    b.load_state_dict(a.state_dict())
    x = torch.randn(4, 6, 8, 8)
    y = a(x)
    assert torch.allclose(y, b(x), atol=1e-5)
    # example 1's output is the plain conv with example 1's mixed kernel
    w = sum(r * wi for r, wi in zip(a.routing_weights(x)[1], a.weight))
    bias = sum(r * bi for r, bi in zip(a.routing_weights(x)[1], a.bias))
    assert torch.allclose(y[1:2], nn.functional.conv2d(x[1:2], w, bias, padding=1), atol=1e-5)


def test_cross_layer_init_takes_every_fitting_teacher_conv_of_the_block():
    teacher = tiny_unet()
    student, _ = apply_preset(teacher, "bk-small")
    cc = apply_condconv(student, teacher, CondConvSettings(experts=3))
    t = teacher.state_dict()
    s = cc.state_dict()
    # down.0: student layer 0 <- teacher layer 0; experts: teacher layers 0 and 1, then random
    assert torch.equal(s["down.0.layer.0.resnet.conv2.weight.0"], t["down_blocks.0.resnets.0.conv2.weight"])
    assert torch.equal(s["down.0.layer.0.resnet.conv2.weight.1"], t["down_blocks.0.resnets.1.conv2.weight"])
    assert cc.inheritance["down.0.layer.0.resnet.conv2.weight.1"] == "down_blocks.0.resnets.1.conv2.weight"
    assert cc.inheritance["down.0.layer.0.resnet.conv2.weight.2"] is None
    # up.3: student layer 1 <- teacher layer 2; conv2 (same shape everywhere): teacher layers 2, 0, 1
    src = [cc.inheritance[f"up.3.layer.1.resnet.conv2.weight.{i}"] for i in range(3)]
    assert src == [f"up_blocks.3.resnets.{j}.conv2.weight" for j in (2, 0, 1)]
    # conv1 of student up.3 layer 1 reads 16 channels; teacher layer 0's conv1 reads 24: skipped
    src = [cc.inheritance[f"up.3.layer.1.resnet.conv1.weight.{i}"] for i in range(3)]
    assert src == ["up_blocks.3.resnets.2.conv1.weight", "up_blocks.3.resnets.1.conv1.weight", None]
    assert [u.type for u in list_units(cc) if u.block in ("down.0", "up.3") and u.kind == "resnet"] == \
        ["condconv_resnet"] * 3


def test_e2_inherits_expert_one_and_draws_the_rest():
    teacher = tiny_unet()
    student, _ = apply_preset(teacher, "bk-small")
    cc = apply_condconv(student, None, CondConvSettings(experts=2, init="e2", blocks=("down.0",)))
    assert cc.inheritance["down.0.layer.0.resnet.conv1.weight.0"] == "down_blocks.0.resnets.0.conv1.weight"
    assert cc.inheritance["down.0.layer.0.resnet.conv1.weight.1"] is None
    assert list_units(cc)[3].type == "resnet"  # down.1 untouched


def test_one_expert_constant_routing_unet_equals_the_student():
    teacher = tiny_unet()
    student, _ = apply_preset(teacher, "bk-small")
    cc = apply_condconv(student, teacher, CondConvSettings(experts=1, routing="constant"))
    inputs = _inputs(student)
    assert torch.allclose(_out(cc, inputs), _out(student, inputs), atol=1e-5)


def test_save_load_round_trip(tmp_path):
    teacher = tiny_unet()
    student, _ = apply_preset(teacher, "bk-small")
    cc = apply_condconv(student, teacher, CondConvSettings(experts=2))
    torch.manual_seed(3)
    for p in cc.parameters():  # non-trivial routing
        p.data.add_(0.01 * torch.randn_like(p))
    cc.save_pretrained(tmp_path)
    back = SlimUNet2DConditionModel.from_pretrained(tmp_path)
    inputs = _inputs(cc)
    assert all(torch.equal(v, back.state_dict()[k]) for k, v in cc.state_dict().items())
    # same tensors; oneDNN may pick another conv path for another buffer alignment (1-ulp differences)
    assert torch.allclose(_out(back, inputs), _out(cc, inputs), atol=1e-6)


@pytest.mark.parametrize("kwargs, match", [
    (dict(experts=0), "experts must be an integer >= 1, got 0"),
    (dict(blocks=("down.9",)), r"do not exist in this U-Net; valid blocks: \['down.0'"),
    (dict(impl="fast"), "impl='fast' is invalid"),
])
def test_bad_settings_are_one_line_errors(kwargs, match):
    teacher = tiny_unet()
    with pytest.raises(ValueError, match=match):
        apply_condconv(teacher, teacher, CondConvSettings(**kwargs))


def test_cross_layer_needs_the_teacher():
    with pytest.raises(ValueError, match="pass the teacher"):
        apply_condconv(tiny_unet(), None, CondConvSettings())


def test_default_blocks_are_the_shallowest_down_and_up_blocks():
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)  # widths where the last two levels match, as SD's: bk-tiny fits
    teacher = UNet2DConditionModel(sample_size=8, block_out_channels=(8, 16, 32, 32), norm_num_groups=4,
                                   cross_attention_dim=16, attention_head_dim=2).eval()
    tiny, _ = apply_preset(teacher, "bk-tiny")
    cc = apply_condconv(tiny, teacher, CondConvSettings(experts=2))
    assert {u.block for u in list_units(cc) if u.type == "condconv_resnet"} == {"down.0", "up.2"}
