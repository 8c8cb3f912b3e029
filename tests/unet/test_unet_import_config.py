"""Import refuses diffusers config settings it would drop (issue 12 item 8)."""

import pytest
import torch

from slimdiff.testing import tiny_unet_config
from slimdiff.toy import components
from slimdiff.unet import SlimUNet2DConditionModel, UNetEditError, to_slim
from slimdiff.unet.structure import blocks_from_diffusers_config


@pytest.mark.parametrize("key, value", [
    ("resnet_out_scale_factor", 2.0),
    ("resnet_skip_time_act", True),
    ("mid_block_only_cross_attention", True),
    ("cross_attention_norm", "group_norm"),
    ("addition_time_embed_dim", 256),
])
def test_non_default_unused_settings_are_refused(key, value):
    cfg = {**tiny_unet_config(), key: value}
    with pytest.raises(UNetEditError, match=rf"unsupported UNet config: {key}={value!r}; .* do not use it"):
        blocks_from_diffusers_config(cfg)
    if key in ("resnet_out_scale_factor", "resnet_skip_time_act", "cross_attention_norm"):
        unet = components.build_unet(cfg, seed=0)  # diffusers builds it (and ignores the value here)
        with pytest.raises(UNetEditError, match=key):
            SlimUNet2DConditionModel.from_diffusers(unet)


def test_default_values_stated_explicitly_still_import():
    unet = components.build_unet(tiny_unet_config(), seed=0).eval()
    cfg = dict(unet.config)
    assert {"resnet_out_scale_factor", "resnet_skip_time_act", "cross_attention_norm"} <= set(cfg)
    slim = to_slim(unet)
    x, c = torch.randn(1, 4, 8, 8), torch.randn(1, 3, 16)
    with torch.no_grad():
        assert torch.equal(slim(x, 5, encoder_hidden_states=c).sample, unet(x, 5, encoder_hidden_states=c).sample)
    blocks_from_diffusers_config({**cfg, "mid_block_only_cross_attention": False})
