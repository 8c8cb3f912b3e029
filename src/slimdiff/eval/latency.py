"""Whole-model latency: one U-Net forward, and one end-to-end pipeline call (text -> image).

    unet_latency(unet, batch_size=2)                    # median ms of one forward (2 = a CFG pair)
    pipeline_latency(pipe, steps=25, guidance=7.5)      # median ms of one image, text to pixels

Warm-up runs first (allocator, kernel selection, lazy init); then the median of `repeats` timed
runs. On CUDA the device is synchronised around each run. Per-unit profiling lives in
`slimdiff.profile`; these helpers time whole models only.
"""

from __future__ import annotations

import statistics
import time
from typing import Callable

import torch


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_ms(fn: Callable[[], object], repeats: int, warmup: int, device: torch.device) -> list[float]:
    """Wall-clock milliseconds of `repeats` calls of `fn` after `warmup` untimed calls."""
    if repeats < 1 or warmup < 0:
        raise ValueError(f"need repeats >= 1 and warmup >= 0, got repeats={repeats}, warmup={warmup}")
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        _sync(device)
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append((time.perf_counter() - t0) * 1000.0)
    return times


@torch.no_grad()
def unet_latency(
    unet: torch.nn.Module,
    batch_size: int = 1,
    resolution: int | None = None,
    seq_len: int = 77,
    repeats: int = 10,
    warmup: int = 3,
    seed: int = 0,
) -> float:
    """Median milliseconds of one U-Net forward on random inputs.

    `resolution`: latent side length (default `unet.config.sample_size`; 64 for SD-1.5 at 512 px).
    `seq_len`: text tokens in `encoder_hidden_states` (77 for CLIP; pass the toy tokenizer's
    `model_max_length` to match the toy pipeline). `batch_size=2` times a classifier-free guidance
    pair. Runs on the U-Net's own device and dtype (move or cast it beforehand), in eval mode.
    """
    param = next(unet.parameters())
    device, dtype = param.device, param.dtype
    was_training = unet.training
    unet.eval()
    cfg = unet.config
    size = resolution or cfg.sample_size
    g = torch.Generator("cpu").manual_seed(seed)
    sample = torch.randn(batch_size, cfg.in_channels, size, size, generator=g).to(device, dtype)  # (B, C, h, w)
    context = torch.randn(batch_size, seq_len, cfg.cross_attention_dim, generator=g).to(device, dtype)  # (B, L, D)
    timestep = torch.full((batch_size,), 500, device=device, dtype=torch.long)

    def run():
        return unet(sample, timestep, encoder_hidden_states=context, return_dict=False)

    try:
        return statistics.median(time_ms(run, repeats, warmup, device))
    finally:
        unet.train(was_training)


def pipeline_latency(
    pipe,
    steps: int = 25,
    guidance: float = 7.5,
    resolution: int | None = None,
    repeats: int = 3,
    warmup: int = 1,
    prompt: str = "a small red circle left of a large blue square",
    batch_size: int = 1,
    seed: int = 0,
) -> float:
    """Median milliseconds of one end-to-end call: text encoding, `steps` denoising steps (two
    U-Net evaluations each when guidance > 1), and VAE decoding of `batch_size` images.

    `resolution`: image side in pixels (default: the pipeline's, U-Net sample_size x VAE factor).
    """
    device = torch.device(getattr(pipe, "_execution_device", None) or pipe.device)
    bar = dict(getattr(pipe, "_progress_bar_config", {}))
    pipe.set_progress_bar_config(disable=True)

    def run():
        generator = torch.Generator("cpu").manual_seed(seed)
        return pipe(
            prompt=[prompt] * batch_size,
            num_inference_steps=steps,
            guidance_scale=guidance,
            height=resolution,
            width=resolution,
            generator=generator,
            output_type="pil",
        )

    try:
        return statistics.median(time_ms(run, repeats, warmup, device))
    finally:
        pipe._progress_bar_config = bar
