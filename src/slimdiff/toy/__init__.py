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


def pipeline_xl_path() -> Path:
    """The SDXL toy world's `StableDiffusionXLPipeline` directory (`toy-xl`: the same world, VAE and
    tokenizer; SDXL-base's U-Net topology at toy width, two text encoders, time ids; `toy.train.TOY_XL`)."""
    path = ASSETS / "pipeline-xl"
    if not (path / "model_index.json").is_file():
        raise FileNotFoundError(f"the toy-xl pipeline is missing from the package: {path} has no model_index.json "
                                f"(its recipe: `slimdiff toy train --world toy-xl`)")
    return path


register_named_pipeline("toy", pipeline_path)  # `load_unet("toy")`, `slimdiff evaluate toy`, ...
register_named_pipeline("toy-xl", pipeline_xl_path)


# judge version -> its weights directory under assets/ (model.safetensors, pca.safetensors, recipe.json)
JUDGES: dict[str, str] = {
    "v2": "judge",  # the first judge of the v2 world: mild augmentation (3x3 blur, jitter, faint noise)
    "v3": "judge-v3",  # v2 fine-tuned 200 steps on randomly blurred / resampled / noised renders (toy.degrade)
}
# the judge evaluations use unless told (`EvalConfig.judge_version`, `--judge`): v2, since v3 reads clean
# renders 1.3 points less often all-correct and blobs 2 points less often as blobs (docs/bench/judge.md)
DEFAULT_JUDGE = "v2"


def judge_path(version: str | None = None) -> Path:
    """The shipped weights directory of judge `version` (a name in `JUDGES`; None: `DEFAULT_JUDGE`)."""
    version = DEFAULT_JUDGE if version is None else version
    if version not in JUDGES:
        raise ValueError(f"judge version {version!r} is not one of {list(JUDGES)}")
    path = ASSETS / JUDGES[version]
    if not (path / "model.safetensors").is_file():
        raise FileNotFoundError(f"the toy judge {version} is missing from the package: {path} has no model.safetensors")
    return path
