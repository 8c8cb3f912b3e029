"""Training-free sampling accelerators (METHODS.md section 8), chosen by a short spec string.

    from slimdiff.sample.peers import apply_accelerator
    undo = apply_accelerator(pipe, "deepcache:3")   # slimdiff's own DeepCache-style cache, any U-Net
    undo = apply_accelerator(pipe, "tome:0.5")      # ToMe for SD (tomesd), merge ratio 0.5
    undo()                                          # the pipeline as it was

Specs (`ACCELERATORS`): `deepcache:N` (slimdiff.sample.cache: full U-Net every N-th call, works on
every student and scheduler), `deepcache-lib:N` (the DeepCache 0.1.1 package itself, cache_branch_id
0: diffusers U-Nets with a mid block only), `tome:R` (tomesd.apply_patch(pipe, ratio=R)). The
packages are the optional extra `pip install slimdiff[peers]`; a missing one is a one-line error.
"""

from __future__ import annotations

import importlib
from typing import Any, Callable

from slimdiff.sample.cache import FeatureCache

# name -> (value type, what the value is, valid check, package it needs or None)
ACCELERATORS: dict[str, tuple[type, str, Callable[[Any], bool], str | None]] = {
    "deepcache": (int, "cache interval N >= 1 (DeepCache's documented 3)", lambda v: v >= 1, None),
    "deepcache-lib": (int, "cache interval N >= 1 (DeepCache's documented 3)", lambda v: v >= 1, "DeepCache"),
    "tome": (float, "merge ratio R in [0, 1) (ToMe's documented 0.5)", lambda v: 0 <= v < 1, "tomesd"),
}


def parse_accelerator(spec: str) -> tuple[str, int | float]:
    """'deepcache:3' -> ('deepcache', 3); raises ValueError naming the valid forms."""
    name, sep, raw = str(spec).partition(":")
    forms = ", ".join(f"{n}:{'N' if t is int else 'R'}" for n, (t, *_rest) in ACCELERATORS.items())
    if name not in ACCELERATORS or not sep:
        raise ValueError(f"--accelerate {spec!r}: unknown; valid forms: {forms}")
    kind, meaning, valid, _ = ACCELERATORS[name]
    try:
        value = kind(raw)
    except ValueError:
        value = None
    if value is None or not valid(value):
        raise ValueError(f"--accelerate {spec!r}: the value must be a {meaning}")
    return name, value


def _require(package: str, spec: str):
    try:
        return importlib.import_module(package)
    except ImportError:
        raise ValueError(f"--accelerate {spec!r} needs the {package} package: pip install 'slimdiff[peers]' "
                         f"(or pip install --no-deps {package})") from None


def apply_accelerator(pipe: Any, spec: str | None) -> Callable[[], None]:
    """Patch `pipe` as `spec` says; returns a function that undoes it. `spec` None: nothing, a no-op undo."""
    if spec is None:
        return lambda: None
    name, value = parse_accelerator(spec)
    package = ACCELERATORS[name][3]
    if name == "deepcache":

        return FeatureCache(pipe.unet, interval=value).enable().disable
    module = _require(package, spec)
    if name == "tome":
        module.apply_patch(pipe, ratio=value)
        return lambda: module.remove_patch(pipe)
    # deepcache-lib: the package wraps unet.down_blocks / mid_block / up_blocks by attribute
    from diffusers import UNet2DConditionModel

    if not isinstance(pipe.unet, UNet2DConditionModel) or pipe.unet.mid_block is None:
        what = "has no mid block" if isinstance(pipe.unet, UNet2DConditionModel) else \
            f"is a {type(pipe.unet).__name__}"
        raise ValueError(f"--accelerate {spec!r}: the DeepCache package needs a diffusers UNet2DConditionModel "
                         f"with a mid block, and this U-Net {what}; use deepcache:{value} (slimdiff's own)")
    helper = module.DeepCacheSDHelper(pipe=pipe)
    helper.set_params(cache_interval=value, cache_branch_id=0)
    helper.enable()
    return helper.disable
