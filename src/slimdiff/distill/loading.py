"""Load and check what a distillation run needs, before any training starts.

Teacher and student: anything `slimdiff.unet.load_unet` accepts, or models already in memory.
Tokenizer, text encoder, VAE and noise schedule come from a pipeline: the `pipeline` argument,
`--pipeline`, or the teacher when it is a pipeline directory or `toy`. Every check raises a
`ValueError`/`FileNotFoundError` naming the offending value.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Callable

from torch import nn

from slimdiff.distill.config import DistillConfig
from slimdiff.io import read_json


@dataclasses.dataclass
class Parts:
    teacher: nn.Module
    student: nn.Module
    vae: nn.Module
    text_encoder: nn.Module
    tokenizer: Any
    scheduler_config: dict  # the pipeline scheduler's config (noise schedule, prediction_type)
    pipeline: Any  # the StableDiffusionPipeline the parts came from (for O/pipeline)
    pipeline_source: str | None  # its path or "toy" when loaded from disk, else None (in memory)
    input_recipe: dict  # the student's recipe.json ({} when none)
    toy_world: bool  # the pipeline is the embedded toy world (judge features available)


def is_pipeline_source(value: str) -> bool:
    return value == "toy" or (Path(value) / "model_index.json").is_file()


def check_path(flag: str, value: str | None) -> None:
    """A model argument is a built-in name or an existing local path (nothing is downloaded)."""
    from slimdiff.unet.builtins import BUILTIN_CONFIGS

    if value is not None and value != "toy" and value not in BUILTIN_CONFIGS and not Path(value).exists():
        raise FileNotFoundError(f"{flag} {value!r}: no such file or directory (slimdiff never downloads; "
                                f"give a local path, 'toy' or one of {sorted(BUILTIN_CONFIGS)})")


def _load(flag: str, value: str, fn: Callable[[str], Any]) -> Any:
    """Call `fn(value)`, prefixing any error with the flag and value it came from."""
    check_path(flag, value)
    try:
        return fn(value)
    except (ValueError, FileNotFoundError, OSError) as e:
        raise type(e)(f"{flag} {value!r}: {e}") from None


def check_compatible(teacher: nn.Module, student: nn.Module, text_dim: int, latent_channels: int) -> None:
    """Teacher and student must read and write the same latents and text embeddings."""
    from slimdiff.unet import text_widths

    problems = []
    for key in ("in_channels", "out_channels"):
        t, s = teacher.config[key], student.config[key]
        if t != s:
            problems.append(f"{key}: teacher {t}, student {s}")
    t_dims, s_dims = text_widths(teacher), text_widths(student)
    if s_dims and t_dims and s_dims != t_dims:
        problems.append(f"cross_attention_dim: teacher {sorted(t_dims)}, student {sorted(s_dims)}")
    if problems:
        raise ValueError("teacher and student do not match: " + "; ".join(problems))
    for name, unet in (("teacher", teacher), ("student", student)):
        dims = text_widths(unet)
        if dims and dims != {text_dim}:
            raise ValueError(f"the {name}'s cross_attention_dim {sorted(dims)} does not match the text encoder's "
                             f"hidden size {text_dim} (pass the matching --pipeline)")
        if unet.config["in_channels"] != latent_channels:
            raise ValueError(f"the {name}'s in_channels {unet.config['in_channels']} does not match the VAE's "
                             f"latent_channels {latent_channels}")


def load_parts(config: DistillConfig, teacher: nn.Module | None = None, student: nn.Module | None = None,
               pipeline: Any = None) -> Parts:
    """1. pipeline parts, 2. teacher, 3. student and its recipe, 4. compatibility checks."""
    from slimdiff.unet import load_pipeline, load_unet

    # 1. the pipeline that provides tokenizer / text encoder / VAE / schedule
    for flag, value, given in (("--teacher", config.teacher, teacher), ("--student", config.student, student),
                               ("--pipeline", config.pipeline, pipeline)):
        if given is None:
            check_path(flag, value)
    source = None
    if pipeline is None:
        if config.pipeline is not None:
            source, flag = config.pipeline, "--pipeline"
        elif config.teacher is not None and is_pipeline_source(config.teacher):
            source, flag = config.teacher, "--teacher"  # also when the teacher U-Net is passed in memory
        else:
            what = f"the teacher {config.teacher!r} is a bare U-Net" if config.teacher is not None else \
                "the teacher is in memory (DistillConfig.teacher=None)"
            raise ValueError(f"{what}: give --pipeline (a diffusers pipeline directory or 'toy') for the "
                             f"tokenizer, text encoder, VAE and noise schedule")
        pipeline = _load(flag, source, load_pipeline)
    # 2. the teacher: in memory, the pipeline's own U-Net, or loaded
    if teacher is None:
        if config.teacher is None:
            raise ValueError("no teacher: set DistillConfig.teacher or pass teacher=")
        teacher = pipeline.unet if source is not None and source == config.teacher else \
            _load("--teacher", config.teacher, load_unet)
    # 3. the student and the recipe it was made with
    if student is None:
        if config.student is None:
            raise ValueError("no student: set DistillConfig.student (e.g. a `slimdiff prune` output) or pass student=")
        student = _load("--student", config.student, load_unet)
    # the recipe of the directory the student came from (also when the caller passes it loaded)
    recipe: dict = {}
    if config.student is not None and (Path(config.student) / "recipe.json").is_file():
        recipe = read_json(Path(config.student) / "recipe.json")
    if student is teacher:
        raise ValueError("teacher and student are the same object; load or copy the student separately")
    # 4. checks
    vae, text_encoder = pipeline.vae, pipeline.text_encoder
    check_compatible(teacher, student, text_encoder.config.hidden_size, vae.config.latent_channels)
    toy = "toy" in (source, config.pipeline, config.teacher)
    if not toy and source is not None:
        try:
            from slimdiff.toy import pipeline_path

            toy = Path(source).resolve() == Path(pipeline_path()).resolve()
        except FileNotFoundError:
            pass
    return Parts(teacher=teacher, student=student, vae=vae, text_encoder=text_encoder, tokenizer=pipeline.tokenizer,
                 scheduler_config=dict(pipeline.scheduler.config), pipeline=pipeline, pipeline_source=source,
                 input_recipe=recipe, toy_world=toy)
