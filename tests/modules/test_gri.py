"""GRI attention unit type (A-SDM 1): identities, FLOPs (counted = analytic), LUT key, save/load."""

import pytest
import torch
from diffusers.models.attention_processor import AttnProcessor2_0

from slimdiff.modules import GRISettings, apply_gri, gri_attention
from slimdiff.profile import LatencyLUT, ProfileSettings, analytic_unit_flops, profile_unet
from slimdiff.testing import tiny_unet
from slimdiff.unet import SlimUNet2DConditionModel, list_units


def _inputs(size=8, batch=2):
    g = torch.Generator().manual_seed(1)
    return torch.randn(batch, 4, size, size, generator=g), torch.tensor([10, 500][:batch]), \
        torch.randn(batch, 5, 16, generator=g)


def _out(model, inputs):
    with torch.no_grad():
        return model(*inputs).sample


def _full(q, k, v, heads):
    b, n, inner = q.shape
    split = lambda t: t.view(b, n, heads, -1).transpose(1, 2)  # noqa: E731
    return torch.nn.functional.scaled_dot_product_attention(split(q), split(k), split(v)) \
        .transpose(1, 2).reshape(b, n, inner)


def test_whole_map_window_without_pooling_is_full_attention():
    torch.manual_seed(0)
    # a window covering the whole (square) map, no global set: exactly full attention
    q, k, v = (torch.randn(2, 36, 8) for _ in range(3))
    assert torch.allclose(gri_attention(q, k, v, 2, (6, 6), window=6, reduction=None), _full(q, k, v, 2), atol=1e-6)
    # pooling by 1 repeats every key once: the softmax weights halve, the result is the same
    assert torch.allclose(gri_attention(q, k, v, 2, (6, 6), window=6, reduction=1), _full(q, k, v, 2), atol=1e-6)


def test_windows_attend_to_their_own_window_and_the_pooled_map():
    torch.manual_seed(0)
    q, k, v = (torch.randn(1, 16, 4) for _ in range(3))  # 4x4 map, 1 head
    out = gri_attention(q, k, v, 1, (4, 4), window=2, reduction=2)
    # token (0, 0): window = tokens 0, 1, 4, 5; pooled = means of the four 2x2 windows
    idx = [0, 1, 4, 5]
    pool = lambda t: t[0].view(2, 2, 2, 2, 4).permute(0, 2, 1, 3, 4).reshape(4, 4, 4).mean(1)  # noqa: E731
    keys, vals = torch.cat([k[0, idx], pool(k)]), torch.cat([v[0, idx], pool(v)])
    want = torch.softmax(q[0, 0] @ keys.T / 2.0, -1) @ vals
    assert torch.allclose(out[0, 0], want, atol=1e-6)


def test_gri_unet_with_whole_map_window_equals_the_plain_unet():
    unet = tiny_unet()
    gri = apply_gri(unet, GRISettings(window=8, reduction=None, levels=(0,)))
    assert [u.type for u in list_units(gri) if u.level == 0 and u.kind == "attn"] == ["gri_attn"] * 5
    assert all(v is not None for v in gri.inheritance.values())  # every tensor inherited
    inputs = _inputs()
    assert torch.allclose(_out(gri, inputs), _out(unet, inputs), atol=1e-5)
    small = apply_gri(unet, GRISettings(window=4, reduction=2, levels=(0,)))
    assert not torch.allclose(_out(small, inputs), _out(unet, inputs), atol=1e-4)


def test_profiler_counts_gri_attention_and_the_lut_keys_it():
    unet = apply_gri(tiny_unet(), GRISettings(window=4, reduction=2, levels=(0,)))
    settings = ProfileSettings(latent_size=8, repeats=1, warmup=0, threads=1, measure_latency=False, context_length=5)
    result = profile_unet(unet, settings)
    rows = {r.name: r for r in result.units}
    name = "down.0.layer.0.attn"
    module = unet.get_submodule(name)
    assert rows[name].flops == analytic_unit_flops(module, "attn", 8, 8, context_length=5)
    plain = tiny_unet().down_blocks[0].attentions[0]
    # self-attention matmuls: 64 queries x (16 window + 16 pooled) keys instead of 64 keys
    diff = analytic_unit_flops(plain, "attn", 8, 8, context_length=5) - rows[name].flops
    assert diff == 2 * 2 * 64 * (64 - 32) * 8
    lut = LatencyLUT.build(unet, ProfileSettings(latent_size=8, repeats=1, warmup=0, threads=1, context_length=5))
    assert any("GRITransformer2DModel(w4,r2)" in key for key in lut.units)
    assert lut.predict(unet) > 0


def test_save_load_round_trip(tmp_path):
    unet = apply_gri(tiny_unet(), GRISettings(window=4, reduction=2, levels=(0, 1)))
    unet.save_pretrained(tmp_path)
    back = SlimUNet2DConditionModel.from_pretrained(tmp_path)
    inputs = _inputs()
    assert all(torch.equal(v, back.state_dict()[k]) for k, v in unet.state_dict().items())
    # same tensors; oneDNN may pick another conv path for another buffer alignment (1-ulp differences)
    assert torch.allclose(_out(back, inputs), _out(unet, inputs), atol=1e-6)


def test_bad_input_is_a_one_line_error():
    with pytest.raises(ValueError, match=r"window 3 does not divide the 8x8 map"):
        apply_gri(tiny_unet(), GRISettings(window=3))
    with pytest.raises(ValueError, match="window must be an integer >= 1"):
        GRISettings(window=0)
    unet = apply_gri(tiny_unet(), GRISettings(window=4, reduction=2, levels=(0, 1)))
    with pytest.raises(ValueError, match=r"window 4 does not divide the 6x6 map"):
        _out(unet, _inputs(size=12))
    unet.set_attn_processor(AttnProcessor2_0())
    with pytest.raises(ValueError, match="processor was replaced by AttnProcessor2_0"):
        _out(unet, _inputs())
