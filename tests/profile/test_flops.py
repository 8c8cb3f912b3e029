"""Counted FLOPs (FlopCounterMode + SDPA mapping) equal the analytic formulas, per unit and in total."""

import pytest
import torch
from diffusers.models.attention_processor import AttnProcessor

from slimdiff.profile import UnitFlopCounter, analytic_unit_flops, list_units, make_unet_inputs
from slimdiff.profile.flops import resnet_flops, transformer_flops
from slimdiff.testing import tiny_unet

BATCH, CONTEXT, LATENT = 2, 7, 8


def count(model, units, latent=LATENT):
    inputs = make_unet_inputs(model, latent, 16, batch=BATCH, context_length=CONTEXT)
    with UnitFlopCounter({u.name: u.module for u in units}) as fc, torch.inference_mode():
        inputs(model)
    return fc


@pytest.fixture(scope="module")
def counted():
    unet = tiny_unet(seed=0)
    units = list_units(unet)
    return unet, units, count(unet, units)


@pytest.mark.parametrize("kind", ["resnet", "attn", "downsample", "upsample"])
def test_analytic_equals_counted_per_unit(counted, kind):
    _, units, fc = counted
    chosen = [u for u in units if u.kind == kind]
    assert chosen
    for u in chosen:
        side = LATENT >> u.level
        expected = analytic_unit_flops(u.module, u.kind, side, side, batch=BATCH, context_length=CONTEXT)
        assert fc.by_name[u.name] == expected, u.name


def test_formulas_by_hand():
    # down.1.layer.0.resnet of the tiny net: 8 -> 16 channels at 4x4, temb 32, batch 2
    conv1 = 2 * 2 * 16 * 16 * 8 * 9
    conv2 = 2 * 2 * 16 * 16 * 16 * 9
    temb = 2 * 2 * 32 * 16
    shortcut = 2 * 2 * 16 * 16 * 8
    assert resnet_flops(8, 16, 4, 4, temb_channels=32, batch=2) == conv1 + conv2 + temb + shortcut
    # a transformer on 2x2 tokens, C = I = 4, text 3 x 5, FF 16: count term by term (batch 1)
    n, c, l, d, f = 4, 4, 3, 5, 16
    self_attn = 4 * 2 * n * c * c + 2 * 2 * n * n * c
    cross = 2 * 2 * n * c * c + 2 * 2 * l * d * c + 2 * 2 * n * l * c
    ff = 2 * n * c * 2 * f + 2 * n * f * c
    proj = 2 * 2 * n * c * c
    assert transformer_flops(c, 2, 2, context_length=l, cross_attention_dim=d) == proj + self_attn + cross + ff


def test_units_plus_other_equal_total_and_sdpa_equals_plain_processor(counted):
    unet, units, fc = counted
    # the CPU SDPA kernel is counted through SDPA_FLOP_MAPPING; the plain processor runs the
    # same matmuls as baddbmm/bmm, which FlopCounterMode counts natively
    plain = tiny_unet(seed=0)
    plain.set_attn_processor(AttnProcessor())
    plain_units = list_units(plain)
    fc_plain = count(plain, plain_units)
    assert fc_plain.total == fc.total
    assert fc_plain.by_name == fc.by_name
    # what is outside the units: conv_in, time embedding (2 linears on (B, 32)), conv_out
    c0, temb = 8, 32
    outside = 2 * BATCH * LATENT * LATENT * (4 * c0 * 9 + c0 * 4 * 9) + 2 * BATCH * (c0 * temb + temb * temb)
    assert sum(fc.by_name.values()) + outside == fc.total


def test_attention_matmuls_dominate_at_high_resolution():
    # METHODS.md section 1: cost of self-attention grows with tokens squared
    lo = transformer_flops(320, 8, 8, cross_attention_dim=768)
    hi = transformer_flops(320, 64, 64, cross_attention_dim=768)
    assert hi / lo > 64  # more than linear in tokens (64x tokens)
