"""SnapFusion robust training: stochastic depth over the student's units (METHODS.md section 5).

Each training forward, every removable ResNet or Transformer (cross-attention) unit of the
student is skipped independently with probability p: it computes what the network computes once
the unit is structurally removed (`slimdiff.unet.remove_units`), so the network learns to
tolerate the removal of any such unit, which is what makes SnapFusion's architecture-evolving
`remove` actions cheap to evaluate afterwards. The paper gives no value for p; it is the
`--stochastic-depth` flag.

What a skipped unit returns:
- a unit on the main path (down side, mid, up-side attention): its input, unchanged;
- an up-side ResNet, whose input is `cat([h, skip], dim=1)` (B, C_main + C_skip, H, W): the
  main-path channels `h = x[:, :C_main]`, exactly what flows on when the unit is removed (the
  skip is then simply not consumed). C_main is the output width of the unit before it in
  forward order.
A unit qualifies when that value has the shape of the unit's output (so the rest of the network
runs unchanged): ResNets that change the main path's width never do, as their removal is
refused.

How: the unit's `forward` is replaced (on the instance, removed by `remove()`) by a wrapper that,
when the unit is in the step's skipped set, returns that value repacked in the structure the unit
returns (a tensor, a 1-tuple, or a `...Output(sample=...)`), without computing anything. Hooks
registered on the unit still run, since `__call__` is untouched. Which units qualify is decided
on a dry forward pass (`probe`).

The skipped set is drawn from the step's seeded generator, identical on every process, so DDP
ranks skip the same units (DDP then needs `find_unused_parameters=True`, set by the trainer).
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import nn

from slimdiff.unet import get_module, list_units


def candidate_units(model: nn.Module) -> list[str]:
    """Names of the ResNet and Transformer units of a slim or diffusers U-Net, in forward order."""
    return [u.name for u in list_units(model) if u.kind in ("resnet", "attn")]


def main_path_channels(model: nn.Module) -> dict[str, int]:
    """Up-side ResNet name -> C_main, the main-path channels of its concatenated input (the output
    width of the unit before it in forward order; the rest, C_in - C_main, is the skip's)."""
    units = list_units(model)
    return {u.name: prev.out_channels for prev, u in zip(units, units[1:]) if u.skip}


def _first_tensor_input(args: tuple, kwargs: dict) -> torch.Tensor | None:
    if args and torch.is_tensor(args[0]):
        return args[0]
    for key in ("hidden_states", "input_tensor", "sample", "x"):
        if torch.is_tensor(kwargs.get(key)):
            return kwargs[key]
    return None


def _packer(output: Any) -> Callable[[torch.Tensor], Any] | None:
    """A function x -> an output shaped like `output` with x as its feature tensor (None: cannot)."""
    if torch.is_tensor(output):
        return lambda x: x
    if isinstance(output, tuple) and len(output) == 1 and torch.is_tensor(output[0]):
        return lambda x: (x,)
    if hasattr(output, "sample") and torch.is_tensor(output.sample) and len(output) == 1:
        cls = type(output)
        return lambda x: cls(sample=x)
    return None


class StochasticDepth:
    """Skips removable ResNet / Transformer units of `model` with probability `p` per forward.

        sd = StochasticDepth(student, p=0.1)
        sd.probe(lambda: student(x, t, c))        # decide which units qualify
        sd.set_skipped(sd.sample(generator))      # before each training forward
        sd.remove()                               # restore the plain forward
    """

    def __init__(self, model: nn.Module, p: float, units: list[str] | None = None):
        if not 0.0 <= p < 1.0:
            raise ValueError(f"stochastic depth probability {p} is not in [0, 1)")
        self.p = p
        self.model = model
        self.candidates = list(units) if units is not None else candidate_units(model)
        self.main_channels = main_path_channels(model)  # up-side ResNets: C_main of cat([h, skip])
        self.units: list[str] = []  # qualifying units, decided by probe()
        self._packers: dict[str, Callable] = {}
        self.skipped: frozenset[str] = frozenset()

    @torch.no_grad()
    def probe(self, run_forward: Callable[[], Any]) -> list[str]:
        """Run one forward pass and keep the units whose skipped value (module docstring) has the
        shape of their output: their input's, or for up-side ResNets its first C_main channels'."""
        seen: dict[str, tuple[torch.Size | None, Any]] = {}
        handles = []
        for name in self.candidates:
            module = get_module(self.model, name)

            def hook(mod, args, kwargs, output, name=name):
                x = _first_tensor_input(args, kwargs)
                seen[name] = (x.shape if x is not None else None, output)

            handles.append(module.register_forward_hook(hook, with_kwargs=True))
        try:
            run_forward()
        finally:
            for h in handles:
                h.remove()
        self.units = []
        for name in self.candidates:
            in_shape, output = seen.get(name, (None, None))
            pack = _packer(output) if output is not None else None
            if in_shape is not None and name in self.main_channels:
                in_shape = (in_shape[0], self.main_channels[name], *in_shape[2:])
            if pack is not None and in_shape is not None and _output_tensor_shape(output) == in_shape:
                self.units.append(name)
                self._packers[name] = pack
        for name in self.units:
            self._install(name)
        return self.units

    def _install(self, name: str) -> None:
        module = get_module(self.model, name)
        original = module.forward  # the bound class method
        pack = self._packers[name]
        c_main = self.main_channels.get(name)  # None: a main-path unit

        def forward(*args, **kwargs):
            if name in self.skipped:
                x = _first_tensor_input(args, kwargs)  # (B, C_in, H, W)
                # skipped = removed: main-path units pass x on; up-side ResNets pass h of cat([h, skip])
                return pack(x if c_main is None else x[:, :c_main])
            return original(*args, **kwargs)

        module.forward = forward

    def sample(self, generator: torch.Generator) -> frozenset[str]:
        """Draw this step's skipped set: each qualifying unit independently with probability p."""
        draws = torch.rand(len(self.units), generator=generator)  # (n_units,) in [0, 1)
        return frozenset(u for u, r in zip(self.units, draws.tolist()) if r < self.p)

    def set_skipped(self, names: frozenset[str]) -> None:
        self.skipped = frozenset(names)

    def remove(self) -> None:
        """Restore every unit's class forward."""
        for name in self.units:
            module = get_module(self.model, name)
            if "forward" in module.__dict__:
                del module.forward
        self.skipped = frozenset()


def _output_tensor_shape(output: Any) -> torch.Size | None:
    if torch.is_tensor(output):
        return output.shape
    if isinstance(output, tuple) and output and torch.is_tensor(output[0]):
        return output[0].shape
    if hasattr(output, "sample") and torch.is_tensor(output.sample):
        return output.sample.shape
    return None
