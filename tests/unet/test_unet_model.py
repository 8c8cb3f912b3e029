"""Import, forward, names and access of the editable U-Net."""

import pytest
import torch
from diffusers.models.attention_processor import AttnProcessor

from slimdiff.unet import (
    SlimUNet2DConditionModel,
    block_names,
    get_module,
    list_units,
    module_output_tensor,
    to_diffusers,
    to_slim,
)


def test_import_is_lossless(unet, inputs, run):
    slim = SlimUNet2DConditionModel.from_diffusers(unet)
    assert sum(p.numel() for p in slim.parameters()) == sum(p.numel() for p in unet.parameters())
    assert (run(slim, inputs) - run(unet, inputs)).abs().max() <= 1e-5
    # every slim tensor came from the diffusers tensor with the same values
    teacher = unet.state_dict()
    for name, tensor in slim.state_dict().items():
        assert torch.equal(tensor, teacher[slim.inheritance[name]])


def test_import_odd_sizes_and_options(inputs, run, make_unet):
    # odd latent sizes (upsample_size path), SD-2 style linear projections and per-block heads
    unet = make_unet(seed=3, use_linear_projection=True, attention_head_dim=(1, 2, 4, 4))
    slim = to_slim(unet)
    x = torch.randn(1, 4, 18, 14)
    args = (x, 7, inputs[2][:1])
    assert (run(slim, args) - run(unet, args)).abs().max() <= 1e-5
    out = slim(*args, return_dict=False)
    assert isinstance(out, tuple) and out[0].shape == x.shape


def test_import_then_export_is_identity(unet, inputs, run):
    back = to_diffusers(to_slim(unet))
    for key in ("block_out_channels", "down_block_types", "up_block_types"):
        assert list(back.config[key]) == list(unet.config[key])
    for key in ("mid_block_type", "cross_attention_dim", "layers_per_block", "attention_head_dim"):
        assert back.config[key] == unet.config[key]
    assert back.state_dict().keys() == unet.state_dict().keys()
    assert torch.equal(run(back, inputs), run(unet, inputs))


def test_get_module_both_kinds(unet):
    slim = to_slim(unet)
    pairs = {
        "down.1.layer.0.resnet": unet.down_blocks[1].resnets[0],
        "down.1.layer.1.attn": unet.down_blocks[1].attentions[1],
        "down.1.downsample": unet.down_blocks[1].downsamplers[0],
        "up.0.upsample": unet.up_blocks[0].upsamplers[0],
        "up.3.layer.2.attn": unet.up_blocks[3].attentions[2],
        "mid.resnet.0": unet.mid_block.resnets[0],
        "mid.attn": unet.mid_block.attentions[0],
        "mid.resnet.1": unet.mid_block.resnets[1],
        "down.2": unet.down_blocks[2],
        "mid": unet.mid_block,
        "up.1": unet.up_blocks[1],
        "conv_in": unet.conv_in,
        "conv_out": unet.conv_out,
    }
    for name, module in pairs.items():
        assert get_module(unet, name) is module
        if name.count(".") >= 2 or name.startswith("mid.") or name.startswith("conv"):  # units: the same class
            mine = get_module(slim, name)
            assert type(mine) is type(module)
            assert [t.shape for t in mine.state_dict().values()] == [t.shape for t in module.state_dict().values()]
    assert get_module(slim, "down.1.layer.0") is slim.down[1]["layer"][0]
    for model in (unet, slim):
        with pytest.raises(ValueError, match="valid names: .*down.1.layer.0.resnet"):
            get_module(model, "down.9.layer.0.resnet")


def test_units_and_block_names(unet):
    slim = to_slim(unet)
    assert block_names(unet) == block_names(slim) == [
        "down.0", "down.1", "down.2", "down.3", "mid", "up.0", "up.1", "up.2", "up.3"]
    units = slim.units()
    assert [u.name for u in units] == [u.name for u in list_units(unet)]
    kinds = [u.kind for u in units]
    assert (len(units), kinds.count("resnet"), kinds.count("attn")) == (44, 22, 16)
    by = {u.name: u for u in units}
    u = by["down.1.layer.0.resnet"]
    got = (u.kind, u.block, u.in_channels, u.out_channels, u.level, u.cross_attention_dim)
    assert got == ("resnet", "down.1", 8, 16, 1, None)
    u = by["up.1.layer.2.resnet"]  # 32 main + 16 from down.1's downsampler
    assert (u.in_channels, u.out_channels, u.level, u.skip) == (48, 32, 2, "down.1.downsample")
    assert by["mid.attn"].cross_attention_dim == 12 and by["mid.attn"].level == 3
    assert by["up.3.layer.2.resnet"].skip == "conv_in"
    assert by["mid.attn"].params == sum(p.numel() for p in unet.mid_block.attentions[0].parameters())


def test_module_output_tensor():
    t = torch.ones(2)
    assert module_output_tensor(t) is t
    assert module_output_tensor((t, None)) is t
    assert module_output_tensor(type("O", (), {"sample": t})()) is t


def test_gradient_checkpointing_and_attn_processor(unet, inputs, run):
    slim = to_slim(unet).train()
    x, t, c = inputs
    slim(x, t, c).sample.square().mean().backward()
    grads = [p.grad.clone() for p in slim.parameters()]
    slim.zero_grad()
    slim.enable_gradient_checkpointing()
    assert slim.gradient_checkpointing
    slim(x, t, c).sample.square().mean().backward()
    for g, p in zip(grads, slim.parameters()):
        assert torch.allclose(g, p.grad, atol=1e-6)
    slim.eval()
    before = run(slim, inputs)
    slim.set_attn_processor(AttnProcessor())
    assert all(isinstance(p, AttnProcessor) for p in slim.attn_processors.values())
    assert len(slim.attn_processors) == 2 * 16  # self- and cross-attention per transformer unit
    assert (run(slim, inputs) - before).abs().max() <= 1e-5
