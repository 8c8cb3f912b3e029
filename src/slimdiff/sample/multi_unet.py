"""Multi-U-Net dynamic processing (A-SDM section 2.4, Table 3): U-Net A for the first k steps, B after.

    from slimdiff.sample import MultiUNetStableDiffusionPipeline, multi_unet_pipeline
    pipe = multi_unet_pipeline("runs/bk-base:10,toy:15", base="toy")   # S1: small 10, large 15
    images = pipe(prompt, num_inference_steps=25).images
    pipe.save_pretrained("runs/s1"); MultiUNetStableDiffusionPipeline.from_pretrained("runs/s1")

A-SDM S1: "a small UNet is adopted in the initial stage (first 10 steps) to quickly generate the
prototype, and then a large UNet in the later stage (last 15 steps)". A step is one iteration of
the pipeline's denoising loop (one U-Net call, both guidance branches batched).

Components: the usual `StableDiffusionPipeline` ones, where `unet` is U-Net B (the rest of the
steps; the pipeline's latent shape and dtype come from it), plus `unet_first`, U-Net A (the
first `first_steps` steps; None when first_steps is 0). Config: `first_steps` (k) and
`total_steps` (the schedule's sum; a call with another num_inference_steps is an error; None:
any). Both U-Nets are saved and loaded as components, so `from_pretrained` restores the pipeline.
"""

from __future__ import annotations

import os
from typing import Any

from diffusers import StableDiffusionPipeline

from slimdiff.sample.load import resolve_pipeline


class _Switch:
    """Stands in for `pipe.unet` during one call: the first k calls go to A, the rest to B;
    every attribute (config, dtype, ...) is B's."""

    def __init__(self, first, rest, k: int):
        self._first, self._rest, self._k, self.calls = first, rest, k, 0

    def __call__(self, *args, **kwargs):
        unet = self._first if self.calls < self._k else self._rest
        self.calls += 1
        return unet(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._rest, name)


class MultiUNetStableDiffusionPipeline(StableDiffusionPipeline):
    """`StableDiffusionPipeline` running `unet_first` for the first `first_steps` steps, then `unet`."""

    _optional_components = [*StableDiffusionPipeline._optional_components, "unet_first"]

    def __init__(self, vae, text_encoder, tokenizer, unet, scheduler, safety_checker=None, feature_extractor=None,
                 image_encoder=None, requires_safety_checker: bool = False, unet_first=None, first_steps: int = 0,
                 total_steps: int | None = None):
        super().__init__(vae, text_encoder, tokenizer, unet, scheduler, safety_checker, feature_extractor,
                         image_encoder, requires_safety_checker)
        check_schedule(first_steps, total_steps, unet_first is not None)
        if unet_first is not None:
            check_pair(unet_first, unet)
        self.register_modules(unet_first=unet_first)
        self.register_to_config(first_steps=first_steps, total_steps=total_steps)

    def __call__(self, *args, **kwargs):
        """As `StableDiffusionPipeline.__call__` (pass num_inference_steps by keyword)."""
        if len(args) > 3:
            raise ValueError("pass num_inference_steps (and what follows it) by keyword")
        steps = kwargs.get("num_inference_steps", 50)  # StableDiffusionPipeline's default
        k, total = self.config.first_steps, self.config.total_steps
        if total is not None and steps != total:
            raise ValueError(f"the U-Net schedule runs {k} + {total - k} = {total} steps, but the sampler was asked "
                             f"for num_inference_steps={steps}; ask for {total} or build another schedule")
        if k > steps:
            raise ValueError(f"first_steps={k} is more than num_inference_steps={steps}")
        rest = self.unet
        object.__setattr__(self, "unet", _Switch(self.unet_first, rest, k))  # not a component change
        try:
            return super().__call__(*args, **kwargs)
        finally:
            object.__setattr__(self, "unet", rest)


def check_schedule(first_steps: int, total_steps: int | None, has_first: bool) -> None:
    if not isinstance(first_steps, int) or first_steps < 0:
        raise ValueError(f"first_steps must be an integer >= 0, got {first_steps!r}")
    if first_steps > 0 and not has_first:
        raise ValueError(f"first_steps={first_steps} but no unet_first was given")
    if total_steps is not None and total_steps < max(1, first_steps):
        raise ValueError(f"total_steps={total_steps} must be >= 1 and >= first_steps={first_steps}")


def check_pair(a, b) -> None:
    """U-Nets A and B must read and write the same latents."""
    for key in ("in_channels", "out_channels"):
        if a.config[key] != b.config[key]:
            raise ValueError(f"the two U-Nets differ in {key}: {a.config[key]} (first) vs {b.config[key]}")


def parse_schedule(spec: str) -> list[tuple[str, int]]:
    """"small:10,large:15" -> [("small", 10), ("large", 15)] (MODEL:STEPS pairs in order)."""
    out = []
    for part in spec.split(","):
        model, sep, steps = part.strip().rpartition(":")
        if not sep or not model or not steps.strip().isdigit():
            raise ValueError(f"--unets {spec!r}: {part!r} is not MODEL:STEPS (e.g. runs/bk-small:10,toy:15)")
        out.append((model, int(steps)))
    if not 1 <= len(out) <= 2:
        raise ValueError(f"--unets {spec!r}: give one or two MODEL:STEPS entries, got {len(out)}")
    if sum(s for _, s in out) < 1:
        raise ValueError(f"--unets {spec!r}: the steps sum to 0")
    return out


def multi_unet_pipeline(schedule: str | list[tuple[str, int]], base: str | os.PathLike | None = None,
                        steps: int | None = None) -> MultiUNetStableDiffusionPipeline:
    """A pipeline from a schedule (`parse_schedule`): the last entry's U-Net is `unet` (B), the first
    one's `unet_first` (A). Each MODEL is anything `slimdiff.sample.resolve_pipeline` takes
    (a bare U-Net directory is hosted in `base`). Tokenizer, text encoder, VAE and scheduler come
    from `base`, else from B's pipeline. `steps`: the sampler's steps, checked against the sum."""

    entries = parse_schedule(schedule) if isinstance(schedule, str) else list(schedule)
    total = sum(s for _, s in entries)
    if steps is not None and steps != total:
        raise ValueError(f"the U-Net schedule {entries} sums to {total} steps but the sampler runs {steps}")
    pipe = resolve_pipeline(base if base is not None else entries[-1][0])
    last = resolve_pipeline(entries[-1][0], base=base).unet if base is not None else pipe.unet
    first = resolve_pipeline(entries[0][0], base=base).unet if len(entries) == 2 else None
    components = {k: v for k, v in pipe.components.items() if k in ("vae", "text_encoder", "tokenizer", "scheduler",
                                                                      "safety_checker", "feature_extractor",
                                                                      "image_encoder")}
    return MultiUNetStableDiffusionPipeline(**components, unet=last, unet_first=first,
                                            first_steps=entries[0][1] if first else 0,
                                            total_steps=total,
                                            requires_safety_checker=bool(pipe.config.get("requires_safety_checker")))
