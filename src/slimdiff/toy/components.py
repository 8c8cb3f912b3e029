"""Builders for the toy pipeline's components: text encoder, VAE, U-Net, schedulers, pipeline.

Every builder takes its widths as arguments, so the shipped teacher (`slimdiff.toy.train`) and
the tiny test fixtures (`slimdiff.testing`) are built by the same code. The U-Net has SD-1.5's
block topology (3 cross-attention down blocks + 1 plain, cross-attention mid block, 1 plain + 3
cross-attention up blocks, 2 layers per down block), so every SD-1.5 preset and unit name applies
unchanged; or, for the SDXL toy world (`sdxl_unet_config`), SDXL-base's (3 levels, no attention at
the first, Transformer depths (1, 2, 10) and 10 in the mid block, the pooled-text and time-id added
conditioning), so every SDXL preset and unit name applies.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch
from diffusers import (
    AutoencoderKL,
    DDPMScheduler,
    DPMSolverMultistepScheduler,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

from slimdiff.io import read_json, write_json
from slimdiff.toy.tokenizer import MAX_LENGTH, build_tokenizer

SD15_DOWN_BLOCKS = ("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D")
SD15_UP_BLOCKS = ("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D")
SDXL_DOWN_BLOCKS = ("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D")
SDXL_UP_BLOCKS = ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D")

# SD-1.x's noise schedule (scaled-linear betas over 1000 steps, epsilon prediction)
SCHEDULE = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")


def unet_config(
    block_out_channels: Sequence[int],
    cross_attention_dim: int,
    attention_head_dim: int,
    norm_num_groups: int,
    sample_size: int,
    in_channels: int = 4,
) -> dict:
    """A `UNet2DConditionModel` config with SD-1.5's block topology and the given widths.

    `attention_head_dim` is diffusers' (legacy) name for the number of heads per block.
    """
    if len(block_out_channels) != 4:
        raise ValueError(f"block_out_channels needs 4 widths (SD-1.5 has 4 levels), got {tuple(block_out_channels)}")
    bad = [c for c in block_out_channels if c % norm_num_groups or c % attention_head_dim]
    if bad:
        raise ValueError(
            f"block_out_channels {tuple(block_out_channels)}: {bad} not divisible by "
            f"norm_num_groups={norm_num_groups} and attention_head_dim={attention_head_dim}"
        )
    return dict(
        sample_size=sample_size,
        in_channels=in_channels,
        out_channels=in_channels,
        down_block_types=SD15_DOWN_BLOCKS,
        up_block_types=SD15_UP_BLOCKS,
        mid_block_type="UNetMidBlock2DCrossAttn",
        block_out_channels=tuple(block_out_channels),
        layers_per_block=2,
        cross_attention_dim=cross_attention_dim,
        attention_head_dim=attention_head_dim,
        norm_num_groups=norm_num_groups,
        flip_sin_to_cos=True,
        freq_shift=0,
        act_fn="silu",
    )


def sdxl_unet_config(
    block_out_channels: Sequence[int],
    cross_attention_dim: int,
    pooled_dim: int,
    attention_head_dim: int,
    norm_num_groups: int,
    sample_size: int,
    depths: Sequence[int] = (1, 2, 10),
    time_embed_dim: int = 8,
) -> dict:
    """A `UNet2DConditionModel` config with SDXL-base's topology at the given widths: `depths` are the
    Transformer depths per level (the first unused: no attention there; the mid block takes the last),
    `cross_attention_dim` the two text encoders' widths concatenated, `pooled_dim` the second's pooled
    projection, `time_embed_dim` the sinusoid width per time id (SDXL: 256)."""
    if len(block_out_channels) != 3 or len(depths) != 3:
        raise ValueError(f"SDXL's topology has 3 levels: block_out_channels {tuple(block_out_channels)} and depths "
                         f"{tuple(depths)} need 3 entries each")
    bad = [c for c in block_out_channels if c % norm_num_groups or c % attention_head_dim]
    if bad:
        raise ValueError(f"block_out_channels {tuple(block_out_channels)}: {bad} not divisible by "
                         f"norm_num_groups={norm_num_groups} and attention_head_dim={attention_head_dim}")
    return dict(
        sample_size=sample_size, in_channels=4, out_channels=4, down_block_types=SDXL_DOWN_BLOCKS,
        up_block_types=SDXL_UP_BLOCKS, block_out_channels=tuple(block_out_channels), layers_per_block=2,
        transformer_layers_per_block=tuple(depths), cross_attention_dim=cross_attention_dim,
        attention_head_dim=attention_head_dim, norm_num_groups=norm_num_groups, use_linear_projection=True,
        addition_embed_type="text_time", addition_time_embed_dim=time_embed_dim,
        projection_class_embeddings_input_dim=pooled_dim + 6 * time_embed_dim, flip_sin_to_cos=True, freq_shift=0,
        act_fn="silu",
    )


def build_unet(config: dict, seed: int = 0) -> UNet2DConditionModel:
    torch.manual_seed(seed)
    return UNet2DConditionModel(**config)


def build_text_encoder(
    hidden_size: int, num_layers: int, num_heads: int, intermediate_size: int, seed: int = 0,
    with_projection: bool = False,
) -> CLIPTextModel | CLIPTextModelWithProjection:
    """A tiny CLIP text transformer over the toy tokenizer's vocabulary; `with_projection`: with the
    pooled projection (hidden_size wide) SDXL's second text encoder feeds the added conditioning."""
    tok = build_tokenizer()
    config = CLIPTextConfig(
        vocab_size=len(tok),
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        max_position_embeddings=MAX_LENGTH,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        hidden_act="quick_gelu",
        projection_dim=hidden_size,
    )
    torch.manual_seed(seed)
    return CLIPTextModelWithProjection(config) if with_projection else CLIPTextModel(config)


def build_vae(block_out_channels: Sequence[int], norm_num_groups: int, latent_channels: int = 4,
              sample_size: int = 64, seed: int = 0) -> AutoencoderKL:
    """A small KL autoencoder; len(block_out_channels) - 1 halvings (4 widths: 64x64 -> 8x8, SD's 8x)."""
    n = len(block_out_channels)
    torch.manual_seed(seed)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * n,
        up_block_types=("UpDecoderBlock2D",) * n,
        block_out_channels=tuple(block_out_channels),
        layers_per_block=1,
        latent_channels=latent_channels,
        norm_num_groups=norm_num_groups,
        sample_size=sample_size,
    )


def train_scheduler() -> DDPMScheduler:
    """The training noise schedule (SD-1.x's)."""
    return DDPMScheduler(**SCHEDULE, prediction_type="epsilon", clip_sample=False)


def sample_scheduler() -> DPMSolverMultistepScheduler:
    """The sampler shipped with the pipeline: DPM-Solver++ (2M), good in ~20 steps."""
    return DPMSolverMultistepScheduler(**SCHEDULE, prediction_type="epsilon", algorithm_type="dpmsolver++",
                                       solver_order=2, steps_offset=1)


def assemble_pipeline(unet, vae, text_encoder, tokenizer=None, scheduler=None) -> StableDiffusionPipeline:
    """A `StableDiffusionPipeline` from the parts, without safety checker or feature extractor."""
    return StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer if tokenizer is not None else build_tokenizer(),
        unet=unet,
        scheduler=scheduler if scheduler is not None else sample_scheduler(),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def assemble_xl_pipeline(unet, vae, text_encoder, text_encoder_2, scheduler=None) -> StableDiffusionXLPipeline:
    """A `StableDiffusionXLPipeline` from the parts, the toy tokenizer for both encoders. Its unconditional
    input is the empty caption's encoding (`force_zeros_for_empty_prompt=False`): what the toy recipe's
    caption dropout trains."""
    tok = build_tokenizer()
    return StableDiffusionXLPipeline(
        vae=vae, text_encoder=text_encoder, text_encoder_2=text_encoder_2, tokenizer=tok, tokenizer_2=tok, unet=unet,
        scheduler=scheduler if scheduler is not None else sample_scheduler(), force_zeros_for_empty_prompt=False,
    )


def save_pipeline(pipe: StableDiffusionPipeline | StableDiffusionXLPipeline, path: str | Path) -> Path:
    """`save_pretrained` as safetensors; returns the directory."""
    path = Path(path)
    pipe.save_pretrained(path, safe_serialization=True)
    # transformers 5 records its fast tokenizer as `TokenizersBackend`; name the class that both
    # transformers 4.x and 5.x know, so older installs load the directory too
    for name in ("tokenizer", "tokenizer_2"):
        if not (path / name).is_dir():
            continue
        index = read_json(path / "model_index.json")
        index[name] = ["transformers", "PreTrainedTokenizerFast"]
        write_json(path / "model_index.json", index)
        config = read_json(path / name / "tokenizer_config.json")
        config["tokenizer_class"] = "PreTrainedTokenizerFast"
        write_json(path / name / "tokenizer_config.json", config)
    return path
