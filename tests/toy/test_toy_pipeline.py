"""The tiny fixtures and the shipped toy pipeline load with plain diffusers and generate."""

import numpy as np
import torch
from diffusers import StableDiffusionPipeline

from slimdiff.testing import tiny_pipeline, tiny_unet, tiny_unet_config
from slimdiff.toy import pipeline_path

SD15_DOWN = ["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"]
SD15_UP = ["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3


def test_tiny_unet_has_sd15_topology():
    cfg = tiny_unet_config()
    assert list(cfg["down_block_types"]) == SD15_DOWN and list(cfg["up_block_types"]) == SD15_UP
    assert cfg["mid_block_type"] == "UNetMidBlock2DCrossAttn" and cfg["layers_per_block"] == 2
    a, b = tiny_unet(seed=0), tiny_unet(seed=0)
    assert all(torch.equal(x, y) for x, y in zip(a.parameters(), b.parameters()))
    assert not a.training
    x = torch.randn(2, 4, 8, 8)
    out = a(x, torch.tensor([10, 500]), encoder_hidden_states=torch.randn(2, 5, cfg["cross_attention_dim"])).sample
    assert out.shape == x.shape


def test_tiny_pipeline_generates(tmp_path):
    path = tiny_pipeline(tmp_path / "pipe", seed=0)
    pipe = StableDiffusionPipeline.from_pretrained(path)
    pipe.set_progress_bar_config(disable=True)
    out = pipe(["a small red circle on the left", "a large blue square above a small cyan triangle"],
               negative_prompt=["", "blue"], num_inference_steps=2, guidance_scale=5.0, output_type="np",
               generator=torch.Generator().manual_seed(0)).images
    assert out.shape == (2, 64, 64, 3) and np.isfinite(out).all()


def test_shipped_pipeline_loads_with_plain_diffusers():
    pipe = StableDiffusionPipeline.from_pretrained(pipeline_path())
    pipe.set_progress_bar_config(disable=True)
    unet = pipe.unet.config
    assert list(unet.down_block_types) == SD15_DOWN and list(unet.up_block_types) == SD15_UP
    assert unet.mid_block_type == "UNetMidBlock2DCrossAttn" and unet.layers_per_block == 2
    size = sum(f.stat().st_size for f in pipeline_path().rglob("*") if f.is_file())
    assert size < 40e6
    kw = dict(num_inference_steps=2, guidance_scale=5.0, output_type="np")
    a = pipe("a large red circle left of a small blue square", generator=torch.Generator().manual_seed(0), **kw).images
    b = pipe("a large red circle left of a small blue square", generator=torch.Generator().manual_seed(0), **kw).images
    assert a.shape == (1, 64, 64, 3) and np.array_equal(a, b)
