"""MobileDiffusion unit types (seed 001): each against a direct reference computation, inheritance,
save/load, the import -> export identity when nothing is replaced, FLOPs and LUT keys, bad input."""

import pytest
import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import Attention, AttnProcessor2_0
from diffusers.models.resnet import ResnetBlock2D
from diffusers.models.transformers.transformer_2d import Transformer2DModel

from slimdiff.modules import MDTricks, apply_md_tricks, md_attention, set_relu_mix
from slimdiff.modules.md_units import MDAttnProcessor, MDTransformer2DModel, SeparableResnetBlock2D
from slimdiff.modules.mobilediffusion import factor_conv, md_replacements
from slimdiff.profile import LatencyLUT, ProfileSettings, profile_unet
from slimdiff.profile.flops import conv_flops
from slimdiff.testing import tiny_unet
from slimdiff.unet import SlimUNet2DConditionModel, UNetEditError, list_units, to_diffusers, to_slim

T_KW = dict(num_attention_heads=2, attention_head_dim=4, in_channels=8, norm_num_groups=4, cross_attention_dim=6)


def _inputs(size=8, batch=2):
    g = torch.Generator().manual_seed(1)
    return torch.randn(batch, 4, size, size, generator=g), torch.tensor([10, 500][:batch]), \
        torch.randn(batch, 5, 16, generator=g)


def _out(model, inputs):
    with torch.no_grad():
        return model(*inputs).sample


def _seeded(module, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    return module.eval()


def test_separable_resnet_is_a_resnet_with_rank_one_kernels():
    torch.manual_seed(0)
    sep = _seeded(SeparableResnetBlock2D(in_channels=8, out_channels=12, temb_channels=10, groups=4))
    plain = ResnetBlock2D(in_channels=8, out_channels=12, temb_channels=10, groups=4).eval()
    state = {k: v for k, v in sep.state_dict().items() if ".depthwise" not in k and ".pointwise" not in k}
    for conv in ("conv1", "conv2"):
        dw, pw = getattr(sep, conv).depthwise.weight, getattr(sep, conv).pointwise.weight  # (I,1,3,3), (O,I,1,1)
        state[f"{conv}.weight"] = pw[:, :, 0, 0, None, None] * dw[None, :, 0]  # depthwise then pointwise
        state[f"{conv}.bias"] = getattr(sep, conv).pointwise.bias
    plain.load_state_dict(state)
    x, temb = torch.randn(2, 8, 6, 6), torch.randn(2, 10)
    with torch.no_grad():
        assert torch.allclose(sep(x, temb), plain(x, temb), atol=1e-5)
        # and the layer itself: a grouped 3x3 conv (groups = C_in) then a 1x1 conv
        c = sep.conv1
        want = F.conv2d(F.conv2d(x, c.depthwise.weight, padding=1, groups=8), c.pointwise.weight, c.pointwise.bias)
        assert torch.allclose(c(x), want, atol=1e-6)
        # a rank-1-per-input-channel kernel is factored back exactly (the teacher-derived initialisation)
        factor_conv(c, state["conv1.weight"].clone(), state["conv1.bias"].clone())
        assert torch.allclose(c(x), F.conv2d(x, state["conv1.weight"], state["conv1.bias"], padding=1), atol=1e-5)


def test_attention_formulas():
    torch.manual_seed(0)
    q, k, v = torch.randn(2, 3, 5, 4), torch.randn(2, 3, 7, 4), torch.randn(2, 3, 7, 4)  # (B, h, N | L, d)
    # ReLU attention (Wortsman et al. 2023): (1/L) relu(q.k / sqrt(d)) v, L = 7 keys
    want = torch.einsum("bhnl,bhld->bhnd", F.relu(torch.einsum("bhnd,bhld->bhnl", q, k) / 2.0) / 7, v)
    assert torch.allclose(md_attention(q, k, v, 1.0), want, atol=1e-6)
    soft = F.scaled_dot_product_attention(q, k, v)
    assert torch.equal(md_attention(q, k, v, 0.0), soft)
    assert torch.allclose(md_attention(q, k, v, 0.25), 0.75 * soft + 0.25 * want, atol=1e-6)
    # shared K/V: standard attention whose K and V both come from to_k
    attn = _seeded(Attention(query_dim=8, cross_attention_dim=6, heads=2, dim_head=4))
    x, ctx = torch.randn(2, 5, 8), torch.randn(2, 7, 6)
    attn.set_processor(MDAttnProcessor(0.0, shared_kv=True))
    kk = attn.to_k(ctx).view(2, 7, 2, 4).transpose(1, 2)
    qq = attn.to_q(x).view(2, 5, 2, 4).transpose(1, 2)
    ref = (torch.softmax(qq @ kk.transpose(-1, -2) / 2.0, -1) @ kk).transpose(1, 2).reshape(2, 5, 8)
    with torch.no_grad():
        assert torch.allclose(attn(x, encoder_hidden_states=ctx), attn.to_out[0](ref), atol=1e-5)


def _unit(**md):
    plain = _seeded(Transformer2DModel(**T_KW))
    unit = MDTransformer2DModel(**T_KW, **md).eval()
    missing = unit.load_state_dict(plain.state_dict(), strict=False)
    return plain, unit, missing


def test_decoupled_units_equal_the_plain_unit_with_the_dropped_attention_silenced():
    x, ctx = torch.randn(2, 8, 4, 4), torch.randn(2, 3, 6)
    for md, silenced in (({"md_attention": "cross"}, "attn1"), ({"md_attention": "self"}, "attn2")):
        plain, unit, missing = _unit(**md)
        assert missing.missing_keys == [] and all(f".{silenced}." in k or f".norm{silenced[-1]}." in k
                                                  for k in missing.unexpected_keys)
        with torch.no_grad():
            out = getattr(plain.transformer_blocks[0], silenced).to_out[0]
            out.weight.zero_(), out.bias.zero_()  # the dropped attention adds nothing
            assert torch.allclose(unit(x, encoder_hidden_states=ctx).sample, plain(x, encoder_hidden_states=ctx).sample,
                                  atol=1e-6)
    plain, unit, _ = _unit()  # every option at SD's value: the plain unit, bit for bit
    with torch.no_grad():
        assert torch.equal(unit(x, encoder_hidden_states=ctx).sample, plain(x, encoder_hidden_states=ctx).sample)


def test_feed_forward_width_and_swish():
    unit = _seeded(MDTransformer2DModel(**T_KW, md_ff_inner_dim=24, activation_fn="swiglu"))
    ff = unit.transformer_blocks[0].ff
    assert ff.net[0].proj.weight.shape == (48, 8) and ff.net[2].weight.shape == (8, 24)
    h = torch.randn(2, 5, 8)
    value, gate = (h @ ff.net[0].proj.weight.T + ff.net[0].proj.bias).chunk(2, dim=-1)
    want = (value * gate * torch.sigmoid(gate)) @ ff.net[2].weight.T + ff.net[2].bias  # swish-gated
    with torch.no_grad():
        assert torch.allclose(ff(h), want, atol=1e-6)


def test_tricks_on_a_unet_inherit_record_save_and_load(tmp_path):
    teacher = tiny_unet()
    tricks = MDTricks(separable_levels=(1,), cross_only_levels=(0,), shared_kv=True, ff_mult=3.0, swish=True)
    student = apply_md_tricks(teacher, tricks)
    types = {u.name: u.type for u in list_units(student)}
    assert types["down.1.layer.0.resnet"] == "md_resnet" and types["down.0.layer.0.resnet"] == "resnet"
    assert types["down.0.layer.0.attn"] == "md_attn" and types["mid.attn"] == "md_attn"
    inh = student.inheritance
    a = "down.1.layer.0.attn.transformer_blocks.0"
    assert inh[f"{a}.attn2.to_k.weight"] == "down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k.weight"
    assert f"{a}.attn2.to_v.weight" not in inh and f"down.0.layer.0.attn.transformer_blocks.0.attn1.to_q.weight" not in inh
    assert inh[f"{a}.ff.net.0.proj.weight"] is None  # trimmed 4x -> 3x: derived from the teacher, recorded as new
    assert inh["down.1.layer.0.resnet.conv1.depthwise.weight"] is None
    assert inh["down.1.layer.0.resnet.norm1.weight"] == "down_blocks.1.resnets.0.norm1.weight"
    assert student.num_parameters() < SlimUNet2DConditionModel.from_diffusers(teacher).num_parameters()
    student.save_pretrained(tmp_path)
    back = SlimUNet2DConditionModel.from_pretrained(tmp_path)
    inputs = _inputs()
    assert torch.allclose(_out(back, inputs), _out(student, inputs), atol=1e-6)


def test_relu_fine_tune_starts_at_softmax_and_is_saved(tmp_path):
    teacher = tiny_unet()
    student = apply_md_tricks(teacher, MDTricks(relu=True, relu_mix=0.0))
    inputs = _inputs()
    assert torch.allclose(_out(student, inputs), _out(teacher, inputs), atol=1e-5)  # m = 0: exactly softmax
    assert set_relu_mix(student, 1.0) == 16  # every transformer of the SD topology
    relu = _out(student, inputs)
    assert not torch.allclose(relu, _out(teacher, inputs), atol=1e-3)
    student.save_pretrained(tmp_path)
    back = SlimUNet2DConditionModel.from_pretrained(tmp_path)
    assert torch.allclose(_out(back, inputs), relu, atol=1e-6)
    back.set_attn_processor(AttnProcessor2_0())
    with pytest.raises(ValueError, match="processor was replaced"):
        _out(back, inputs)


def test_replacing_nothing_keeps_the_plain_model_and_its_export():
    teacher = tiny_unet()
    same = apply_md_tricks(teacher, MDTricks(ff_mult=4.0, cross_only_levels=(9,)))  # SD's values: no change
    back = to_diffusers(same)
    assert back is not None and type(back) is type(teacher)
    for key in ("block_out_channels", "down_block_types", "up_block_types", "mid_block_type", "layers_per_block",
                "attention_head_dim", "cross_attention_dim"):
        assert back.config[key] == teacher.config[key] or list(back.config[key]) == list(teacher.config[key])
    assert back.state_dict().keys() == teacher.state_dict().keys()
    assert all(torch.equal(v, back.state_dict()[k]) for k, v in teacher.state_dict().items())
    inputs = _inputs()
    assert torch.equal(_out(back, inputs), _out(teacher, inputs))


def test_profiler_counts_separable_convs_and_the_lut_keys_md_units():
    student = apply_md_tricks(tiny_unet(), MDTricks(separable_levels=(0,), shared_kv=True, relu=True))
    settings = ProfileSettings(latent_size=8, repeats=1, warmup=0, threads=1, measure_latency=False, context_length=5)
    rows = {r.name: r for r in profile_unet(student, settings).units}
    # down.0.layer.0: 8 -> 8 channels at 8x8: two (depthwise 3x3 + pointwise) convs and time_emb_proj (32 -> 8)
    sep = 2 * (2 * 64 * 8 * 9 + conv_flops(8, 8, 1, 8, 8))
    assert rows["down.0.layer.0.resnet"].flops == sep + 2 * 32 * 8
    lut = LatencyLUT.build(student, ProfileSettings(latent_size=8, repeats=1, warmup=0, threads=1, context_length=5))
    keys = " ".join(lut.units)
    assert "SeparableResnetBlock2D(dw3x3+pw)" in keys and "MDTransformer2DModel(both,kv1,relu,geglu)" in keys


def test_bad_input_is_a_one_line_error_naming_the_unit():
    teacher = tiny_unet()
    with pytest.raises(UNetEditError, match=r"^down.0.layer.0.attn: the feed-forward inner width must be an integer "
                                            r">= 1, got 0$"):
        apply_md_tricks(teacher, MDTricks(ff_inner_dim=0))
    with pytest.raises(UNetEditError, match=r"^down.0.downsample: a 'downsample' unit cannot take"):
        apply_md_tricks(teacher, MDTricks(separable_levels=(0,), units=("down.0.downsample",)))
    with pytest.raises(ValueError, match=r"^MobileDiffusion unit: shared key-value projections are the "):
        MDTransformer2DModel(**T_KW, md_attention="self", md_shared_kv=True)
    # a separable ResNet where channels change without a shortcut
    slim = to_slim(teacher)
    blocks = slim.blocks
    blocks["down"][1]["layers"][0][0]["kwargs"]["use_in_shortcut"] = False  # 8 -> 16 channels
    odd = SlimUNet2DConditionModel.from_structure(blocks, **slim.base_config())
    with pytest.raises(UNetEditError, match=r"^down.1.layer.0.resnet: a separable ResNet changing channels 8->16 "):
        md_replacements(odd, MDTricks(separable_levels=(1,)))
    with pytest.raises(ValueError, match=r"separable ResNet changing channels 8->12 needs its 1x1 shortcut"):
        SeparableResnetBlock2D(in_channels=8, out_channels=12, temb_channels=10, groups=4, use_in_shortcut=False)
