"""slimdiff.toy: the embedded default, a tiny Stable Diffusion pipeline of a synthetic world.

    from diffusers import StableDiffusionPipeline
    from slimdiff.toy import pipeline_path, world
    pipe = StableDiffusionPipeline.from_pretrained(pipeline_path())   # offline, plain diffusers
    scene = world.sample_scenes("test", 1, seed=0)[0]
    image = pipe(world.caption(scene), num_inference_steps=20, guidance_scale=5.0).images[0]

Modules: `world` (renderer, captions, splits), `judge` (the attribute reader and its scores),
`evaluate` (sampling defaults), `train` (the recipe that made the shipped assets).
Evaluation: `slimdiff.eval.evaluate("toy")` or `slimdiff evaluate toy`.
"""

from __future__ import annotations

from pathlib import Path

from slimdiff.io import register_named_pipeline

ASSETS = Path(__file__).resolve().parent / "assets"


def pipeline_path() -> Path:
    """The shipped diffusers pipeline directory (model_index.json, unet/, vae/, text_encoder/, ...)."""
    path = ASSETS / "pipeline"
    if not (path / "model_index.json").is_file():
        raise FileNotFoundError(f"the toy pipeline is missing from the package: {path} has no model_index.json")
    return path


register_named_pipeline("toy", pipeline_path)  # `load_unet("toy")`, `slimdiff evaluate toy`, ...


def judge_path() -> Path:
    """The shipped judge weights directory (model.safetensors)."""
    path = ASSETS / "judge"
    if not (path / "model.safetensors").is_file():
        raise FileNotFoundError(f"the toy judge is missing from the package: {path} has no model.safetensors")
    return path
