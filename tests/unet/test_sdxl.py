"""SDXL's U-Net in the editable representation: the added text/time conditioning, per-layer
Transformer depths (`transformer_layers_per_block` lists, `reverse_transformer_layers_per_block`)
and the inner blocks of deep Transformer units as units of their own (issue 23 item 1)."""

import pytest
import torch
from diffusers import UNet2DConditionModel

from slimdiff.testing import tiny_sdxl_unet
from slimdiff.unet import (
    SlimUNet2DConditionModel,
    UNetEditError,
    check_removal,
    get_module,
    list_units,
    remove_units,
    to_diffusers,
)
from slimdiff.unet.builtins import SDXL_CONFIG, SDXL_PARAMS


def _inputs(unet, batch=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    cfg = unet.config
    size, width = cfg.sample_size, 64
    text = cfg.projection_class_embeddings_input_dim - 6 * cfg.addition_time_embed_dim
    x = torch.randn(batch, 4, size, size, generator=g)
    ehs = torch.randn(batch, 7, width, generator=g)
    added = {"text_embeds": torch.randn(batch, text, generator=g),
             "time_ids": torch.tensor([[128.0, 96.0, 8.0, 0.0, 128.0, 128.0]] * batch)}
    return x, torch.tensor([10, 700]), ehs, added


def _out(unet, inputs):
    x, t, ehs, added = inputs
    with torch.no_grad():
        return unet(x, t, encoder_hidden_states=ehs, added_cond_kwargs=added).sample


# diffusers' tiny SDXL test config, and variants with per-layer depths and an asymmetric up side
VARIANTS = {
    "diffusers-test": {},
    "per-layer depths": dict(transformer_layers_per_block=(1, [2, 3]), reverse_transformer_layers_per_block=[[3, 1, 2], 1]),
    "no mid block": dict(mid_block_type=None, transformer_layers_per_block=(1, 3)),
}


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_import_then_export_gives_the_same_outputs(variant):
    teacher = tiny_sdxl_unet(seed=0, **VARIANTS[variant])
    inputs = _inputs(teacher)
    ref = _out(teacher, inputs)
    slim = SlimUNet2DConditionModel.from_diffusers(teacher)
    assert slim.num_parameters() == teacher.num_parameters()
    torch.testing.assert_close(_out(slim, inputs), ref, atol=1e-5, rtol=0)
    back = to_diffusers(slim)
    assert type(back) is UNet2DConditionModel  # a plain diffusers model: loads without slimdiff
    torch.testing.assert_close(_out(back, inputs), ref, atol=1e-5, rtol=0)
    assert back.config.addition_embed_type == "text_time"


def test_the_added_conditioning_matters_and_is_required():
    slim = SlimUNet2DConditionModel.from_diffusers(tiny_sdxl_unet())
    x, t, ehs, added = _inputs(slim)
    other = dict(added, time_ids=added["time_ids"] * 0.5)
    assert not torch.allclose(_out(slim, (x, t, ehs, added)), _out(slim, (x, t, ehs, other)))
    with pytest.raises(ValueError, match="added_cond_kwargs must hold 'text_embeds'"):
        slim(x, t, encoder_hidden_states=ehs)


def test_inner_blocks_are_listed_named_and_removable():
    teacher = tiny_sdxl_unet(seed=1, transformer_layers_per_block=(1, 3))
    units = list_units(teacher, inner=True)
    inner = [u for u in units if u.kind == "tblock"]
    # 2 down + 1 mid + 3 up Transformer units of depth 3
    assert len(inner) == 6 * 3
    first = inner[0]
    assert (first.name, first.parent) == ("down.1.layer.0.attn.tblock.0", "down.1.layer.0.attn")
    assert get_module(teacher, first.name) is teacher.down_blocks[1].attentions[0].transformer_blocks[0]
    assert [u.name for u in list_units(teacher)] == [u.name for u in units if u.kind != "tblock"]

    student = remove_units(teacher, ["down.1.layer.0.attn.tblock.1", "mid.attn.tblock.0", "mid.attn.tblock.2"])
    kw = {n: u["kwargs"]["num_layers"] for n, _, u in _attn(student)}
    assert kw["down.1.layer.0.attn"] == 2 and kw["mid.attn"] == 1 and kw["down.1.layer.1.attn"] == 3
    # the blocks kept inherit their own weights: down block 1 <- teacher block 2, mid block 0 <- teacher block 1
    assert student.inheritance["down.1.layer.0.attn.transformer_blocks.1.attn1.to_q.weight"] == \
        "down_blocks.1.attentions.0.transformer_blocks.2.attn1.to_q.weight"
    assert student.inheritance["mid.attn.transformer_blocks.0.ff.net.2.weight"] == \
        "mid_block.attentions.0.transformer_blocks.1.ff.net.2.weight"
    removed = sum(u.params for u in inner if u.name in ("down.1.layer.0.attn.tblock.1", "mid.attn.tblock.0",
                                                          "mid.attn.tblock.2"))
    assert student.num_parameters() == teacher.num_parameters() - removed


def test_removing_an_inner_block_equals_skipping_it():
    """A BasicTransformerBlock is residual: removing it is the network that skips it."""
    teacher = tiny_sdxl_unet(seed=2)
    inputs = _inputs(teacher)
    student = remove_units(teacher, ["up.0.layer.1.attn.tblock.0"])
    block = teacher.up_blocks[0].attentions[1].transformer_blocks[0]
    handle = block.register_forward_hook(lambda m, args, out: args[0])  # identity: skip the block
    try:
        skipped = _out(teacher, inputs)
    finally:
        handle.remove()
    torch.testing.assert_close(_out(student, inputs), skipped, atol=1e-5, rtol=0)
    exported = to_diffusers(student)  # per-layer depths in the up block: reverse_transformer_layers_per_block
    assert exported.config.reverse_transformer_layers_per_block == [[2, 1, 2], 1]
    torch.testing.assert_close(_out(exported, inputs), skipped, atol=1e-5, rtol=0)


def test_removing_every_inner_block_removes_the_unit():
    teacher = tiny_sdxl_unet(seed=0)
    student = remove_units(teacher, ["down.1.layer.1.attn.tblock.0", "down.1.layer.1.attn.tblock.1"])
    assert "down.1.layer.1.attn" not in [u.name for u in student.units()]
    assert student.num_parameters() == teacher.num_parameters() - get_module(teacher, "down.1.layer.1.attn").num_parameters()
    with pytest.raises(UNetEditError, match="unknown unit/layer/block name"):
        check_removal(teacher, ["down.1.layer.1.attn.tblock.2"])


def test_sdxl_arch_has_sdxl_base_parameters_and_imports_exactly():
    with torch.device("meta"):
        unet = UNet2DConditionModel(**SDXL_CONFIG)
    assert unet.num_parameters() == SDXL_PARAMS == 2_567_463_684
    slim = SlimUNet2DConditionModel.from_diffusers(unet, clone=False)
    assert slim.num_parameters() == SDXL_PARAMS
    depths = [u["kwargs"]["num_layers"] for _, _, u in _attn(slim)]
    assert depths == [2, 2, 10, 10, 10, 10, 10, 10, 2, 2, 2]  # down.1 x2, down.2 x2, mid, up.0 x3, up.1 x3
    assert len([u for u in slim.units(inner=True) if u.kind == "tblock"]) == sum(depths)
    from slimdiff.unet.export import diffusers_config_for, is_expressible

    assert is_expressible(slim)
    cfg = diffusers_config_for(slim)
    assert cfg["transformer_layers_per_block"] == [1, 2, 10] and "reverse_transformer_layers_per_block" not in cfg


def _attn(model):
    from slimdiff.unet.structure import iter_units

    return [(n, b, u) for n, b, u in iter_units(model.config.blocks) if u["type"] == "attn"]


@pytest.mark.parametrize("take", ["none", "all"])
def test_assembly_on_sdxl_carries_the_added_conditioning(take):
    """A-SDM's assembly on SDXL-base's topology (koala-700m's blocks): take none is the teacher, take all
    is the student, both bit for bit (the added text/time embedding travels with the time embedding;
    before, it had no stem position and assembling an SDXL U-Net raised StopIteration)."""
    from slimdiff.testing import tiny_sdxl_base_unet_config
    from slimdiff.unet import apply_preset, assemble

    teacher = SlimUNet2DConditionModel.from_diffusers(tiny_sdxl_unet(**tiny_sdxl_base_unet_config()))
    student, _ = apply_preset(teacher, "koala-700m")
    torch.manual_seed(5)
    for p in student.parameters():  # a "distilled" student: its weights differ from the teacher's
        p.data.add_(0.05 * torch.randn_like(p))
    model = assemble(student, teacher, take=take)
    inputs = _inputs(teacher)
    assert torch.equal(_out(model, inputs), _out(teacher if take == "none" else student, inputs))
    assert ("add_embedding" in model.assembly["freeze"]) == (take == "none")
