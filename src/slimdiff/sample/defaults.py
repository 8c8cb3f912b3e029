"""Sampling settings a model records for itself (a step-distilled student's steps and guidance).

    recorded_sampling(pipe)   # (8, 5.0) for a `slimdiff step-distill` output, None for a plain pipeline

The recipe.json beside a pipeline's model_index.json may hold `"sampling": {"steps": N,
"guidance": w, ...}` (written by `slimdiff.distill.step`); `slimdiff generate` / `evaluate` use it
when --steps / --guidance are not given. A pipeline whose unet was swapped after loading keeps
its directory's record only while the unet is the one saved there (checked by class and config).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def recorded_sampling(pipe: Any) -> tuple[int, float] | None:
    """(steps, guidance) from the recipe of the directory `pipe` was loaded from, else None."""
    source = getattr(pipe, "config", {}).get("_name_or_path")
    if not source or not (Path(source) / "recipe.json").is_file():
        return None
    sampling = json.loads((Path(source) / "recipe.json").read_text()).get("sampling")
    if not isinstance(sampling, dict):
        return None
    unet_config = Path(source) / "unet" / "config.json"
    if unet_config.is_file():  # the record is the saved unet's: not for another one put in its place
        saved = json.loads(unet_config.read_text())
        unet = getattr(pipe, "unet", None)
        if unet is None or saved.get("_class_name") != type(unet).__name__ or \
                saved.get("time_cond_proj_dim") != unet.config.get("time_cond_proj_dim"):
            return None
    steps, guidance = sampling.get("steps"), sampling.get("guidance")
    if not isinstance(steps, int) or steps < 1 or not isinstance(guidance, (int, float)):
        raise ValueError(f"{Path(source) / 'recipe.json'}: 'sampling' needs integer steps >= 1 and a number "
                         f"guidance, got steps={steps!r}, guidance={guidance!r}")
    return steps, float(guidance)
