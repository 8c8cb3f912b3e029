"""Load and check what a training run needs, before any training starts; save what it made.

Teacher and student: anything `slimdiff.unet.load_unet` accepts, or models already in memory.
Tokenizer, text encoder, VAE and noise schedule come from a pipeline: the `pipeline` argument,
`--pipeline`, or the teacher when it is a pipeline directory or the toy world; an SDXL pipeline also
gives its second tokenizer and text encoder (the pooled text and time ids are built in
`slimdiff.data.cache.BatchEncoder` and reach both U-Nets through `added_cond_kwargs`). Every check raises
a `ValueError`/`FileNotFoundError` naming the offending value. `CallerState` puts the caller's
in-memory modules back as they were; `save_pipeline` writes out/pipeline with the trained U-Net;
`precompute_cache` fills the latent/text cache a run reads.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
from pathlib import Path
from typing import Any, Callable

import torch
from diffusers import DDPMScheduler
from torch import nn

from slimdiff.data import build_dataset
from slimdiff.data.cache import BatchEncoder, EncodingCache, fill_cache
from slimdiff.data.toy import WORLD, is_toy_source
from slimdiff.io import NAMED_PIPELINES, apply_file_modes, is_pipeline_source
from slimdiff.recipe import read_recipe
from slimdiff.train.speed import DTYPES
from slimdiff.unet import load_unet, resolve_source, save_pipeline_with_unet, text_widths, to_diffusers
from slimdiff.sample import is_sdxl_pipeline, load_pipeline
from slimdiff.unet.builtins import BUILTIN_CONFIGS


@dataclasses.dataclass
class Parts:
    teacher: nn.Module
    student: nn.Module
    vae: nn.Module
    text_encoder: nn.Module
    tokenizer: Any
    scheduler_config: dict  # the pipeline scheduler's config (noise schedule, prediction_type)
    pipeline: Any  # the StableDiffusionPipeline the parts came from (for O/pipeline)
    pipeline_source: str | None  # its path or name when loaded from disk, else None (in memory)
    input_recipe: dict  # the student's recipe.json ({} when none)
    toy_world: bool  # the pipeline is the embedded toy world (judge features available)
    tokenizer_2: Any = None  # SDXL's second tokenizer and text encoder (None otherwise)
    text_encoder_2: nn.Module | None = None


def check_path(flag: str, value: str | None) -> None:
    """A model argument is a built-in name or an existing local path (nothing is downloaded)."""
    named = (*NAMED_PIPELINES, *BUILTIN_CONFIGS)  # the registered pipelines ('toy', 'toy-xl') and built-ins
    if value is not None and value not in named and not Path(value).exists():
        raise FileNotFoundError(f"{flag} {value!r}: no such file or directory (slimdiff never downloads; "
                                f"give a local path or one of {sorted(named)})")


def load_checked(flag: str, value: str, fn: Callable[[str], Any]) -> Any:
    """Call `fn(value)`, prefixing any error with the flag and value it came from."""
    check_path(flag, value)
    try:
        return fn(value)
    except (ValueError, FileNotFoundError, OSError) as e:
        raise type(e)(f"{flag} {value!r}: {e}") from None


def check_compatible(teacher: nn.Module, student: nn.Module, text_dim: int, latent_channels: int,
                     added: str | None = None) -> None:
    """Teacher and student must read and write the same latents and text embeddings; `added`: the
    pipeline's added conditioning ("text_time": SDXL's pooled text and time ids), which both read."""
    problems = []
    for key in ("in_channels", "out_channels", "addition_embed_type", "projection_class_embeddings_input_dim"):
        t, s = teacher.config.get(key), student.config.get(key)
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
        if unet.config.get("addition_embed_type") != added:
            raise ValueError(f"the {name}'s addition_embed_type {unet.config.get('addition_embed_type')!r} does not "
                             f"match the pipeline's ({added!r}: pass the matching --pipeline)")


def load_parts(config, teacher: nn.Module | None = None, student: nn.Module | None = None,
               pipeline: Any = None) -> Parts:
    """1. pipeline parts, 2. teacher, 3. student and its recipe, 4. compatibility checks.
    `config`: its `teacher`, `student` and `pipeline` sources (a `DistillConfig`)."""
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
            raise ValueError(f"{what}: give --pipeline (a diffusers pipeline directory or {WORLD!r}) for the "
                             f"tokenizer, text encoder, VAE and noise schedule")
        pipeline = load_checked(flag, source, load_pipeline)
    # 2. the teacher: in memory, the pipeline's own U-Net, or loaded
    if teacher is None:
        if config.teacher is None:
            raise ValueError("no teacher: set DistillConfig.teacher or pass teacher=")
        teacher = pipeline.unet if source is not None and source == config.teacher else \
            load_checked("--teacher", config.teacher, load_unet)
    # 3. the student and the recipe it was made with
    if student is None:
        if config.student is None:
            raise ValueError("no student: set DistillConfig.student (e.g. a `slimdiff prune` output) or pass student=")
        student = load_checked("--student", config.student, load_unet)
    # the recipe of the directory the student came from (also when the caller passes it loaded)
    recipe = read_recipe(config.student) if config.student is not None else {}
    if student is teacher:
        raise ValueError("teacher and student are the same object; load or copy the student separately")
    # 4. checks
    check_trainable_pipeline(pipeline)
    vae, text_encoder, second = pipeline.vae, pipeline.text_encoder, second_text_encoder(pipeline)
    text_dim = text_encoder.config.hidden_size + (second.config.hidden_size if second is not None else 0)
    check_compatible(teacher, student, text_dim, vae.config.latent_channels, "text_time" if second else None)
    toy = any(is_toy_source(v) for v in (source, config.pipeline, config.teacher))
    return Parts(teacher=teacher, student=student, vae=vae, text_encoder=text_encoder, tokenizer=pipeline.tokenizer,
                 scheduler_config=dict(pipeline.scheduler.config), pipeline=pipeline, pipeline_source=source,
                 input_recipe=recipe, toy_world=toy, text_encoder_2=second,
                 tokenizer_2=pipeline.tokenizer_2 if second is not None else None)


def second_text_encoder(pipeline) -> nn.Module | None:
    """SDXL's second text encoder (its pooled projection feeds the added conditioning), else None."""
    return pipeline.text_encoder_2 if is_sdxl_pipeline(pipeline) else None


class CallerState:
    """What training changes on the caller's in-memory modules: training flag, `requires_grad`
    flags and device. `restore()` puts them back (the student: its `requires_grad` flags only;
    it is trained in place and comes back in eval mode on the training device)."""

    def __init__(self, frozen: list, student):
        def state(m):
            p = next(m.parameters(), None)
            return m, m.training, [q.requires_grad for q in m.parameters()], p.device if p is not None else None

        self.frozen = [state(m) for m in frozen if isinstance(m, nn.Module)]
        self.student = state(student) if isinstance(student, nn.Module) else None

    def restore(self) -> None:
        for m, training, flags, device in self.frozen:
            for q, flag in zip(m.parameters(), flags):
                q.requires_grad_(flag)
            m.train(training)
            if device is not None:
                m.to(device)
        if self.student is not None:
            for q, flag in zip(self.student[0].parameters(), self.student[2]):
                q.requires_grad_(flag)


def source_path(name: str | None) -> Path | None:
    """The directory a --teacher / --student / --pipeline name reads (None for built-ins)."""
    if name is None:
        return None
    try:
        return resolve_source(name)[1]
    except (ValueError, FileNotFoundError):
        return Path(name)  # load_parts reports it


def noise_scheduler(config: dict) -> DDPMScheduler:
    """The training noise schedule: DDPM with the pipeline scheduler's betas and prediction type."""
    return DDPMScheduler.from_config({k: v for k, v in config.items() if not k.startswith("_")})


def save_pipeline(parts: Parts, unet: nn.Module, out: Path, scheduler: Any = None) -> Path:
    """`out`: the pipeline the parts came from with `unet` as its U-Net (so `slimdiff evaluate` runs);
    `scheduler`: replaces the pipeline's own."""
    if parts.pipeline_source is not None:
        return save_pipeline_with_unet(parts.pipeline_source, unet, out, scheduler=scheduler)
    plain = unet if type(unet).__name__ == "UNet2DConditionModel" else (to_diffusers(unet) or unet)
    comps = dict(parts.pipeline.components)
    comps["unet"] = plain
    if scheduler is not None:
        comps["scheduler"] = scheduler
    tmp = out.with_name(f".{out.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    type(parts.pipeline)(**comps).save_pretrained(tmp, safe_serialization=True)  # its own class (SDXL too)
    apply_file_modes(tmp)
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)
    return out


def check_trainable_pipeline(pipeline) -> None:
    """Raise in one line for a pipeline the training data path does not encode: SDXL's refiner (no
    first text encoder; its time ids hold an aesthetic score instead of the target size)."""
    if is_sdxl_pipeline(pipeline) and getattr(pipeline, "text_encoder", None) is None:
        raise ValueError(f"training on a {type(pipeline).__name__} without text_encoder (SDXL's refiner: one text "
                         f"encoder, aesthetic-score time ids) is not supported; train the base pipeline")


def precompute_cache(cfg, progress: bool = True) -> tuple[int, Path]:
    """Fill `cfg.cache_dir` with the encodings of the whole data set `cfg.data`, exactly as the
    trainer would write them (same resolution, encoders, dtype and cache key), with a progress bar.
    Returns (items encoded now, the cache directory). A later `distill` with this `--cache-dir`
    skips image loading and both encoders from its first step. `cfg`: a `DistillConfig`."""
    if cfg.cache_dir is None:
        raise ValueError("precompute_cache needs DistillConfig.cache_dir (--cache-dir DIR)")
    source = cfg.pipeline or (cfg.teacher if cfg.teacher is not None and is_pipeline_source(cfg.teacher) else None)
    if source is None:
        raise ValueError(f"the teacher {cfg.teacher!r} is a bare U-Net: give --pipeline for the tokenizer, text "
                         f"encoder and VAE")
    pipe = load_checked("--pipeline" if cfg.pipeline else "--teacher", source, load_pipeline)
    check_trainable_pipeline(pipe)
    unet = pipe.unet if source == cfg.teacher else load_checked("--teacher", cfg.teacher, load_unet)
    device = torch.device("cuda" if torch.cuda.is_available() and not cfg.cpu else "cpu")
    vae, text_encoder, second = (m.requires_grad_(False).eval().to(device, DTYPES[cfg.mixed_precision])
                                 if m is not None else None
                                 for m in (pipe.vae, pipe.text_encoder, second_text_encoder(pipe)))
    resolution = cfg.resolution or unet.config.sample_size * 2 ** (len(vae.config.block_out_channels) - 1)
    data = build_dataset(cfg.data, resolution, seed=cfg.seed, toy_size=cfg.toy_size,
                         caption_column=cfg.caption_column, image_column=cfg.image_column)
    cache = EncodingCache(cfg.cache_dir, data.fingerprint, vae, text_encoder, second)
    encoder = BatchEncoder(vae, pipe.tokenizer, text_encoder, cache, tokenizer_2=getattr(pipe, "tokenizer_2", None),
                           text_encoder_2=second)
    done = fill_cache(data, encoder, cfg.batch_size, progress)
    return done, cache.dir
