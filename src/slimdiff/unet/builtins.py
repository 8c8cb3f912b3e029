"""Architecture-only built-in U-Nets: the exact SD-1.5, SD-2.1-base and SDXL-base UNet configs.

Written out from the `unet/config.json` of the public checkpoints
(runwayml/stable-diffusion-v1-5, stabilityai/stable-diffusion-2-1-base,
stabilityai/stable-diffusion-xl-base-1.0); diffusers defaults fill the rest. Weights are random (seeded), for structure, profiling and speed work.
"""

from __future__ import annotations

import torch

SD15_CONFIG = dict(
    sample_size=64,  # 512px / VAE factor 8
    in_channels=4,
    out_channels=4,
    center_input_sample=False,
    flip_sin_to_cos=True,
    freq_shift=0,
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    mid_block_type="UNetMidBlock2DCrossAttn",
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    block_out_channels=(320, 640, 1280, 1280),
    layers_per_block=2,
    downsample_padding=1,
    mid_block_scale_factor=1,
    act_fn="silu",
    norm_num_groups=32,
    norm_eps=1e-5,
    cross_attention_dim=768,  # CLIP ViT-L/14 text width
    attention_head_dim=8,  # diffusers' name for the number of heads (8 heads everywhere)
    use_linear_projection=False,
    upcast_attention=False,
)

SD21_BASE_CONFIG = dict(
    SD15_CONFIG,
    cross_attention_dim=1024,  # OpenCLIP ViT-H/14 text width
    attention_head_dim=(5, 10, 20, 20),  # heads per block: 64 channels per head
    use_linear_projection=True,
)

# SDXL-base 1.0 (Podell et al. 2023, section 2.1): 3 levels, no attention at the first,
# Transformer depths (-, 2, 10) and 10 in the mid block, 2,567,463,684 parameters.
SDXL_CONFIG = dict(
    SD15_CONFIG,  # the shared settings (stem, norms, activation, padding); what differs:
    sample_size=128,  # 1024px / VAE factor 8
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    block_out_channels=(320, 640, 1280),
    cross_attention_dim=2048,  # CLIP ViT-L (768) + OpenCLIP bigG (1280) hidden states, concatenated
    attention_head_dim=(5, 10, 20),  # heads per block: 64 channels per head
    transformer_layers_per_block=(1, 2, 10),  # the first entry is unused (DownBlock2D)
    use_linear_projection=True,
    upcast_attention=None,  # as the checkpoint's config writes it
    addition_embed_type="text_time",
    addition_time_embed_dim=256,  # sinusoid width per time id
    projection_class_embeddings_input_dim=2816,  # 1280 pooled bigG + 6 time ids x 256
)
SDXL_PARAMS = 2_567_463_684  # parameters of SDXL_CONFIG (checked by tests/unet/test_sdxl.py)

# built-in name -> diffusers UNet2DConditionModel config
BUILTIN_CONFIGS = {"sd15-arch": SD15_CONFIG, "sd21-arch": SD21_BASE_CONFIG, "sdxl-arch": SDXL_CONFIG}


def build_builtin(name: str, seed: int = 0):
    """A plain diffusers `UNet2DConditionModel` with the built-in config and seeded random weights."""
    from diffusers import UNet2DConditionModel

    if name not in BUILTIN_CONFIGS:
        raise ValueError(f"unknown built-in U-Net {name!r}; valid: {sorted(BUILTIN_CONFIGS)}")
    with torch.random.fork_rng(devices=[]):  # leave the caller's RNG state alone
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(**BUILTIN_CONFIGS[name])
    return unet.eval()
