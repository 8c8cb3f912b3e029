"""sd15-arch at real scale, on the meta device (shapes only): parameters and FLOPs in a second."""

import pytest
import torch
from diffusers import UNet2DConditionModel

from slimdiff.profile import ProfileSettings, analytic_unit_flops, list_units, profile_unet
from slimdiff.unet import apply_preset
from slimdiff.unet.builtins import SD15_CONFIG

META = dict(resolution=512, device="meta", measure_latency=False)


@pytest.fixture(scope="module")
def sd15():
    with torch.device("meta"):
        return UNet2DConditionModel(**SD15_CONFIG).eval()


def test_sd15_params_and_flops_at_512(sd15):
    result = profile_unet(sd15, ProfileSettings(**META), name="sd15-arch")
    assert result.total.params == 859_520_964
    # 2 x 401.6 GMACs, attention matmuls included
    assert result.total.flops == 803_273_441_280
    # outside the units: conv_in and conv_out (3x3, 4 <-> 320 at 64x64) and the time MLP (320 -> 1280 -> 1280)
    assert result.other.flops == 2 * 2 * 64 * 64 * 4 * 320 * 9 + 2 * (320 * 1280 + 1280 * 1280)
    units = {u.name: u for u in list_units(sd15)}
    for row in result.units:  # every unit's counted FLOPs equal the analytic formula
        u = units[row.name]
        assert row.flops == analytic_unit_flops(u.module, u.kind, row.spatial, row.spatial), row.name
    kinds = {k.name: k for k in result.kinds}
    # METHODS.md section 1: attention holds few parameters but most of the FLOPs at 512px
    assert kinds["attn"].params_share < 0.35 and kinds["attn"].flops_share > kinds["resnet"].flops_share


def test_meta_device_needs_no_latency():
    with pytest.raises(ValueError, match="device 'meta' has shapes but no data"):
        ProfileSettings(device="meta")


def test_bk_small_on_meta(sd15):
    student, _ = apply_preset(sd15, "bk-small")
    result = profile_unet(student, ProfileSettings(**META))
    assert "mid" not in [b.name for b in result.blocks]
    assert result.total.params == sum(p.numel() for p in student.parameters())
    assert 1.5 < 803_273_441_280 / result.total.flops < 1.6  # BK-SDM-Small: ~1.5x fewer MACs
