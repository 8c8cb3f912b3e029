"""Tiny seeded fixtures for tests: a U-Net with SD-1.5's block topology and a whole pipeline.

    from slimdiff.testing import tiny_unet, tiny_pipeline
    unet = tiny_unet(seed=0)                      # diffusers UNet2DConditionModel, ~350K params
    path = tiny_pipeline(tmp_path / "pipe")       # StableDiffusionPipeline.from_pretrained(path)

Everything is random-weighted and builds in well under a second on a CPU.
"""

from __future__ import annotations

import json

from pathlib import Path

from diffusers import UNet2DConditionModel

from slimdiff.toy import components

TINY_CROSS_ATTENTION_DIM = 16  # = the tiny text encoder's hidden size


def tiny_unet_config() -> dict:
    """SD-1.5's block topology (3 cross-attn down + 1 plain, cross-attn mid, 1 plain + 3
    cross-attn up, 2 layers per block) at widths (8, 16, 16, 32), on 8x8 latents."""
    return components.unet_config(
        block_out_channels=(8, 16, 16, 32),
        cross_attention_dim=TINY_CROSS_ATTENTION_DIM,
        attention_head_dim=2,  # heads per block (diffusers' legacy name)
        norm_num_groups=4,
        sample_size=8,
    )


def tiny_unet(seed: int = 0) -> UNet2DConditionModel:
    """A random-weighted diffusers U-Net from `tiny_unet_config()`, in eval mode."""
    return components.build_unet(tiny_unet_config(), seed=seed).eval()


def tiny_pipeline(path: str | Path, seed: int = 0) -> Path:
    """Write a complete tiny `StableDiffusionPipeline` to `path` and return it.

    Word-level toy tokenizer, 1-layer CLIP text encoder (hidden 16), a 4-level KL-VAE
    (64x64 images <-> 8x8x4 latents, the toy world's sizes), DPM-Solver++ scheduler, `tiny_unet(seed)`; no safety
    checker. Loads offline with `StableDiffusionPipeline.from_pretrained(path)`.
    """
    unet = tiny_unet(seed)
    text_encoder = components.build_text_encoder(
        hidden_size=TINY_CROSS_ATTENTION_DIM, num_layers=1, num_heads=2, intermediate_size=32, seed=seed
    )
    vae = components.build_vae(block_out_channels=(8, 8, 16, 16), norm_num_groups=4, sample_size=64, seed=seed)
    pipe = components.assemble_pipeline(unet, vae, text_encoder)
    return components.save_pipeline(pipe, path)


def clip_alphabet():
    """GPT-2 / CLIP byte-level alphabet: 256 printable characters."""
    bs = list(range(33, 127)) + list(range(161, 173)) + list(range(174, 256))
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return [chr(c) for c in cs]


def tiny_clip_tokenizer(d):
    """A byte-level CLIP tokenizer (no merges: one token per character) written to `d`."""
    from transformers import CLIPTokenizer

    d.mkdir(parents=True, exist_ok=True)
    chars = clip_alphabet()
    vocab = {t: i for i, t in enumerate(chars + [c + "</w>" for c in chars] + ["<|startoftext|>", "<|endoftext|>"])}
    (d / "vocab.json").write_text(json.dumps(vocab))
    (d / "merges.txt").write_text("#version: 0.2\n")
    return CLIPTokenizer(str(d / "vocab.json"), str(d / "merges.txt"), model_max_length=77)


def tiny_sdxl_unet_config() -> dict:
    """SDXL's U-Net topology at diffusers' test sizes (`tests/pipelines/stable_diffusion_xl`): a
    plain then a cross-attention down block with Transformer depth 2, the text/time added
    conditioning (8 sinusoids per time id, a 32-wide pooled text embedding), text width 64
    (two 32-wide text encoders concatenated), 16x16 latents."""
    return dict(
        block_out_channels=(32, 64), layers_per_block=2, sample_size=16, in_channels=4, out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4), use_linear_projection=True, addition_embed_type="text_time",
        addition_time_embed_dim=8, transformer_layers_per_block=(1, 2),
        projection_class_embeddings_input_dim=80,  # 6 x 8 time ids + 32 pooled text
        cross_attention_dim=64,  # 32 + 32: the two text encoders concatenated
    )


def tiny_sdxl_base_unet_config() -> dict:
    """SDXL-base's exact topology (3 levels, no attention at the first, Transformer depths 2 and 10,
    10 in the mid block, the text/time added conditioning) at toy width (16, 32, 64), 8x8 latents:
    every SDXL preset and unit name applies as is."""
    return dict(tiny_sdxl_unet_config(), block_out_channels=(16, 32, 64), norm_num_groups=8, sample_size=8,
                down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
                up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
                attention_head_dim=(1, 2, 4), transformer_layers_per_block=(1, 2, 10))


def tiny_sdxl_unet(seed: int = 0, **overrides) -> UNet2DConditionModel:
    """A random-weighted diffusers U-Net from `tiny_sdxl_unet_config()` (with `overrides`), in eval mode."""
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return UNet2DConditionModel(**{**tiny_sdxl_unet_config(), **overrides}).eval()


def tiny_sdxl_pipeline(path: str | Path, seed: int = 0) -> Path:
    """Write a tiny `StableDiffusionXLPipeline` to `path` (diffusers' test configs: `tiny_sdxl_unet`,
    two 32-wide CLIP text encoders, the second with a 32-dim projection, one byte-level tokenizer
    for both, a 2-level VAE: 32x32 images <-> 16x16x4 latents, Euler) and return it."""
    import torch
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionXLPipeline
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    path = Path(path)
    with torch.random.fork_rng(devices=[]):  # one seeded stream: U-Net, VAE, then the text encoders
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(**tiny_sdxl_unet_config()).eval()
        vae = AutoencoderKL(block_out_channels=[32, 64], in_channels=3, out_channels=3,
                            down_block_types=["DownEncoderBlock2D"] * 2, up_block_types=["UpDecoderBlock2D"] * 2,
                            latent_channels=4, sample_size=32, norm_num_groups=8)  # 8 groups: prune-vae can halve it
        text = CLIPTextConfig(bos_token_id=0, eos_token_id=2, hidden_size=32, intermediate_size=37,
                              layer_norm_eps=1e-05, num_attention_heads=4, num_hidden_layers=2, pad_token_id=1,
                              vocab_size=1000, hidden_act="gelu", projection_dim=32)
        encoder, encoder_2 = CLIPTextModel(text), CLIPTextModelWithProjection(text)
    tokenizer = tiny_clip_tokenizer(path.parent / f"{path.name}-tokenizer")
    pipe = StableDiffusionXLPipeline(
        vae=vae, text_encoder=encoder, text_encoder_2=encoder_2, tokenizer=tokenizer, tokenizer_2=tokenizer, unet=unet,
        scheduler=EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, steps_offset=1,
                                         beta_schedule="scaled_linear", timestep_spacing="leading"),
    )
    pipe.save_pretrained(path)
    return path
