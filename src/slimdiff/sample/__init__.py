"""slimdiff.sample: sampling pipelines. `multi_unet`: A-SDM's multi-U-Net dynamic processing."""

from .multi_unet import MultiUNetStableDiffusionPipeline, multi_unet_pipeline, parse_schedule

__all__ = ["MultiUNetStableDiffusionPipeline", "multi_unet_pipeline", "parse_schedule"]
