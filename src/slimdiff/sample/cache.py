"""DeepCache-style feature caching (Ma et al. 2024; METHODS.md section 8) for every slimdiff U-Net.

    from slimdiff.sample.cache import FeatureCache
    with FeatureCache(pipe.unet, interval=3):      # full U-Net every 3rd call, the shallow branch between
        images = pipe(prompts, num_inference_steps=25).images

DeepCache observes that a U-Net's deep features change slowly from step to step: it runs the
whole U-Net on every `interval`-th step and, on the steps between, only a shallow branch (the
input conv, the last up-side layer that reads the conv_in skip, the output conv), reusing the deep
features computed last. With cache_branch_id = 0 (its documented setting) that branch is exactly
what this class recomputes (`shallow_layers=1`); larger values keep more of the last up layers.

Why slimdiff's own and not an adapter around DeepCache 0.1.1: the package wraps
`unet.down_blocks[i].attentions/resnets`, `unet.mid_block` and `unet.up_blocks` by attribute, so it
cannot run on U-Nets without a mid block (bk-small, bk-tiny: `mid_block` is None) nor on
`SlimUNet2DConditionModel` (units live in its own module tree), and it finds the step index with
`scheduler.timesteps.index(t)` from the timestep passed positionally. Here the cached units are found by
name through `slimdiff.unet.list_units`, which works on both U-Net classes and any pruned structure,
and the step count is the number of U-Net calls since the trajectory began (a new trajectory: the
timestep rises, or the latent shape changes), so no scheduler is consulted: DDIM, DPM-Solver++,
PNDM, Euler, a step-distilled student's trailing DDIM all work, CFG batched or not.

A cached unit returns, unchanged, the output it produced at the last full call; recomputed units
see the current inputs. So `interval=1` is the plain U-Net, and a cached call whose inputs equal
the last full call's gives the full call's output exactly (tests check both).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from slimdiff.unet import get_module, list_units


class FeatureCache:
    """Run `unet` in full every `interval`-th call of a trajectory and only its shallow branch between."""

    def __init__(self, unet: nn.Module, interval: int = 3, shallow_layers: int = 1):

        if not isinstance(interval, int) or interval < 1:
            raise ValueError(f"cache interval {interval!r} is invalid: an integer >= 1 (DeepCache: 3)")
        units = list_units(unet)  # forward order
        up_layers = list(dict.fromkeys(_layer_of(u.name) for u in units if u.block.startswith("up.")))
        if not isinstance(shallow_layers, int) or not 1 <= shallow_layers <= max(len(up_layers) - 1, 1):
            raise ValueError(f"shallow_layers={shallow_layers!r} is invalid: between 1 and "
                             f"{len(up_layers) - 1} (the up-side layers of this U-Net, minus one)")
        if len(up_layers) < 2:
            raise ValueError(f"the U-Net has {len(up_layers)} up-side layer(s): nothing deep to cache")
        keep = set(up_layers[-shallow_layers:])
        self.cached_units = [u.name for u in units if _layer_of(u.name) not in keep]
        self.recomputed_units = [u.name for u in units if _layer_of(u.name) in keep]
        self.unet, self.interval = unet, interval
        self._modules = {name: get_module(unet, name) for name in self.cached_units}
        self._outputs: dict[str, Any] = {}
        self._saved: dict[int, Any] = {}  # id(module) -> its own instance `forward`, if it had one
        self.calls = 0  # U-Net calls in this trajectory
        self.full_calls = 0  # of them, full ones (across trajectories)
        self._last: tuple | None = None  # (timestep, latent shape) of the last call
        self._replay = False
        self.enabled = False

    # ------------------------------------------------------------------------------ switching

    def enable(self) -> "FeatureCache":
        if self.enabled:
            return self
        for name, module in [("unet", self.unet), *self._modules.items()]:
            self._saved[id(module)] = module.__dict__.get("forward")
            module.forward = self._wrap_unet(module.forward) if name == "unet" else self._wrap_unit(name, module.forward)
        self.reset()
        self.enabled = True
        return self

    def disable(self) -> None:
        if not self.enabled:
            return
        for module in [self.unet, *self._modules.values()]:
            own = self._saved.pop(id(module))
            if own is None:
                del module.forward  # back to the class's forward
            else:
                module.forward = own
        self.reset()
        self.enabled = False

    def reset(self) -> None:
        """Forget the cache: the next call is a full one."""
        self._outputs.clear()
        self._last, self.calls, self._replay = None, 0, False

    def __enter__(self) -> "FeatureCache":
        return self.enable()

    def __exit__(self, *exc) -> None:
        self.disable()

    # ------------------------------------------------------------------------------ wrappers

    def _wrap_unet(self, forward):
        def wrapped(*args, **kwargs):
            sample = args[0] if args else kwargs["sample"]
            t = args[1] if len(args) > 1 else kwargs["timestep"]
            t = float(t.max()) if torch.is_tensor(t) else float(t)
            if self._last is None or t > self._last[0] or tuple(sample.shape) != self._last[1]:
                self._outputs.clear()
                self.calls = 0  # a new trajectory
            self._last = (t, tuple(sample.shape))
            self._replay = self.calls % self.interval != 0 and bool(self._outputs)
            self.full_calls += not self._replay
            self.calls += 1
            return forward(*args, **kwargs)

        return wrapped

    def _wrap_unit(self, name: str, forward):
        def wrapped(*args, **kwargs):
            if self._replay:
                return self._outputs[name]
            out = forward(*args, **kwargs)
            self._outputs[name] = out
            return out

        return wrapped


def _layer_of(unit_name: str) -> str:
    """'up.3.layer.2.attn' -> 'up.3.layer.2'; samplers and mid units are their own layer ('up.0.upsample')."""
    parts = unit_name.split(".")
    return ".".join(parts[:4]) if len(parts) > 3 and parts[2] == "layer" else unit_name
