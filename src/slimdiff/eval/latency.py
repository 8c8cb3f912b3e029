"""Whole-model latency: one U-Net forward, and one end-to-end pipeline call (text -> image).

    unet_latency(unet, batch_size=2)                    # median ms of one forward (2 = a CFG pair)
    pipeline_latency(pipe, steps=25, guidance=7.5)      # median ms of one image, text to pixels
    pipeline_latencies({"a": (pipe_a, 20, 5.0), "b": (pipe_b, 8, 5.0)})   # the same, round-robin

Both time with `slimdiff.profile.latency` (the one timing stack: warm-up calls first, then the
median of `repeats` timed calls, the device synchronised around each); per-unit profiling and
the round-robin comparison of several models (`model_latencies`) live there too.
"""

from __future__ import annotations

import torch

from slimdiff.profile.latency import make_unet_inputs, median, time_call, time_rounds
from slimdiff.unet import text_width


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
    """Median milliseconds of one U-Net forward (diffusers or slim) on seeded random inputs.

    `resolution`: latent side length (default `unet.config.sample_size`; 64 for SD-1.5 at 512 px).
    `seq_len`: text tokens in `encoder_hidden_states` (77 for CLIP; pass the toy tokenizer's
    `model_max_length` to match the toy pipeline), of the U-Net's own text width
    (`slimdiff.unet.text_width`). `batch_size=2` times a classifier-free guidance pair. Runs on the
    U-Net's own device and dtype (move or cast it beforehand), in eval mode.
    """

    was_training = unet.training
    unet.eval()
    size = resolution or unet.config.sample_size
    # sample (B, C, h, w), timestep (B,) = 500, text (B, seq_len, D)
    inputs = make_unet_inputs(unet, size, text_width(unet), batch_size, seq_len, seed=seed)
    try:
        return median(time_call(lambda: inputs(unet), warmup, repeats, inputs.sample.device))
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
    try:
        call = _pipeline_call(pipe, steps, guidance, resolution, prompt, batch_size, seed)
        return median(time_call(call, warmup, repeats, device))
    finally:
        pipe._progress_bar_config = bar


def pipeline_latencies(
    pipes: dict[str, tuple[object, int, float]],
    repeats: int = 3,
    warmup: int = 1,
    prompt: str = "a small red circle left of a large blue square",
    seed: int = 0,
) -> dict[str, float]:
    """{name: median ms of one end-to-end call} for {name: (pipeline, steps, guidance)}, timed
    round-robin (`time_rounds`: every pipeline once per round), so that a shared machine's load
    changes hit all of them alike. One image each, at each pipeline's own resolution."""
    first = next(iter(pipes.values()))[0]
    device = torch.device(getattr(first, "_execution_device", None) or first.device)
    bars = {name: dict(getattr(p, "_progress_bar_config", {})) for name, (p, _, _) in pipes.items()}
    try:
        calls = {name: _pipeline_call(p, steps, guidance, None, prompt, 1, seed)
                 for name, (p, steps, guidance) in pipes.items()}
        return {name: median(ms) for name, ms in time_rounds(calls, warmup, repeats, device).items()}
    finally:
        for name, (p, _, _) in pipes.items():
            p._progress_bar_config = bars[name]


def _pipeline_call(pipe, steps: int, guidance: float, resolution: int | None, prompt: str, batch_size: int,
                   seed: int):
    """A no-argument call of `pipe` (progress bar off): `batch_size` images of `prompt`, seeded noise."""
    pipe.set_progress_bar_config(disable=True)

    def run():
        generator = torch.Generator("cpu").manual_seed(seed)
        return pipe(prompt=[prompt] * batch_size, num_inference_steps=steps, guidance_scale=guidance,
                    height=resolution, width=resolution, generator=generator, output_type="pil")

    return run
