"""slimdiff.sample: a model ready to sample.

    from slimdiff.sample import generate, resolve_pipeline, sampling_defaults
    pipe = resolve_pipeline("runs/bk-small-8step")   # loaded as its model_index.json class
    sampling_defaults(pipe)                          # steps, guidance, ... read once from its recipe
    images = generate(pipe, ["a small red circle on the left"], seed=0)

`conditioning`: the text inputs each pipeline class feeds its U-Net (SDXL: pooled text, time ids);
`load`: loading by class, named pipelines (`toy`), swapping a U-Net or VAE, schedulers, sampling
defaults; `generate`: images from prompts with per-image seeds; `prompts`: prompt checks;
`multi_unet`: A-SDM's multi-U-Net dynamic processing; `cache`, `peers`: feature caching and the
training-free peers (DeepCache, ToMe).
"""

from .conditioning import Conditioning, encode_prompts, is_sdxl_pipeline, sdxl_time_ids
from .generate import generate, image_generators, iter_generate, read_prompts, save_images
from .load import (
    SCHEDULERS,
    SamplingDefaults,
    fill_sampling,
    is_toy_pipeline,
    load_pipeline,
    make_scheduler,
    resolve_pipeline,
    sampling_defaults,
    scheduler_swapped,
    with_vae,
)
from .multi_unet import MultiUNetStableDiffusionPipeline, multi_unet_pipeline, parse_schedule

__all__ = [
    "Conditioning", "encode_prompts", "is_sdxl_pipeline", "sdxl_time_ids",
    "MultiUNetStableDiffusionPipeline", "SCHEDULERS", "SamplingDefaults", "fill_sampling", "generate",
    "image_generators", "is_toy_pipeline", "iter_generate", "load_pipeline", "make_scheduler",
    "multi_unet_pipeline", "parse_schedule", "read_prompts", "resolve_pipeline", "sampling_defaults",
    "save_images", "scheduler_swapped", "with_vae",
]
