"""A model ready to sample: a pipeline loaded as its own class, its parts swapped, its scheduler
picked, and its sampling defaults read once, when it is loaded.

    pipe = resolve_pipeline("runs/bk-small-8step")     # toy, a pipeline dir, a prune/distill output, a U-Net
    sampling_defaults(pipe)                            # SamplingDefaults(steps=8, guidance=5.0, ...)
    steps, guidance = fill_sampling(pipe, None, None)  # the one place a missing value is filled
    with scheduler_swapped(pipe, "ddim"): ...

Loading: any local pipeline directory is loaded as the class its `model_index.json` names
(`StableDiffusionPipeline`, `StableDiffusionXLPipeline`, ...) through diffusers'
`DiffusionPipeline.from_pretrained`. The recipe saved beside it (`recipe.json`, `slimdiff.recipe`)
is read there, once: its `sampling` entry (written by step distillation) becomes the pipeline's
`SamplingDefaults`, kept with the U-Net it was recorded for (a U-Net swapped in later does not
inherit it). Otherwise the defaults are the world's (the toy sampler: 20 steps, guidance 5) or the
field's (25 steps, guidance 7.5; METHODS.md section 7).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import weakref
from pathlib import Path

import torch
from diffusers import (
    DDIMScheduler,
    DDPMScheduler,
    DiffusionPipeline,
    DPMSolverMultistepScheduler,
    EulerDiscreteScheduler,
    PNDMScheduler,
)

from slimdiff.io import NAMED_PIPELINES, named_pipeline
from slimdiff.recipe import read_recipe, sampling_of, teacher_of
from slimdiff.toy.evaluate import DEFAULT_GUIDANCE as TOY_GUIDANCE
from slimdiff.toy.evaluate import DEFAULT_STEPS as TOY_STEPS
from slimdiff.toy.tokenizer import build_tokenizer
from slimdiff.unet import load_unet, resolve_source
from slimdiff.unet.io import check_text_width
from slimdiff.vae.model import pipeline_with_vae

# scheduler name -> diffusers class; built with `.from_config(pipe.scheduler.config)`
SCHEDULERS = {
    "ddim": DDIMScheduler,
    "dpm": DPMSolverMultistepScheduler,
    "pndm": PNDMScheduler,  # as Stable Diffusion configures it: PLMS only (skip_prk_steps=True)
    "euler": EulerDiscreteScheduler,
    "ddpm": DDPMScheduler,
}
FIELD_STEPS, FIELD_GUIDANCE = 25, 7.5  # the field's protocol (METHODS.md section 7)


@dataclasses.dataclass(frozen=True)
class SamplingDefaults:
    """How a model samples when the caller does not say: steps, guidance and what they cost."""

    steps: int  # denoising steps
    guidance: float  # classifier-free guidance scale w (1: none)
    scheduler: str | None = None  # the scheduler class the recipe names (None: the pipeline's own)
    guidance_embedded: bool = False  # w enters through the U-Net's time_cond_proj_dim (one call a step)
    unet_calls_per_step: int = 2  # 2 with classifier-free guidance, 1 without or when embedded
    origin: str = "field"  # "recipe" (recorded by the model's own training), "world" or "field"

    @classmethod
    def from_recipe(cls, sampling: dict) -> "SamplingDefaults":
        """From a recipe's validated `sampling` entry (`slimdiff.recipe.validate_recipe`)."""
        guidance = float(sampling["guidance"])
        embedded = bool(sampling.get("guidance_embedded", False))
        calls = sampling.get("unet_calls_per_step", 1 if embedded or guidance == 1 else 2)
        return cls(sampling["steps"], guidance, sampling.get("scheduler"), embedded, calls, "recipe")


# pipeline -> (its recorded defaults, the U-Net they were recorded for); filled once by `load_pipeline`
_RECORDED: "weakref.WeakKeyDictionary[DiffusionPipeline, tuple[SamplingDefaults, torch.nn.Module]]" = \
    weakref.WeakKeyDictionary()


def make_scheduler(name: str, pipe: DiffusionPipeline):
    """A scheduler of kind `name` (see SCHEDULERS) with the pipeline's noise schedule."""
    if name not in SCHEDULERS:
        raise ValueError(f"unknown scheduler {name!r}; valid names: {', '.join(SCHEDULERS)}")
    config = dict(pipe.scheduler.config)
    overrides = {"skip_prk_steps": True} if name == "pndm" and "skip_prk_steps" not in config else {}
    if name in ("ddim", "ddpm") and "clip_sample" not in config:
        # their default clips x0 to [-1, 1]: right for pixels, wrong for latents (SD-1.5's own DDIM config
        # says clip_sample=false); a DPM-Solver config has no such key, so it would silently clip
        overrides["clip_sample"] = False
    return SCHEDULERS[name].from_config(config, **overrides)


@contextlib.contextmanager
def scheduler_swapped(pipe: DiffusionPipeline, name: str | None):
    """Within the block the pipeline samples with scheduler `name` (None: its own); restored after."""
    own = pipe.scheduler
    if name is not None:
        pipe.scheduler = make_scheduler(name, pipe)
    try:
        yield pipe
    finally:
        pipe.scheduler = own


def is_toy_pipeline(pipe: DiffusionPipeline) -> bool:
    """True when the pipeline speaks the toy world's language (its tokenizer is the toy's): the one test."""
    tok = getattr(pipe, "tokenizer", None)
    return tok is not None and tok.get_vocab() == build_tokenizer().get_vocab()


def load_pipeline(name_or_path: str | os.PathLike, unet: torch.nn.Module | None = None) -> DiffusionPipeline:
    """The pipeline `toy` or a local directory holds, as the class its model_index.json names
    (`unet` replaced if given), with the sampling defaults its recipe records."""
    kind, path = resolve_source(name_or_path)
    if kind != "pipeline":
        raise ValueError(f"{name_or_path!r} is not a pipeline: pass `toy` or a directory with model_index.json")
    class_name = json.loads((path / "model_index.json").read_text()).get("_class_name")
    if not isinstance(class_name, str) or not class_name:
        raise ValueError(f"{path / 'model_index.json'} names no pipeline class (_class_name)")
    if unet is not None:
        check_text_width(unet, path, name_or_path)
    try:
        pipe = DiffusionPipeline.from_pretrained(path, **({"unet": unet} if unet is not None else {}))
    except (AttributeError, ImportError) as e:
        raise ValueError(f"{path}: cannot load pipeline class {class_name!r} with this diffusers ({e})") from None
    sampling = sampling_of(read_recipe(path))
    if sampling is not None and (unet is None or _is_saved_kind(unet, path)):
        _RECORDED[pipe] = (SamplingDefaults.from_recipe(sampling), pipe.unet)
    return pipe


def _is_saved_kind(unet: torch.nn.Module, path: Path) -> bool:
    """Whether `unet` is of the class and guidance embedding of the U-Net saved in pipeline `path`
    (a recipe's sampling record is that U-Net's, not another's put in its place)."""
    config = path / "unet" / "config.json"
    saved = json.loads(config.read_text()) if config.is_file() else {}
    return saved.get("_class_name") == type(unet).__name__ and \
        saved.get("time_cond_proj_dim") == unet.config.get("time_cond_proj_dim")


def resolve_pipeline(model, base: str | os.PathLike | None = None) -> DiffusionPipeline:
    """A pipeline from what a user names.

    `model`: a pipeline (returned as is); `"toy"`; a pipeline directory (`model_index.json`); a
    prune/distill output directory (its `pipeline/` subdirectory is used when present); a U-Net
    directory or a U-Net module, placed into the pipeline `base` (default: the `teacher` named in
    the directory's `recipe.json`, else "toy" for a module).
    """
    if isinstance(model, DiffusionPipeline):
        return model
    if isinstance(model, torch.nn.Module):
        return load_pipeline(str(base) if base is not None else "toy", unet=model)
    path = Path(model)
    if path.is_dir() and (path / "pipeline" / "model_index.json").is_file():
        return load_pipeline(path / "pipeline")  # a prune/distill output
    if not path.is_dir() and named_pipeline(str(model)) is None:
        raise FileNotFoundError(
            f"model {str(model)!r} is neither a registered name ({', '.join(NAMED_PIPELINES)}) nor an existing "
            f"directory (a diffusers pipeline directory, or a prune/distill output directory); hub ids are not "
            f"downloaded"
        )
    if path.is_dir() and not any((path / f).is_file() for f in ("model_index.json", "config.json")):
        raise FileNotFoundError(f"{path} has no model_index.json, pipeline/ or config.json: not a diffusers "
                                f"pipeline, prune/distill output or U-Net directory")
    kind, path = resolve_source(model)
    if kind == "pipeline":
        return load_pipeline(model)
    # a U-Net alone: host it in its teacher's pipeline
    base = base if base is not None else teacher_of(read_recipe(path))
    if base is None:
        raise ValueError(
            f"{path} holds a U-Net but no pipeline, and its recipe.json names no teacher: pass the "
            f"pipeline to run it in (--base toy or --base PIPELINE_DIR)"
        )
    return load_pipeline(str(base), unet=load_unet(str(path)))


def with_vae(pipe: DiffusionPipeline, vae) -> DiffusionPipeline:
    """`pipe`, or a copy of it decoding with `vae` (a module or a `load_vae` argument); the copy keeps
    `pipe`'s recorded sampling defaults (same U-Net)."""
    if vae is None:
        return pipe
    swapped = pipeline_with_vae(pipe, vae)
    if pipe in _RECORDED:
        _RECORDED[swapped] = _RECORDED[pipe]
    return swapped


def sampling_defaults(pipe: DiffusionPipeline, toy: bool | None = None) -> SamplingDefaults:
    """What `pipe` samples with when not told: its recorded defaults while its U-Net is the one they
    were recorded for, else the toy sampler's on the toy world, else the field's."""
    recorded = _RECORDED.get(pipe)
    if recorded is not None and recorded[1] is pipe.unet:
        return recorded[0]
    toy = is_toy_pipeline(pipe) if toy is None else toy
    steps, guidance = (TOY_STEPS, TOY_GUIDANCE) if toy else (FIELD_STEPS, FIELD_GUIDANCE)
    return SamplingDefaults(steps, guidance, origin="world" if toy else "field")


def fill_sampling(pipe: DiffusionPipeline, steps: int | None, guidance: float | None,
                  toy: bool | None = None) -> tuple[int, float]:
    """(steps, guidance): the given values, each None replaced by `sampling_defaults(pipe)`'s."""
    if steps is not None and guidance is not None:
        return steps, guidance
    d = sampling_defaults(pipe, toy)
    return (d.steps if steps is None else steps), (d.guidance if guidance is None else guidance)
