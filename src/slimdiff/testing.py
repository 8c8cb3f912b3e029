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
